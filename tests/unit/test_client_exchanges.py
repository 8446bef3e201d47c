# mypy: disable-error-code="comparison-overlap"
# (these tests assert a state, fire an event, then assert the next one; mypy would narrow)
"""Unit tests for proxy.http1.client_exchanges: which exchange is where, whose a refusal is, what
the read timer means and what the client's EOF means, with no sockets."""

from __future__ import annotations

import math

from proxy import flow
from proxy.http1.client_exchanges import AfterEof, ExchangeQueue, ReadWait, Refusal
from proxy.http1.client_state import AfterResponse, ClientMachine, ClientState
from proxy.http1.http_policy import ForwardRequest, Framing

S = ClientState


def queue() -> ExchangeQueue:
    return ExchangeQueue(ClientMachine(0, math.inf))


def read_request(q: ExchangeQueue, framing: Framing = Framing.NONE,
                 complete: bool = True, upgrade: bool = False) -> None:
    """llhttp's events for one request: begin, head, and (``complete``) its end."""
    exchange = q.begin()
    q.head_complete()
    exchange.request = ForwardRequest(b"POST", b"", framing, False, True, False, False,
                                      upgrade=upgrade)
    if complete:
        q.message_complete()


def test_a_request_is_answered_then_the_connection_waits_for_the_next() -> None:
    q = queue()
    assert q.read_wait() == ReadWait.REQUEST
    exchange = q.begin()
    assert q.read_wait() == ReadWait.HEAD
    q.head_complete()
    exchange.request = ForwardRequest(b"POST", b"", Framing.LENGTH, False, True, False, False)
    assert q.read_wait() == ReadWait.BODY and q.take_ready() is exchange
    assert q.take_ready() is None, "forwarded once"
    q.message_complete()
    assert exchange.request_complete and q.read_wait() == ReadWait.NOTHING, "the app's turn"
    exchange.finished = True
    assert q.response_done() is AfterResponse.AWAIT_REQUEST
    assert q.machine.state is S.IDLE and q.read_wait() == ReadWait.REQUEST


def test_pipelined_requests_wait_and_stop_reading() -> None:
    q = queue()
    read_request(q)
    first = q.take_ready()
    read_request(q)
    assert q.take_ready() is None, "the second waits for the first's answer"
    assert len(q.queue) == 1 and q.machine.paused_by == flow.PIPELINE
    assert q.read_wait() == ReadWait.NOTHING
    assert first is not None
    first.finished = True
    assert q.response_done() is AfterResponse.DISPATCH_NEXT
    assert q.active is not None and q.machine.paused_by == 0


def test_a_refusal_belongs_to_the_request_being_parsed_even_after_it_went_to_the_app() -> None:
    """A trailer field refused at the end of a body whose head was forwarded: the refusal
    is the active request's own, answered now (its app connection must be reset)."""
    q = queue()
    read_request(q, Framing.CHUNKED, complete=False)
    active = q.take_ready()
    exchange, when, created = q.refuse()
    assert exchange is active and when is Refusal.ANSWER_NOW and not created
    assert q.parsing is None and q.machine.input_closed
    assert q.read_wait() == ReadWait.NOTHING


def test_a_refusal_behind_a_request_being_answered_waits_its_turn() -> None:
    q = queue()
    read_request(q)
    active = q.take_ready()
    exchange, when, created = q.refuse()  # garbage pipelined behind it: no request began
    assert created and when is Refusal.QUEUED and exchange is not active
    assert list(q.queue) == [exchange] and q.unfinished() == [active, exchange]


def test_a_refusal_in_the_read_that_completed_a_head_forwards_nothing() -> None:
    q = queue()
    read_request(q, Framing.LENGTH, complete=False)
    exchange, when, _ = q.refuse()  # before the read was done: not forwarded yet
    assert when is Refusal.ANSWER_NOW and q.take_ready() is None and q.active is exchange


def test_what_the_clients_eof_means() -> None:
    q = queue()
    assert q.client_half_closed() == (AfterEof.CLOSE, None)
    q = queue()
    read_request(q)
    q.take_ready()
    assert q.client_half_closed() == (AfterEof.ANSWER_OUTSTANDING, None)
    q = queue()
    read_request(q, Framing.LENGTH, complete=False)
    assert q.client_half_closed()[0] is AfterEof.REFUSE_BODY
    q = queue()
    q.begin()
    after, dropped = q.client_half_closed()
    assert after is AfterEof.CLOSE and dropped is not None, "half a head: dropped"


def test_after_the_last_response_the_client_eof_closes_and_nothing_is_parsed() -> None:
    """An early answer to an upload closes the connection: the upload is no longer the
    request being parsed, so the client's EOF after it is not answered again."""
    q = queue()
    read_request(q, Framing.LENGTH, complete=False)
    active = q.take_ready()
    assert active is not None
    q.machine.close_reason = "error"  # the early answer's close decision
    active.finished = True
    assert q.response_done() is AfterResponse.CLOSE
    assert q.take_dropped() == []
    assert q.parsing is None and q.read_wait() == ReadWait.LINGER
    assert q.client_half_closed() == (AfterEof.CLOSE, None)


def test_bytes_after_a_forwarded_upgrade_are_held_up_to_a_bound() -> None:
    q = queue()
    read_request(q, upgrade=True)
    assert q.upgrade_is_last()
    assert not q.hold(b"x" * 1000)
    assert q.hold(b"y" * 64 * 1024), "past the bound: reading pauses"
    assert q.take_held() == b"x" * 1000 + b"y" * 64 * 1024 and q.held is None


def test_a_fresh_connection_waits_for_its_first_request_only_a_grace_once_drained() -> None:
    q = queue()
    assert q.read_wait() == ReadWait.REQUEST
    q.machine.drain()
    assert q.read_wait() == ReadWait.GRACE
