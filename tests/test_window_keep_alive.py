"""In the propagation window a keep-alive connection is closed only after a response that
said ``Connection: close``.

A response whose head went out before the drain began carries no ``Connection: close``:
its client has no reason to leave and may reuse the connection at once.  Closing the
connection after that response makes the client's next request meet an EOF (a plain
client that writes without checking the socket first loses it; a POST may not be
retried).  So the connection stays open through the window, and its next response
says ``Connection: close``; only a connection still idle when the window ends is closed.
"""

from __future__ import annotations

import asyncio

from proxy.server import ProxyServer

from conftest import Run
from helpers import IO_TIMEOUT_S, running_proxy, scripted_app


def test_a_response_begun_before_the_drain_does_not_end_the_connection_in_the_window(
        run: Run[None]) -> None:
    async def scenario() -> None:
        head_sent = asyncio.Event()
        finish = asyncio.Event()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
            await writer.drain()
            head_sent.set()
            await finish.wait()
            writer.write(b"rest!")
            await writer.drain()
            while True:  # then answer whatever comes on this connection
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                await writer.drain()

        async with scripted_app(app) as port, \
                running_proxy(f"127.0.0.1:{port}", "--propagation-window", "2",
                              "--drain-timeout", "2") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                await reuse_in_the_window(proxy, reader, writer, head_sent, finish)
            finally:
                writer.close()

    run(scenario())


async def reuse_in_the_window(proxy: ProxyServer, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter, head_sent: asyncio.Event,
                              finish: asyncio.Event) -> None:
    """Answered with the head before the drain, the rest in the window, then reused."""
    writer.write(b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
    async with asyncio.timeout(IO_TIMEOUT_S):
        await head_sent.wait()
        head = await reader.readuntil(b"\r\n\r\n")
    assert b"close" not in head.lower(), head  # decided before the drain
    proxy.coordinator.trigger("test")
    finish.set()
    async with asyncio.timeout(IO_TIMEOUT_S):
        assert await reader.readexactly(10) == b"firstrest!"
    # The client reuses the connection the instant the response ends, as a plain
    # client does, and must be answered, with Connection: close this time.
    writer.write(b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\ny")
    async with asyncio.timeout(IO_TIMEOUT_S):
        second = await reader.readuntil(b"second")
        rest = await reader.read()
    assert second.startswith(b"HTTP/1.1 200 "), second
    assert b"connection: close" in second.lower(), second
    assert rest == b"", "closed after the response that said so"
