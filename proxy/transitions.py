"""What the state machines share: the error for a forbidden change, and their tables as
bit masks.  Sans-IO.

Each machine (``lifecycle``, ``client_state``, ``upstream_state``) writes its table as
``{state: frozenset(allowed next states)}``, the form a reader checks against the
docs.  The per-request machines check it as one bit mask per state, indexed by the
state (an IntEnum), which costs a tuple index and a shift instead of two hashes.
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
