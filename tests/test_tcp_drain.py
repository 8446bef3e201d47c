"""TCP mode's drain: connections end at a quiet moment between messages, not mid-message.

The app here speaks a small request/response protocol: a request is one line, the answer
``ANSWER_SIZE`` bytes written in pieces with short pauses inside (shorter than the quiet
period), so a close in the middle of an answer would show as a short read.  The app
records how each connection ended: a clean EOF, or a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from conftest import Run
from helpers import ProxyProcess, eventually, running_proxy, sample

ANSWER_SIZE = 30_000
PIECES = 3
PAUSE_INSIDE_S = 0.02  # inside one answer: well under the 0.1 s quiet period


@dataclass
class LineApp:
    """Answers each request line with ``ANSWER_SIZE`` bytes, unless told to hang."""

    hang: bool = False  # read requests, never answer (an app slower than the deadline)
    stream_every_s: float = 0.0  # also send a byte this often, unasked (a server push)
    ends: list[str] = field(default_factory=list)  # "eof" or "reset", per connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pusher = asyncio.ensure_future(self._push(writer)) if self.stream_every_s else None
        try:
            while line := await reader.readline():
                if not self.hang:
                    for _ in range(PIECES):
                        writer.write(line[:1] * (ANSWER_SIZE // PIECES))
                        await writer.drain()
                        await asyncio.sleep(PAUSE_INSIDE_S)
            self.ends.append("eof")
        except ConnectionResetError:
            self.ends.append("reset")
        finally:
            if pusher is not None:
                pusher.cancel()
            writer.close()

    async def _push(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b".")
                await asyncio.sleep(self.stream_every_s)


@contextlib.asynccontextmanager
async def line_app(app: LineApp) -> AsyncIterator[int]:
    server = await asyncio.start_server(app.serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One request and its complete answer."""
    writer.write(b"q\n")
    assert len(await reader.readexactly(ANSWER_SIZE)) == ANSWER_SIZE


async def ask_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           think_s: float, timeout_s: float) -> int:
    """Ask, wait ``think_s`` (watching for EOF), ask again... until the proxy closes the
    connection; every answer must be complete and the EOF must come between them.
    Returns how many answers came."""
    answers = 0
    async with asyncio.timeout(timeout_s):
        while True:
            await ask(reader, writer)
            answers += 1
            with contextlib.suppress(TimeoutError):
                assert await asyncio.wait_for(reader.read(1), think_s) == b"", "unasked bytes"
                return answers


TCP_DRAIN = ("--mode", "tcp", "--propagation-window", "0.2", "--tunnel-drain-timeout", "5")


def test_a_request_response_client_is_closed_between_messages(run: Run[None]) -> None:
    async def scenario() -> None:
        app = LineApp()
        async with line_app(app) as port, running_proxy(f"127.0.0.1:{port}",
                                                        *TCP_DRAIN) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await ask(reader, writer)
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            started = asyncio.get_running_loop().time()
            answers = await ask_until_closed(reader, writer, think_s=0.3, timeout_s=4)
            assert answers >= 1  # served through the window, closed after it
            await proxy.coordinator.wait_drained()
            assert asyncio.get_running_loop().time() - started < 2, "not left to the deadline"
            writer.close()
            await eventually(lambda: app.ends == ["eof"])  # a FIN at a message boundary
            assert sample(proxy, "drain_proxy_tunnels_closed_quiet_total") == 1
            assert sample(proxy, "drain_proxy_tunnels_cut_total") == 0
            assert sample(proxy, "drain_proxy_connections_closed_total",
                          {"reason": "drain"}) == 1
            summary = proxy.ctx.timeline.summary(0.0)
            assert summary["tunnels_closed_quiet"] == 1 and summary["tunnels_cut"] == 0

    run(scenario())


def test_a_client_awaiting_a_slow_answer_is_cut_at_the_tunnel_deadline(run: Run[None]) -> None:
    async def scenario() -> None:
        app = LineApp(hang=True)
        async with line_app(app) as port, running_proxy(
                f"127.0.0.1:{port}", "--mode", "tcp", "--propagation-window", "0.2",
                "--tunnel-drain-timeout", "0.5") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"q\n")  # the client spoke last: its answer is outstanding
            await eventually(lambda: proxy.ctx.connections.tunnels == 1)
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            await proxy.coordinator.wait_drained()
            with pytest.raises(ConnectionResetError):  # cut at the deadline: a reset
                await reader.read()
            writer.close()
            await eventually(lambda: app.ends == ["reset"])
            assert sample(proxy, "drain_proxy_tunnels_cut_total") == 1
            assert sample(proxy, "drain_proxy_tunnels_closed_quiet_total") == 0
            assert proxy.coordinator.exit_code == 0, "a cut tunnel is not a cut request"

    run(scenario())


def test_a_silent_connection_is_closed_cleanly_after_the_window(run: Run[None]) -> None:
    async def scenario() -> None:
        app = LineApp()
        async with line_app(app) as port, running_proxy(f"127.0.0.1:{port}",
                                                        *TCP_DRAIN) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await eventually(lambda: proxy.ctx.connections.tunnels == 1)
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
            await eventually(lambda: app.ends == ["eof"])
            assert sample(proxy, "drain_proxy_tunnels_closed_quiet_total") == 1

    run(scenario())


def test_an_app_that_never_stops_sending_is_cut_at_the_deadline(run: Run[None]) -> None:
    """The app spoke last, but never falls quiet: nothing marks a message boundary."""
    async def scenario() -> None:
        app = LineApp(stream_every_s=0.02)
        async with line_app(app) as port, running_proxy(
                f"127.0.0.1:{port}", "--mode", "tcp", "--propagation-window", "0.1",
                "--tunnel-drain-timeout", "0.6") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await reader.readexactly(1)
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            await proxy.coordinator.wait_drained()
            with pytest.raises(ConnectionResetError):
                while await reader.read(65536):
                    pass
            writer.close()
            assert sample(proxy, "drain_proxy_tunnels_cut_total") == 1
            assert sample(proxy, "drain_proxy_tunnels_closed_quiet_total") == 0

    run(scenario())


def test_sigterm_closes_an_idle_tcp_client_cleanly_and_exits_at_once(
        run: Run[None], loop_kind: str) -> None:
    async def scenario() -> None:
        app = LineApp()
        async with line_app(app) as port:
            proxy = await ProxyProcess.start(port, *TCP_DRAIN, "--loop", loop_kind)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                await ask(reader, writer)
                proxy.signal(signal.SIGTERM)
                assert await asyncio.wait_for(reader.read(), 3) == b""  # EOF, not a reset
                assert await proxy.wait(timeout_s=3) == 0  # long before the 5 s deadline
                writer.close()
                await eventually(lambda: app.ends == ["eof"])
                assert "tunnel drain deadline" not in proxy.log_text()
            finally:
                await proxy.kill()

    run(scenario())
