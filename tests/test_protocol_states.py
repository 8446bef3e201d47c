# mypy: disable-error-code="comparison-overlap"
# (these tests assert a state, fire an event, then assert the next state; mypy would
# narrow the first assertion and call the second one impossible)
"""The connection protocols driven through fake transports, state by state.

As uvicorn's protocol tests do: the real ``ClientConnection`` and ``UpstreamConnection``
run on a real event loop, but their transports are ``FakeTransport`` objects
(``support.fake_transports``) that record what the protocol did, so every state and
transition is reached in microseconds and checked directly.
``test_every_transition_is_exercised`` proves that the scenarios below together walk
every edge of both transition tables.  The same behaviour over real sockets is in the
other integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from proxy.drain.tracker import Kind
from proxy.http1 import client_state, upstream_state
from proxy.http1.client_state import ClientState
from proxy.http1.upstream_state import UpstreamState
from proxy.http2.frames import PREFACE

from conftest import Run
from helpers import eventually
from support.fake_transports import Edge, Harness

C, U = ClientState, UpstreamState


GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"

Scenario = Callable[[set[Edge]], Coroutine[Any, Any, None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(function: Scenario) -> Scenario:
    SCENARIOS[function.__name__] = function
    return function


@scenario
async def keep_alive_then_close(edges: set[Edge]) -> None:
    h = Harness(edges)
    assert h.state is C.FRESH
    h.send(GET % b"a")
    assert h.state is C.ACTIVE and h.app.machine.state is U.AWAITING
    assert h.app_side.take().startswith(b"GET /a HTTP/1.1\r\n")
    h.app_sends(OK)
    assert h.state is C.IDLE and h.app.machine.state is U.IDLE
    assert h.client_side.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    h.send(b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    h.app_sends(OK)
    assert h.state is C.CLOSING and h.client_side.eof_written
    assert h.client_side.take().endswith(b"Connection: close\r\n\r\nok")
    h.step(lambda: h.client_side.close() if not h.client.eof_received() else None)
    await h.turn()
    assert h.state is C.CLOSED


@scenario
async def http2_preface_hands_the_connection_over(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(PREFACE[:10])
    assert h.state is C.FRESH, "a first read shorter than the preface waits for the rest"
    h.send(PREFACE[10:] + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # and SETTINGS
    assert h.state is C.HTTP2
    relays = list(h.ctx.h2_connections)
    assert list(h.ctx.connections.connections(Kind.HTTP)) == relays and len(relays) == 1
    assert h.ctx.metrics.registry.get_sample_value(
        "drain_proxy_connections_closed_total", {"reason": "peer"}) == 0, "not a close"
    await eventually(lambda: not h.ctx.h2_connections)  # nothing listens on the app port
    assert h.client_side.take().startswith(b"\x00\x00\x00\x04"), "SETTINGS, then GOAWAY"


@scenario
async def fresh_connection_closed_by_its_client(edges: set[Edge]) -> None:
    h = Harness(edges)
    assert h.client.eof_received() is False  # nothing to answer: asyncio closes it
    h.step(h.client_side.close)
    await h.turn()
    assert h.state is C.CLOSED and h.ctx.metrics.registry.get_sample_value(
        "drain_proxy_connections_closed_total", {"reason": "peer"}) == 1


@scenario
async def fresh_connection_at_the_drain_deadline(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.step(lambda: h.client.drain())
    assert h.state is C.FRESH, "a fresh connection is served when its request comes"
    h.step(lambda: h.client.cut())
    assert h.state is C.CLOSING and not h.client_side.aborted  # a clean close
    await h.turn()
    assert h.state is C.CLOSED


@scenario
async def idle_connection_closed_by_the_drain(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(GET % b"a")
    h.app_sends(OK)
    h.step(h.client.drain)
    assert h.state is C.CLOSING and h.client_side.closed
    await h.turn()
    assert h.state is C.CLOSED


@scenario
async def idle_connection_closed_by_its_client(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(GET % b"a")
    h.app_sends(OK)
    h.step(lambda: h.client.connection_lost(None))
    assert h.state is C.CLOSED


@scenario
async def pipelined_requests_pause_reading(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(GET % b"1")
    assert h.state is C.ACTIVE
    h.send(GET % b"2")  # before the first answer
    assert h.state is C.PIPELINE_PAUSED and not h.client_side.reading
    assert h.app_side.take().count(b"GET ") == 1, "one request at a time"
    # The first app connection returns to the pool only after its read is parsed (stray
    # bytes in it would poison it); the next request takes another idle one.
    first = h.app
    h.pool_app()
    h.app_sends(OK, app=first)
    assert h.state is C.ACTIVE and h.client_side.reading
    assert h.app_side.take().startswith(b"GET /2 ")
    h.app_sends(OK)
    assert h.state is C.IDLE
    assert h.client_side.take().count(b"HTTP/1.1 200 OK") == 2


@scenario
async def pipelined_behind_a_closing_response(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + GET % b"2")
    assert h.state is C.PIPELINE_PAUSED
    h.app_sends(OK)
    assert h.state is C.CLOSING and h.app_side.take().count(b"GET ") == 1


@scenario
async def pipelined_connection_lost(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(GET % b"1" + GET % b"2")
    h.step(lambda: h.client.connection_lost(ConnectionResetError()))
    await h.turn()
    assert h.state is C.CLOSED and h.app.machine.state is U.CLOSED and h.app_side.aborted


@scenario
async def upgrade_switched_to_a_tunnel(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(UPGRADE[:20])
    assert h.state is C.ACTIVE
    h.send(UPGRADE[20:] + b"early tunnel bytes")
    assert h.state is C.UPGRADE_PENDING
    assert h.app_side.take() .endswith(b"\r\n\r\n"), "held, not forwarded, until the answer"
    h.app_sends(SWITCH + b"from the app")
    assert h.state is C.TUNNELLED and h.app.machine.state is U.SWITCHED
    assert h.app_side.take() == b"early tunnel bytes"
    assert h.client_side.take().endswith(b"\r\n\r\nfrom the app")
    assert h.ctx.connections.tunnels == 1
    h.client_side.protocol.data_received(b"relayed")  # the client end of the tunnel now
    assert h.app_side.take() == b"relayed"
    h.step(h.client_side.close)
    await h.turn()
    h.step(h.app_side.close)
    await h.turn()
    assert h.state is C.CLOSED and h.ctx.connections.tunnels == 0


@scenario
async def upgrade_refused_goes_on_as_http(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(UPGRADE)
    h.app_sends(OK)
    assert h.state is C.IDLE
    h.pool_app()
    h.send(GET % b"next")
    h.app_sends(OK)
    assert h.state is C.IDLE


@scenario
async def upgrade_refused_with_a_request_held_behind_it(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(UPGRADE + GET % b"next")
    assert h.state is C.UPGRADE_PENDING
    h.pool_app()  # for the request held behind the Upgrade
    h.app_sends(OK, app=h.apps[0][0])
    assert h.state is C.ACTIVE, "the held bytes were a request"
    assert h.app_side.take().startswith(b"GET /next ")
    h.app_sends(OK)
    assert h.state is C.IDLE


@scenario
async def upgrade_refused_while_draining(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(UPGRADE)
    h.ctx.begin_drain(0.0)
    h.app_sends(OK_CLOSE)  # the app's own "close" is about its hop only
    assert h.state is C.CLOSING and h.client.machine.close_reason == "drain"
    assert h.app.machine.state is U.CLOSED


@scenario
async def upgrade_pending_connection_lost(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(UPGRADE)
    h.step(lambda: h.client.connection_lost(None))
    assert h.state is C.CLOSED


@scenario
async def active_connection_lost(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(GET % b"a")
    h.step(lambda: h.client.connection_lost(ConnectionResetError()))
    await h.turn()
    assert h.state is C.CLOSED and h.app.machine.state is U.CLOSED and h.app_side.aborted


@scenario
async def malformed_request_is_answered_and_closed(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert h.state is C.CLOSING
    assert h.client_side.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert h.app_side.take() == b"" and h.app.machine.state is U.IDLE


@scenario
async def early_answer_closes_both_connections(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    assert h.app.machine.state is U.SENDING
    h.app_sends(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n")
    assert h.app.machine.state is U.EARLY
    h.app_sends(b"no")
    assert h.app.machine.state is U.CLOSED, "the app is still owed 90 bytes"
    assert h.state is C.CLOSING
    assert b"Connection: close" in h.client_side.take()
    await h.turn()
    assert h.ctx.pool.take_idle() is None


@scenario
async def early_answer_then_the_whole_body(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nxx")
    h.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
    assert h.app.machine.state is U.EARLY
    h.send(b"yy")
    assert h.app.machine.state is U.RECEIVING
    h.app_sends(b"ok")
    assert h.app.machine.state is U.IDLE, "both directions complete: reusable"
    assert h.state is C.CLOSING, "the client was told to close at the early head"


@scenario
async def app_that_does_not_answer_in_time(edges: set[Edge]) -> None:
    h = Harness(edges, "--upstream-timeout", "0.01")
    h.send(GET % b"a")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while h.app.machine.state is not U.CLOSED and loop.time() < deadline:
        await asyncio.sleep(0.005)  # the response timer runs on the loop's real clock
        await h.turn()
    assert h.app.machine.state is U.CLOSED
    assert h.client_side.take().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")


@scenario
async def pooled_app_connection_sends_stray_bytes(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.app_sends(b"HTTP/1.1 200 OK\r\n")
    assert h.app.machine.state is U.CLOSED and h.ctx.pool.take_idle() is None


@scenario
async def app_resets_while_the_body_goes_out(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nxx")
    h.step(lambda: h.app.connection_lost(ConnectionResetError()))
    assert h.app.machine.state is U.CLOSED
    assert h.client_side.take().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


@scenario
async def app_that_closes_after_its_response(edges: set[Edge]) -> None:
    h = Harness(edges)
    h.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nxx")
    assert h.app.machine.state is U.SENDING
    h.send(b"yy")
    assert h.app.machine.state is U.AWAITING
    h.app_sends(OK_CLOSE[:-2])  # the head
    assert h.app.machine.state is U.RECEIVING
    h.app_sends(b"ok")
    assert h.app.machine.state is U.CLOSED and h.state is C.IDLE


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(run: Run[None], name: str) -> None:
    run(SCENARIOS[name](set()))


def test_every_transition_is_exercised(run: Run[set[Edge]]) -> None:
    async def all_scenarios() -> set[Edge]:
        edges: set[Edge] = set()
        for walk in SCENARIOS.values():
            await walk(edges)
        return edges

    edges = run(all_scenarios())
    for table in (client_state.TRANSITIONS, upstream_state.TRANSITIONS):
        wanted = {(before, after) for before, targets in table.items() for after in targets}
        missing = sorted(f"{b.name} -> {a.name}" for b, a in wanted - edges)
        assert not missing, f"no scenario walks {missing}"
