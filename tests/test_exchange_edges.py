"""Edges of one HTTP/1.1 exchange that once lost, hung or cut a request.

Each test drives the proxy with a raw-socket client and a raw-socket app, so that the
exact bytes and their timing are the test's: a refusal that arrives after the request
went to the app, an app that answers an upload before reading all of it, a client's
EOF after our half-close, a client's FIN before the app's 101.
"""

from __future__ import annotations

import asyncio

from conftest import Run
from helpers import IO_TIMEOUT_S, eventually, running_proxy, sample, scripted_app

CHUNKED_HEAD = (b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    received = bytearray()
    async with asyncio.timeout(IO_TIMEOUT_S):
        while chunk := await reader.read(65536):
            received += chunk
    return bytes(received)


def test_a_bad_trailer_after_the_body_went_to_the_app_is_refused_and_not_completed(
        run: Run[None]) -> None:
    """A trailer field the policy refuses (an underscore: llhttp lets it through) arrives
    after the head and a chunk already went to the app.  The client gets a 400, the app
    never sees the end of that request (its connection is reset, never reused), and
    nothing is left counted in flight."""

    async def scenario() -> None:
        received = bytearray()
        head_seen = asyncio.Event()
        app_done = asyncio.Event()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while chunk := await reader.read(65536):
                    received.extend(chunk)
                    if b"hello" in received:
                        head_seen.set()
            except ConnectionError:
                pass
            finally:
                app_done.set()

        async with scripted_app(app) as port, \
                running_proxy(f"127.0.0.1:{port}", "--header-timeout", "1",
                              "--body-timeout", "1", "--upstream-timeout", "1") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
            async with asyncio.timeout(IO_TIMEOUT_S):
                await head_seen.wait()  # the request is with the app
            writer.write(b"0\r\nContent_Length: 5\r\n\r\n")
            answer = await read_until_closed(reader)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            async with asyncio.timeout(IO_TIMEOUT_S):
                await app_done.wait()  # the app's connection was ended, not left waiting
            assert b"0\r\n\r\n" not in received, "the app got a complete request"
            await eventually(lambda: proxy.ctx.requests_in_flight == 0)
            assert sample(proxy, "drain_proxy_requests_total", {"code": "400"}) == 1

    run(scenario())
