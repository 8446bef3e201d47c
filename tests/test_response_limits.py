"""An app's response head and trailers are bounded by --max-response-header-bytes: past
it the client gets 502 (or, once the response has begun, a reset), the app connection is
closed, and nobody else waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from conftest import Run
from helpers import (
    IO_TIMEOUT_S,
    Client,
    Script,
    raw_exchange,
    running_proxy,
    sample,
    scripted_app,
)

MIB = 1024 * 1024
GET = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _head_of(size: int, status_line: bytes = b"HTTP/1.1 200 OK\r\n",
             fields: bytes = b"Content-Length: 2\r\n") -> bytes:
    """A response head of exactly ``size`` bytes (status line to the blank line)."""
    start = status_line + fields + b"X-Pad: "
    head = start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    return head


def _huge_head_for_big(streaming: asyncio.Event) -> Script:
    """/big: a 4 MiB header field, written in 64 KiB pieces; anything else: a small 200."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if not request.startswith(b"GET /big "):
            writer.write(OK)
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ")
        for _ in range(64):
            writer.write(b"b" * (64 * 1024))
            await writer.drain()
            streaming.set()
        writer.write(b"\r\n\r\nok")
        await writer.drain()
        await reader.read()

    return script


def test_an_oversized_response_head_gives_502_at_once_and_others_are_served(
        run: Run[None]) -> None:
    async def scenario() -> None:
        streaming = asyncio.Event()
        async with scripted_app(_huge_head_for_big(streaming)) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            loop = asyncio.get_running_loop()
            started = loop.time()
            big = asyncio.create_task(raw_exchange(
                proxy.port, b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
            await streaming.wait()
            other = await Client.open(proxy.port)
            assert (await other.request()).status == 200, "another client is served meanwhile"
            other.close()
            reply = await big
            assert reply.startswith(b"HTTP/1.1 502 "), reply[:100]
            assert loop.time() - started < 1
            assert sample(proxy, "drain_proxy_upstream_errors_total",
                          {"reason": "too_large"}) == 1

    run(scenario())


def _answers(response: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await reader.read()

    return script


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"


@pytest.mark.parametrize(("response", "status"), [
    (_head_of(4096) + b"ok", 200),
    (EARLY_HINTS + _head_of(4096) + b"ok", 200),  # each head has the whole limit
    (_head_of(4096, b"HTTP/1.1 200 " + b"R" * 3000 + b"\r\n") + b"ok", 200),
    (_head_of(4097) + b"ok", 502),
    (_head_of(4097, b"HTTP/1.1 103 Early Hints\r\n", b"") + OK, 502),
])
def test_a_response_head_up_to_the_limit_passes(run: Run[None], response: bytes,
                                                status: int) -> None:
    async def scenario() -> None:
        async with scripted_app(_answers(response)) as port, running_proxy(
                f"127.0.0.1:{port}", "--max-response-header-bytes", "4096") as proxy:
            reply = await raw_exchange(proxy.port, GET)
            if reply.startswith(EARLY_HINTS):
                reply = reply[len(EARLY_HINTS):]  # relayed as it came
            assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:100]
            if status == 200:
                assert reply.endswith(b"\r\n\r\nok")
            else:
                assert sample(proxy, "drain_proxy_upstream_errors_total",
                              {"reason": "too_large"}) == 1

    run(scenario())


async def _not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.2")  # no line end, and the app waits
    await reader.read()


def test_an_answer_that_is_not_http_is_refused_at_once_not_at_the_timeout(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_not_http) as port, running_proxy(
                f"127.0.0.1:{port}", "--upstream-timeout", "5") as proxy:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await raw_exchange(proxy.port, GET)
            assert reply.startswith(b"HTTP/1.1 502 ") and loop.time() - started < 1
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "protocol"}) == 1

    run(scenario())


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
TrailerScript = Callable[[asyncio.Event], Script]


def _huge_trailer(body_seen: asyncio.Event) -> Script:
    """One 4 MiB trailer field in 64 KiB pieces, once the client has the body."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(CHUNKED)
        await body_seen.wait()
        writer.write(b"0\r\nX-Trailer: ")
        for _ in range(64):
            writer.write(b"t" * (64 * 1024))
            await writer.drain()
        writer.write(b"\r\n\r\n")
        await writer.drain()
        await reader.read()

    return script


def _many_trailers(total: int) -> bytes:
    """A chunked body whose trailer fields add up to ``total`` bytes (name, value, ': ' and
    CRLF each), all in one write with the body."""
    fields = [b"X-T%03d: %s\r\n" % (i, b"v" * 90) for i in range(total // 100)]
    assert sum(map(len, fields)) == total
    return CHUNKED + b"0\r\n" + b"".join(fields) + b"\r\n"


def _many_trailers_later(body_seen: asyncio.Event) -> Script:
    """Trailer fields of 5000 bytes in all, in one write once the client has the body."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        response = _many_trailers(5000)
        writer.write(response[:len(CHUNKED)])
        await body_seen.wait()
        writer.write(response[len(CHUNKED):])
        await writer.drain()
        await reader.read()

    return script


async def _read_to_the_end(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What arrives until EOF, and whether a reset ended it."""
    received = bytearray()
    try:
        async with asyncio.timeout(IO_TIMEOUT_S):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        return bytes(received), True
    return bytes(received), False


@pytest.mark.parametrize("script", [_huge_trailer, _many_trailers_later])
def test_oversized_response_trailers_are_a_visible_truncation(run: Run[None],
                                                              script: TrailerScript) -> None:
    async def scenario() -> None:
        body_seen = asyncio.Event()
        async with scripted_app(script(body_seen)) as port, running_proxy(
                f"127.0.0.1:{port}", "--max-response-header-bytes", "4096") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(GET)
            start = await reader.readuntil(b"hello\r\n")
            assert start.startswith(b"HTTP/1.1 200 ")
            loop = asyncio.get_running_loop()
            started = loop.time()
            body_seen.set()
            rest, reset = await _read_to_the_end(reader)
            writer.close()
            assert reset and not rest.endswith(b"\r\n\r\n"), "no fake end of the body"
            assert loop.time() - started < 1
            assert sample(proxy, "drain_proxy_upstream_errors_total",
                          {"reason": "too_large"}) == 1

    run(scenario())


def test_response_trailers_up_to_the_limit_pass(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_answers(_many_trailers(4000))) as port, running_proxy(
                f"127.0.0.1:{port}", "--max-response-header-bytes", "4096") as proxy:
            reply = await raw_exchange(proxy.port, GET)
            assert reply.startswith(b"HTTP/1.1 200 ") and b"hello" in reply
            assert reply.endswith(b"X-T039: " + b"v" * 90 + b"\r\n\r\n")
            assert sample(proxy, "drain_proxy_upstream_errors_total",
                          {"reason": "too_large"}) == 0

    run(scenario())
