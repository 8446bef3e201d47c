"""Unit tests for proxy.transitions: the one check every per-request machine's change
goes through, and the error that names the machine."""

from __future__ import annotations

import enum

import pytest

from proxy.http1.client_state import ClientMachine
from proxy.http1.upstream_state import UpstreamMachine
from proxy.http2.session import H2Session, H2State
from proxy.transitions import IllegalTransition, bit_masks, check_move


class Light(enum.IntEnum):
    RED = 0
    GREEN = 1
    AMBER = 2


MASKS = bit_masks({Light.RED: frozenset({Light.GREEN}), Light.GREEN: frozenset({Light.AMBER}),
                   Light.AMBER: frozenset({Light.RED})})


def test_an_allowed_move_passes_and_a_forbidden_one_names_machine_and_states() -> None:
    for state, target in [(Light.RED, Light.GREEN), (Light.GREEN, Light.AMBER),
                          (Light.AMBER, Light.RED)]:
        check_move(MASKS, "traffic light", state, target)
    with pytest.raises(IllegalTransition, match=r"^traffic light: RED -> AMBER$"):
        check_move(MASKS, "traffic light", Light.RED, Light.AMBER)
    with pytest.raises(IllegalTransition, match=r"^traffic light: GREEN -> GREEN$"):
        check_move(MASKS, "traffic light", Light.GREEN, Light.GREEN)


def test_each_machine_names_itself_in_a_forbidden_move() -> None:
    with pytest.raises(IllegalTransition, match=r"^client connection: FRESH -> TUNNELLED$"):
        ClientMachine(budget=0, expires_at=0.0).switched()
    with pytest.raises(IllegalTransition, match=r"^app connection: IDLE -> SWITCHED$"):
        UpstreamMachine().switched()
    session = H2Session(0, max_header_block=65536, now=0.0)
    session.drain_idle()
    with pytest.raises(IllegalTransition, match=r"^HTTP/2 connection: CLOSED -> OPEN$"):
        session._move(H2State.OPEN)
