# mypy: disable-error-code="comparison-overlap"
# (these tests assert a state, fire an event, then assert the next state; mypy would
# narrow the first assertion and call the second one impossible)
"""Unit tests for proxy.http1.upstream_state: when an app connection may be pooled, and when a
failed exchange may be retried."""

from __future__ import annotations

import pytest

from proxy.app_connect import Failure
from proxy.http1.upstream_state import (
    TRANSITIONS,
    UpstreamMachine,
    UpstreamState,
    may_retry,
)
from proxy.transitions import IllegalTransition

U = UpstreamState


def test_every_state_has_a_row_and_closed_and_switched_are_final() -> None:
    assert set(TRANSITIONS) == set(UpstreamState)
    assert TRANSITIONS[U.CLOSED] == TRANSITIONS[U.SWITCHED] == frozenset()
    assert all(U.CLOSED in targets for state, targets in TRANSITIONS.items()
               if state not in (U.CLOSED, U.SWITCHED))


def test_a_whole_exchange_returns_the_connection_to_the_pool() -> None:
    m = UpstreamMachine()
    m.bind()
    assert m.state is U.SENDING
    assert m.request_sent() is True and m.state is U.AWAITING
    m.response_begins()
    assert m.state is U.RECEIVING
    assert m.response_done(keep_alive=True) is True
    assert m.state is U.IDLE and m.reused


def test_an_early_answer_never_returns_the_connection_to_the_pool() -> None:
    """The app answered before it had the whole body: the connection still owes it."""
    m = UpstreamMachine()
    m.bind()
    m.response_begins()
    assert m.state is U.EARLY
    assert m.response_done(keep_alive=True) is False
    assert m.state is U.CLOSED and not m.reused


def test_an_early_answer_whose_request_then_went_out_whole_is_clean() -> None:
    m = UpstreamMachine()
    m.bind()
    m.response_begins()
    assert m.request_sent() is False, "the response is already arriving"
    assert m.state is U.RECEIVING
    assert m.response_done(keep_alive=True) is True


def test_the_app_refusing_keep_alive_closes_the_connection() -> None:
    m = UpstreamMachine()
    m.bind()
    m.request_sent()
    m.response_begins()
    assert m.response_done(keep_alive=False) is False and m.state is U.CLOSED


def test_a_switch_takes_the_connection_out_of_http() -> None:
    m = UpstreamMachine()
    m.bind()
    m.request_sent()
    m.switched()
    assert m.state is U.SWITCHED
    m.closed()  # the tunnel owns the socket: nothing to close here
    assert m.state is U.SWITCHED


@pytest.mark.parametrize(("state", "event"), [
    (U.SENDING, UpstreamMachine.bind), (U.RECEIVING, UpstreamMachine.response_begins),
    (U.SENDING, UpstreamMachine.switched), (U.IDLE, UpstreamMachine.switched),
])
def test_an_event_the_table_does_not_allow_raises(state: UpstreamState, event: object) -> None:
    m = UpstreamMachine()
    m.state = state
    with pytest.raises(IllegalTransition):
        event(m)  # type: ignore[operator]


def test_closing_twice_is_harmless() -> None:
    m = UpstreamMachine()
    m.closed()
    m.closed()
    assert m.state is U.CLOSED


@pytest.mark.parametrize("failure", [Failure.CLOSED, Failure.RESET])
def test_the_stale_keep_alive_race_is_retried(failure: Failure) -> None:
    assert may_retry(failure, reused=True, response_bytes=False, replayable=True)


@pytest.mark.parametrize(("failure", "reused", "response_bytes", "replayable"), [
    (Failure.TIMEOUT, True, False, True),  # the app may be working on it
    (Failure.STALLED, True, False, True),
    (Failure.PROTOCOL, True, False, True),
    (Failure.REFUSED, False, False, True),
    (Failure.CONNECT_TIMEOUT, False, False, True),
    (Failure.CLOSED, False, False, True),  # a fresh connection: no race, a real failure
    (Failure.RESET, True, True, True),  # part of a response arrived
    (Failure.CLOSED, True, False, False),  # not idempotent, too big, or retried already
])
def test_everything_else_is_not_retried(failure: Failure, reused: bool, response_bytes: bool,
                                        replayable: bool) -> None:
    assert not may_retry(failure, reused=reused, response_bytes=response_bytes,
                         replayable=replayable)


@pytest.mark.parametrize(("failure", "label", "status"), [
    (Failure.REFUSED, "connect", 502), (Failure.CONNECT_TIMEOUT, "timeout", 504),
    (Failure.CLOSED, "reset", 502), (Failure.RESET, "reset", 502),
    (Failure.TIMEOUT, "timeout", 504), (Failure.STALLED, "timeout", 504),
    (Failure.PROTOCOL, "protocol", 502), (Failure.TOO_LARGE, "too_large", 502),
])
def test_each_failure_has_its_metric_label_and_status(failure: Failure, label: str,
                                                      status: int) -> None:
    assert (failure.label, failure.status) == (label, status)
