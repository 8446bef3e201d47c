"""Malformed and abusive requests: the right 4xx, the connection closed, nothing forwarded."""

from __future__ import annotations

import asyncio

import pytest

from conftest import Run
from helpers import Client, app_and_proxy, eventually, raw_exchange, sample

BAD_REQUESTS = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                    b"Content-Length: 3\r\n\r\nabc",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl-sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "te-not-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                      b"0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "http10-te": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "underscore-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 3\r\n\r\nabc",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk-overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"FFFFFFFFFFFFFFFFFF\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "bare-cr": b"GET / HTTP/1.1\rHost: a\r\n\r\n",
    "chunked-not-last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "control-in-name": b"GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: z\r\n\r\n",
    "cl-in-trailers": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_malformed_request_gets_400_and_nothing_is_forwarded(run: Run[None], name: str) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            reply = await raw_exchange(proxy.port, BAD_REQUESTS[name])
            assert reply.startswith(b"HTTP/1.1 400 "), reply
            assert b"Connection: close" in reply
            assert app.requests == [] and app.connections == 0
            assert sample(proxy, "drain_proxy_requests_total", {"code": "400"}) == 1

    run(scenario())


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", b"405"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"505"),
    (b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", b"501"),  # a method llhttp does not know
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101))
     + b"\r\n", b"431"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
     + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", b"431"),  # trailers
])
def test_refused_requests_get_their_status(run: Run[None], request_bytes: bytes,
                                           status: bytes) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            reply = await raw_exchange(proxy.port, request_bytes)
            assert reply.startswith(b"HTTP/1.1 " + status + b" "), reply[:80]
            assert app.requests == []

    run(scenario())


def test_header_limit_holds_when_the_head_trickles_in(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--max-header-bytes", "2048") as (app, proxy):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
            for _ in range(30):
                writer.write(b"v" * 100)
                await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 5)
            assert reply.startswith(b"HTTP/1.1 431 ")
            assert app.requests == []
            writer.close()

    run(scenario())


def test_bad_request_after_a_good_one_answers_both_in_order(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            raw = (b"GET /good HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"POST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                   b"Content-Length: 2\r\n\r\n")
            reply = await raw_exchange(proxy.port, raw)
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert reply.index(b"GET /good 0") < reply.index(b"HTTP/1.1 400 ")
            assert [r.target for r in app.requests] == [b"/good"]

    run(scenario())


def test_slow_header_client_gets_408_at_the_total_deadline(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--header-timeout", "0.5") as (app, proxy):
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            started = loop.time()
            writer.write(b"GET / HTTP/1.1\r\n")
            reply = b""
            # Trickle a byte every 0.1 s: a per-byte timer would never fire.
            while not reply:
                writer.write(b"X")
                try:
                    reply = await asyncio.wait_for(reader.read(100), 0.1)
                except TimeoutError:
                    assert loop.time() - started < 3, "no 408 within the header timeout"
            assert reply.startswith(b"HTTP/1.1 408 ")
            assert 0.4 <= loop.time() - started < 2
            assert app.requests == []
            writer.close()

    run(scenario())


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--idle-timeout", "0.3") as (_app, proxy):
            client = await Client.open(proxy.port)
            assert (await client.request()).status == 200
            assert await client.is_closed_by_peer()
            await eventually(lambda: sample(proxy, "drain_proxy_connections_closed_total",
                                            {"reason": "idle_timeout"}) == 1)
            client.close()

    run(scenario())


def test_stalled_request_body_gets_408_and_the_app_never_sees_a_request(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--body-timeout", "0.3") as (app, proxy):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            reply = await asyncio.wait_for(reader.read(), 5)
            assert reply.startswith(b"HTTP/1.1 408 ")
            assert app.requests == []
            writer.close()

    run(scenario())


def test_a_client_that_half_closes_mid_body_gets_400_at_once(run: Run[None]) -> None:
    """The body can never be completed: answer now instead of at --body-timeout."""

    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 2)
            assert reply.startswith(b"HTTP/1.1 400 "), reply
            assert app.requests == [], "the app never sees a complete request"
            writer.close()

    run(scenario())
