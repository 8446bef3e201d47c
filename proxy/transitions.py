"""What the state machines share: the error for a forbidden change, their tables as bit
masks, and the one check of a change against them.  Sans-IO.

Each machine (``lifecycle``, ``client_state``, ``upstream_state``, ``http2.session``) writes
its table as ``{state: frozenset(allowed next states)}``, the form a reader checks
against the docs.  The per-request machines check it as one bit mask per state, indexed
by the state (an IntEnum), which costs a tuple index and a shift instead of two hashes,
and check it here, in ``check_move``, called first by each machine's ``_move``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

State = TypeVar("State", bound=enum.IntEnum)


class IllegalTransition(Exception):  # not RuntimeError: mypyc cannot subclass that
    """A state change the table does not allow: a bug, never a runtime condition."""


def bit_masks(table: Mapping[State, frozenset[State]]) -> tuple[int, ...]:
    """For each state, in value order, the bits of the states it may move to."""
    states = sorted(table)
    assert [int(state) for state in states] == list(range(len(states))), "values 0..n-1"
    return tuple(sum(1 << target for target in table[state]) for state in states)


def check_move(masks: tuple[int, ...], machine: str, state: State, target: State) -> None:
    """Raise ``IllegalTransition``, naming ``machine``, unless ``masks`` (``bit_masks`` of
    its table) let ``state`` move to ``target``.

    A function, not a base class method: the machines keep their own classes and slots,
    and compiled it is a direct C call.  (A native base class with the masks in a class
    variable compiles too, but reads them as a Python attribute on every move.)"""
    # As ints, not enum members: compiled, the index and the shift are then machine-integer
    # operations instead of generic number calls, under half the instructions per move.
    current: int = state
    wanted: int = target
    if not (masks[current] >> wanted) & 1:
        raise IllegalTransition(f"{machine}: {state.name} -> {target.name}")
