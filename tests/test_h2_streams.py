"""HTTP/2 streams that end while the peer still has frames for them on the wire, through
real sockets: those frames fail no other call, and the flow-control credit of what the
proxy drops comes back to the client.  The peers are ``h2`` (python-hyper) ones."""

from __future__ import annotations

import asyncio

from h2_peers import ANSWER_AND_RESET, H2Client, goaways, h2_app, slow_stream_across_the_drain
from hyperframe.frame import DataFrame, RstStreamFrame, WindowUpdateFrame

from proxy.http2.relay import H2Connection

from conftest import Run
from helpers import Client, eventually, running_proxy, sample

REFUSED_STREAM = 0x7



def resets(client: H2Client) -> list[tuple[int, int]]:
    return [(f.stream_id, f.error_code) for f in client.of_type("RstStreamFrame")
            if isinstance(f, RstStreamFrame)]


def connection_credit(client: H2Client) -> int:
    return sum(f.window_increment for f in client.of_type("WindowUpdateFrame")
               if isinstance(f, WindowUpdateFrame) and f.stream_id == 0)


def test_trailers_in_flight_when_the_app_resets_their_stream_fail_no_other_call(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(f"127.0.0.1:{app.port}") as proxy:
            client = await H2Client.open(proxy.port)
            upload = client.request("/upload", end_stream=False)
            answered = client.request(ANSWER_AND_RESET.decode(), end_stream=False)
            await client.read_until(lambda c: (answered, 0) in resets(c))
            # The client sent its trailers before it read the reset: legal, and ignored.
            client.conn.send_headers(answered, [("x-checksum", "abc")], end_stream=True)
            client.conn.send_data(upload, b"the rest", end_stream=True)
            client.flush()
            await client.read_until(lambda c: upload in c.responses())
            assert goaways(client) == []
            client.close()
            await eventually(lambda: not proxy.ctx.h2_connections)

    run(scenario())


def test_data_on_a_refused_stream_gives_its_connection_window_back(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app(delay_s=0.5) as app, running_proxy(
                f"127.0.0.1:{app.port}", "--propagation-window", "5") as proxy:
            client = await H2Client.open(proxy.port)
            first = await slow_stream_across_the_drain(
                client, app, lambda: proxy.coordinator.trigger("test"))
            refused = first + 2  # opened by a client that had not read the GOAWAYs yet
            upload = DataFrame(refused, data=b"x" * 16_000).serialize()
            client.send_raw(client.raw_headers(refused, end_stream=False) + upload * 3)
            await client.read_to_eof()  # the first stream completes, then the proxy closes
            assert (refused, REFUSED_STREAM) in resets(client)
            assert connection_credit(client) == 48_000, "the refused upload's window is back"
            assert first in client.responses()

    run(scenario())


def test_connections_that_open_no_stream_are_closed_after_the_header_timeout(
        run: Run[None]) -> None:
    """Three clients that send the preface and SETTINGS, then nothing, must not hold a
    proxy at --max-connections 3: an HTTP/1.1 client behind them is served."""
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(
                f"127.0.0.1:{app.port}", "--max-connections", "3",
                "--header-timeout", "0.3") as proxy:
            silent = [await H2Client.open(proxy.port) for _ in range(3)]
            for client in silent:
                await client.read_until(lambda c: bool(c.of_type("SettingsFrame")))
            http = await Client.open(proxy.port)
            answer = await http.request("GET", "/after")
            assert answer.status == 502, "served (the app speaks only HTTP/2)"
            http.close()
            for client in silent:
                await client.read_to_eof()
                assert goaways(client) == [(0, 0)], "GOAWAY(NO_ERROR) before the close"
            await eventually(lambda: not app._serving, 2)  # the app connections too
            assert sample(proxy, "drain_proxy_connections_closed_total",
                          {"reason": "idle_timeout"}) >= 3

    run(scenario())


def test_a_connection_idle_between_streams_is_closed_after_the_idle_timeout(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app(delay_s=0.5) as app, running_proxy(
                f"127.0.0.1:{app.port}", "--idle-timeout", "0.3") as proxy:
            client = await H2Client.open(proxy.port)
            slow = client.request("/slower-than-the-idle-timeout")
            await client.read_until(lambda c: slow in c.responses())
            await client.read_to_eof()
            assert goaways(client) == [(slow, 0)]
            await eventually(lambda: not app._serving, 2)
            assert sample(proxy, "drain_proxy_h2_goaways_total",
                          {"reason": "idle_timeout"}) == 1

    run(scenario())


def test_a_stream_opened_after_the_ping_timer_by_a_busy_client_runs_once(
        run: Run[None]) -> None:
    """The client is busy for longer than the PING timer, with the GOAWAY and PING
    unread, then opens a stream.  REFUSED_STREAM means "not processed, safe to retry":
    it may only ever name a request the app never received."""
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(
                f"127.0.0.1:{app.port}", "--propagation-window", "5") as proxy:
            loop = asyncio.get_running_loop()
            client = await H2Client.open(proxy.port)
            await client.read_until(lambda c: bool(c.of_type("SettingsFrame")))
            upload = client.request("/upload", end_stream=False)
            await eventually(lambda: len(app.requests) == 1)
            proxy.coordinator.trigger("test")
            relay = next(iter(proxy.ctx.h2_connections))
            assert isinstance(relay, H2Connection)
            await eventually(lambda: relay._ping_timer is not None)
            timer = relay._ping_timer
            assert timer is not None
            await eventually(lambda: loop.time() > timer.when() + 0.05)  # it has run
            late = client.request("/late")  # written before reading anything
            client.conn.send_data(upload, b"done", end_stream=True)
            client.flush()
            await client.read_to_eof()
            received = [dict(r)[b":path"] for r in app.requests]
            refused = [s for s, code in resets(client) if code == REFUSED_STREAM]
            if late in refused:
                assert b"/late" not in received, "refused, yet the app received it"
            else:
                assert late in client.responses() and received.count(b"/late") == 1
            assert upload in client.responses()

    run(scenario())
