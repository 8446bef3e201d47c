"""Raw TCP mode and HTTP Upgrade (WebSocket) tunnels, including their drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import cast

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from proxy.tcp.tunnel import reset

from conftest import Run
from helpers import (
    App,
    ParsedRequest,
    Reply,
    eventually,
    raw_exchange,
    running_proxy,
    sample,
    scripted_app,
)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP echo app: answers each read, and says BYE once the client half-closes."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write(b"BYE")
    await writer.drain()


def echo_server() -> contextlib.AbstractAsyncContextManager[int]:
    return scripted_app(_echo)


def test_tcp_mode_relays_both_ways_with_half_close(run: Run[None]) -> None:
    async def scenario() -> None:
        async with echo_server() as port, running_proxy(f"127.0.0.1:{port}",
                                                         "--mode", "tcp") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.write_eof()  # our direction ends; the app's keeps flowing
            assert await reader.read() == b"BYE"
            writer.close()
            await eventually(lambda: proxy.ctx.connections.tunnels == 0)
            assert sample(proxy, "drain_proxy_connections_closed_total", {"reason": "peer"}) == 1

    run(scenario())


def test_tcp_mode_closes_the_client_promptly_when_the_app_is_down(run: Run[None]) -> None:
    async def scenario() -> None:
        async with echo_server() as port:
            pass  # the port is closed now
        async with running_proxy(f"127.0.0.1:{port}", "--mode", "tcp") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "connect"}) == 1

    run(scenario())


def test_tcp_mode_passes_a_reset_on(run: Run[None]) -> None:
    async def scenario() -> None:
        async def reset_after_hello(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(5)
            reset(cast(asyncio.Transport, writer.transport))  # a real RST, not a FIN

        server = await asyncio.start_server(reset_after_hello, "127.0.0.1", 0)
        async with running_proxy(f"127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                 "--mode", "tcp") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"hello")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 2)
            writer.close()
        server.close()

    run(scenario())


def test_tcp_connection_survives_the_window_and_closes_when_quiet(run: Run[None]) -> None:
    """Served through the window; after it, closed at its first quiet moment (the app
    spoke last) with a FIN, long before its deadline (``test_tcp_drain`` has the rest)."""
    async def scenario() -> None:
        async with echo_server() as port, running_proxy(
                f"127.0.0.1:{port}", "--mode", "tcp", "--propagation-window", "0.2",
                "--tunnel-drain-timeout", "5") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            writer.write(b"still here")
            assert await reader.readexactly(10) == b"still here"
            await asyncio.wait_for(proxy.coordinator.wait_drained(), 2)
            assert await reader.read() == b""  # a clean close, not a reset
            assert sample(proxy, "drain_proxy_tunnels_cut_total") == 0
            await eventually(lambda: sample(proxy, "drain_proxy_connections_closed_total",
                                            {"reason": "drain"}) == 1)
            writer.close()

    run(scenario())


def test_tcp_rotation_waits_for_an_idle_moment(run: Run[None]) -> None:
    async def scenario() -> None:
        async with echo_server() as port, running_proxy(
                f"127.0.0.1:{port}", "--mode", "tcp", "--max-connection-age", "0.2",
                "--tcp-rotate-idle", "0.15", "--rotation-jitter", "0") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            loop = asyncio.get_running_loop()
            busy_until = loop.time() + 0.5
            while loop.time() < busy_until:  # busy past its age: never cut mid-exchange
                writer.write(b"x")
                assert await reader.readexactly(1) == b"x"
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(reader.read(), 2) == b""
            idle_closed_at = loop.time()
            assert idle_closed_at - busy_until >= 0.1
            writer.close()
            await eventually(lambda: sample(proxy, "drain_proxy_connections_closed_total",
                                            {"reason": "max_age"}) == 1)

    run(scenario())


# -- WebSocket through --mode http ---------------------------------------------------------------
@contextlib.asynccontextmanager
async def websocket_app() -> AsyncIterator[int]:
    async def echo(connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                await connection.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        yield next(iter(server.sockets)).getsockname()[1]


def test_websocket_conversation_through_the_proxy(run: Run[None]) -> None:
    async def scenario() -> None:
        async with websocket_app() as port, running_proxy(f"127.0.0.1:{port}") as proxy:
            async with connect(f"ws://127.0.0.1:{proxy.port}/chat") as websocket:
                for text in ("hello", "x" * 100_000, "bye"):
                    await websocket.send(text)
                    assert await websocket.recv() == text
                assert sample(proxy, "drain_proxy_tunnels_active") == 1
            await eventually(lambda: sample(proxy, "drain_proxy_tunnels_active") == 0)
            assert sample(proxy, "drain_proxy_requests_total", {"code": "101"}) == 1

    run(scenario())


def test_a_websocket_is_access_logged_when_it_ends_with_its_bytes_and_duration(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    """The line used to be written at the 101 (bytes=0 upstream_s=0.0), before the tunnel
    carried anything: it now comes when the tunnel ends, with what went each way."""
    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "drain_proxy.access"]

    async def scenario() -> None:
        async with websocket_app() as port, running_proxy(
                f"127.0.0.1:{port}", "--access-log") as proxy:
            async with connect(f"ws://127.0.0.1:{proxy.port}/chat",
                               compression=None) as websocket:  # counts as sent
                for text in ("hello", "x" * 100_000):
                    await websocket.send(text)
                    assert await websocket.recv() == text
                await websocket.ping()
                assert lines() == []  # still open: nothing to say yet
            await eventually(lambda: len(lines()) == 1)

    with caplog.at_level(logging.INFO, logger="drain_proxy.access"):
        run(scenario())
    [record] = lines()
    entry = record.fields  # type: ignore[attr-defined]
    assert entry["status"] == 101 and entry["path"] == "/chat"
    assert 100_005 < entry["bytes"] < 101_000  # to the client: the echoes, framed
    assert 100_005 < entry["bytes_from_client"] < 101_000  # masked frames are a bit larger
    assert 0 < entry["upstream_s"] < entry["duration_s"]
    assert entry["tunnel_end"] == "peer"
    assert re.match(r'^127\.0\.0\.1 "GET /chat HTTP/1\.1" 101 \d{6} [\d.]+ [\d.]+$',
                    record.getMessage())


def test_websocket_survives_the_window_and_is_cut_at_the_tunnel_deadline(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with websocket_app() as port, running_proxy(
                f"127.0.0.1:{port}", "--propagation-window", "0.3",
                "--tunnel-drain-timeout", "0.3") as proxy:
            async with connect(f"ws://127.0.0.1:{proxy.port}/") as websocket:
                assert proxy.coordinator is not None
                proxy.coordinator.trigger("test")
                await websocket.send("during the window")
                assert await websocket.recv() == "during the window"
                await proxy.coordinator.wait_drained()
                with pytest.raises(ConnectionClosed):
                    await websocket.recv()
            assert sample(proxy, "drain_proxy_tunnels_cut_total") == 1
            await eventually(lambda: sample(proxy, "drain_proxy_connections_closed_total",
                                            {"reason": "drain_deadline"}) == 1)

    run(scenario())


async def _refuse_upgrades(request: ParsedRequest) -> Reply:
    upgrade = dict(request.headers).get(b"upgrade", b"-").decode()
    return 200, [("Content-Type", "text/plain")], f"no switch, upgrade={upgrade}".encode()


def test_refused_upgrade_continues_as_http_and_h2c_is_dropped(run: Run[None]) -> None:
    async def scenario() -> None:
        app = await App(_refuse_upgrades).start()
        async with running_proxy(f"127.0.0.1:{app.port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n"
                         b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
                         b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert reply.count(b"HTTP/1.1 200 ") == 3, reply
            assert b"no switch, upgrade=websocket" in reply
            assert b"no switch, upgrade=-" in reply  # h2c never reaches the app
        await app.stop()
        targets = [r.target for r in app.requests]
        assert targets == [b"/ws", b"/h2c", b"/after"]
        assert all(name != b"http2-settings" for name, _ in app.requests[1].headers)

    run(scenario())


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


async def _http_then_switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers plain requests; switches on an Upgrade and then echoes in upper case."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"upgrade: websocket" not in head.lower():
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
            continue
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        return


def test_an_upgrade_pipelined_behind_a_request_is_switched_in_its_turn(run: Run[None]) -> None:
    """It used to wait forever once the first response was out."""

    async def scenario() -> None:
        async with scripted_app(_http_then_switch) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" + UPGRADE + b"tunnel bytes")
            expected = b"TUNNEL BYTES"
            received = b""
            async with asyncio.timeout(5):
                while not received.endswith(expected):
                    received += await reader.read(65536)
            assert received.index(b"HTTP/1.1 200 ") < received.index(b"HTTP/1.1 101 ")
            assert proxy.ctx.connections.tunnels == 1
            writer.close()

    run(scenario())


def test_a_pipelined_upgrade_the_app_refuses_goes_on_as_http(run: Run[None]) -> None:
    async def scenario() -> None:
        app = await App(_refuse_upgrades).start()
        async with running_proxy(f"127.0.0.1:{app.port}") as proxy:
            reply = await raw_exchange(
                proxy.port, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" + UPGRADE
                + b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert reply.count(b"HTTP/1.1 200 ") == 3, reply
        await app.stop()
        assert [r.target for r in app.requests] == [b"/first", b"/ws", b"/after"]

    run(scenario())


def test_a_long_pipeline_of_dropped_h2c_upgrades_is_answered_in_order(run: Run[None]) -> None:
    """h2c Upgrades are dropped and parsing goes on; it used to recurse once per request,
    so the compiled and the pure build failed at different pipeline lengths."""

    async def scenario() -> None:
        app = await App().start()
        count = 2000
        async with running_proxy(f"127.0.0.1:{app.port}") as proxy:
            h2c = (b"GET /%d HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
            pipeline = b"".join(h2c % i for i in range(count))
            reply = await raw_exchange(
                proxy.port, pipeline + b"GET /end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                timeout_s=20)
            assert reply.count(b"HTTP/1.1 200 ") == count + 1
        await app.stop()
        assert [r.target for r in app.requests] == [
            b"/%d" % i for i in range(count)] + [b"/end"]

    run(scenario())
