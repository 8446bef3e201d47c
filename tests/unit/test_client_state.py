# mypy: disable-error-code="comparison-overlap"
# (these tests assert a state, fire an event, then assert the next state; mypy would
# narrow the first assertion and call the second one impossible)
"""Unit tests for proxy.http1.client_state: the transition table, the events and the keep-alive
decision, with no sockets (the adapter is tested through fake transports in
test_client_protocol.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from proxy import flow
from proxy.http1.client_state import (
    TRANSITIONS,
    AfterResponse,
    ClientMachine,
    ClientState,
    OnDrain,
)
from proxy.transitions import IllegalTransition

S = ClientState


def machine(state: ClientState = S.FRESH, budget: int = 0,
            expires_at: float = math.inf) -> ClientMachine:
    m = ClientMachine(budget, expires_at)
    m.state = state
    return m


def test_every_state_has_a_row_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(ClientState)
    assert TRANSITIONS[S.CLOSED] == frozenset()
    assert TRANSITIONS[S.HTTP2] == frozenset(), "handed over to http2.relay for good"
    assert all(S.CLOSED in targets for state, targets in TRANSITIONS.items()
               if state not in (S.CLOSED, S.HTTP2)), "a connection can be lost in any state"


ILLEGAL: list[tuple[ClientState, Callable[[ClientMachine], object]]] = [
    (S.FRESH, lambda m: m.request_queued()),
    (S.IDLE, lambda m: m.upgrade_forwarded()),
    (S.FRESH, lambda m: m.switched()),
    (S.PIPELINE_PAUSED, lambda m: m.upgrade_forwarded()),
    (S.TUNNELLED, lambda m: m.request_queued()),
    (S.CLOSING, lambda m: m.response_done(queued=0, reading=False)),
]


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_an_event_the_table_does_not_allow_raises(
        state: ClientState, event: Callable[[ClientMachine], object]) -> None:
    m = machine(state)
    with pytest.raises(IllegalTransition):
        event(m)
    assert m.state is state


@pytest.mark.parametrize("state", [S.FRESH, S.IDLE])
def test_a_request_makes_a_waiting_connection_active(state: ClientState) -> None:
    m = machine(state)
    m.request_begins()
    assert m.state is S.ACTIVE and m.busy


@pytest.mark.parametrize("state", [S.ACTIVE, S.PIPELINE_PAUSED])
def test_a_pipelined_request_leaves_a_busy_state_as_it_is(state: ClientState) -> None:
    m = machine(state)
    m.request_begins()
    assert m.state is state


@pytest.mark.parametrize(("queued", "reading", "state", "after", "next_state"), [
    (0, False, S.ACTIVE, AfterResponse.AWAIT_REQUEST, S.IDLE),
    (0, True, S.ACTIVE, AfterResponse.KEEP_READING, S.ACTIVE),
    (1, False, S.PIPELINE_PAUSED, AfterResponse.DISPATCH_NEXT, S.ACTIVE),
    (2, False, S.PIPELINE_PAUSED, AfterResponse.DISPATCH_NEXT, S.PIPELINE_PAUSED),
    (0, False, S.UPGRADE_PENDING, AfterResponse.PARSE_HELD, S.IDLE),
])
def test_what_follows_a_response(queued: int, reading: bool, state: ClientState,
                                 after: AfterResponse, next_state: ClientState) -> None:
    m = machine(state)
    assert m.response_done(queued=queued, reading=reading) is after
    assert m.state is next_state and m.served == 1


def test_a_decided_close_ends_the_connection_after_its_response() -> None:
    m = machine(S.ACTIVE)
    assert m.close_decision(client_keep_alive=False, close_delimited=False,
                            request_complete=True, pipelined=False, draining=False,
                            now=0.0) == "peer"
    assert m.response_done(queued=0, reading=False) is AfterResponse.CLOSE
    assert m.state is S.CLOSING
    assert m.lost() == "peer" and m.state is S.CLOSED


@pytest.mark.parametrize(("input_closed", "drained", "reason"), [
    (True, False, "peer"), (False, True, "drain"), (True, True, "peer")])
def test_a_response_whose_head_went_out_earlier_still_closes(
        input_closed: bool, drained: bool, reason: str) -> None:
    """The head was decided before the client half-closed or the window ended."""
    m = machine(S.ACTIVE)
    m.input_closed = input_closed
    if drained:
        assert m.drain() is OnDrain.AFTER_RESPONSE
    assert m.response_done(queued=0, reading=False) is AfterResponse.CLOSE
    assert m.close_reason == reason


def test_in_the_window_a_response_begun_before_the_trigger_keeps_the_connection() -> None:
    """It said nothing of closing, so its client may reuse the connection at once: the
    next response says close (close_decision), and the window's end closes it if idle."""
    m = machine(S.ACTIVE)
    assert m.response_done(queued=0, reading=False) is AfterResponse.AWAIT_REQUEST
    assert m.close_decision(client_keep_alive=True, close_delimited=False, request_complete=True,
                            pipelined=False, draining=True, now=0.0) == "drain"
    idle = machine(S.IDLE)
    assert idle.drain() is OnDrain.CLOSE_NOW
    assert idle.state is S.CLOSING and idle.close_reason == "drain"


def test_the_drain_does_not_close_before_pipelined_or_arriving_requests() -> None:
    m = machine(S.PIPELINE_PAUSED)
    assert m.drain() is OnDrain.AFTER_RESPONSE
    assert m.response_done(queued=1, reading=False) is AfterResponse.DISPATCH_NEXT
    assert m.response_done(queued=0, reading=True) is AfterResponse.KEEP_READING


def test_close_keeps_the_first_reason_and_happens_once() -> None:
    m = machine(S.IDLE)
    assert m.close("drain") and m.state is S.CLOSING
    assert not m.close("idle_timeout")
    assert m.close_reason == "drain"


@pytest.mark.parametrize(("state", "step", "after"), [
    (S.IDLE, OnDrain.CLOSE_NOW, S.CLOSING),
    (S.FRESH, OnDrain.GRACE, S.FRESH),
    (S.ACTIVE, OnDrain.AFTER_RESPONSE, S.ACTIVE),
    (S.PIPELINE_PAUSED, OnDrain.AFTER_RESPONSE, S.PIPELINE_PAUSED),
    (S.UPGRADE_PENDING, OnDrain.AFTER_RESPONSE, S.UPGRADE_PENDING),
    (S.TUNNELLED, OnDrain.AFTER_RESPONSE, S.TUNNELLED),
    (S.CLOSING, OnDrain.AFTER_RESPONSE, S.CLOSING),
])
def test_what_the_drain_does_to_each_state(state: ClientState, step: OnDrain,
                                           after: ClientState) -> None:
    m = machine(state)
    assert m.drain() is step
    assert m.state is after


def test_a_silent_connection_the_drain_reached_closes_for_the_drain() -> None:
    """A preconnect that never asks is closed by the drain, not counted as idle."""
    m = machine(S.FRESH)
    assert m.quiet_close_reason == "idle_timeout"
    m.drain()
    assert m.quiet_close_reason == "drain"
    assert m.close(m.quiet_close_reason) and m.close_reason == "drain"


def test_an_upgrade_goes_pending_then_tunnelled() -> None:
    m = machine(S.ACTIVE)
    m.upgrade_forwarded()
    assert m.state is S.UPGRADE_PENDING and m.busy
    m.switched()
    assert m.state is S.TUNNELLED and not m.busy


_KEEP = dict(client_keep_alive=True, close_delimited=False, request_complete=True,
             pipelined=False, draining=False, now=0.0)


@pytest.mark.parametrize(("change", "input_closed", "served", "expected"), [
    ({}, False, 0, None),
    ({"client_keep_alive": False}, False, 0, "peer"),
    ({"close_delimited": True}, False, 0, "peer"),
    ({"request_complete": False}, False, 0, "error"),  # an early answer
    ({"pipelined": True, "draining": True}, False, 0, None),
    ({}, True, 0, "peer"),
    ({"draining": True}, False, 0, "drain"),
    ({}, False, 9, "max_requests"),  # this response is the 10th of a budget of 10
    ({"now": 100.0}, False, 0, "max_age"),
])
def test_close_decision_decides_every_response(change: dict[str, object], input_closed: bool,
                                               served: int, expected: str | None) -> None:
    m = machine(S.ACTIVE, budget=10, expires_at=100.0)
    m.input_closed, m.served = input_closed, served
    assert m.close_decision(**{**_KEEP, **change}) == expected  # type: ignore[arg-type]
    assert m.close_reason == expected


# -- read pauses and their owners --------------------------------------------------------------
def test_the_exchanges_pause_reasons_end_with_it() -> None:
    """The app's socket was full when its early answer completed: the exchange's app
    connection will never say it drained (it is no longer ours), so the reason goes now."""
    m = machine(S.ACTIVE)
    m.pause(flow.APP_FULL, True)
    m.pause(flow.CONNECTING, True)
    assert m.paused_by != 0
    assert m.response_done(queued=0, reading=False) is AfterResponse.AWAIT_REQUEST
    assert m.state is S.IDLE and m.paused_by == 0


def test_the_queue_owns_the_pipeline_pause() -> None:
    m = machine(S.ACTIVE)
    m.request_queued()
    m.request_queued()
    m.pause(flow.APP_FULL, True)
    assert m.paused_by == flow.PIPELINE | flow.APP_FULL
    assert m.response_done(queued=2, reading=False) \
        is AfterResponse.DISPATCH_NEXT
    assert m.paused_by == flow.PIPELINE, "one request still waits; the app connection went"
    assert m.response_done(queued=1, reading=False) \
        is AfterResponse.DISPATCH_NEXT
    assert m.state is S.ACTIVE and m.paused_by == 0


def test_a_closing_connection_reads_and_discards() -> None:
    m = machine(S.ACTIVE)
    m.pause(flow.HELD, True)
    assert m.close("error")
    assert m.paused_by == 0
    m.pause(flow.APP_FULL, True)
    assert m.paused_by == 0, "input is closed: nothing to pause for"


@pytest.mark.parametrize("state", list(ClientState))
def test_only_an_idle_connection_is_reclaimed_for_room(state: ClientState) -> None:
    """At --max-connections: never a fresh one (its client would not retry a request lost
    on a new connection), never a busy one."""
    m = machine(state)
    reclaimed = m.reclaim()
    assert reclaimed == (state is S.IDLE)
    if reclaimed:
        assert m.state is S.CLOSING and m.close_reason == "max_connections"
