"""A faulty app: each fault gives 502/504 or a visible truncation in time, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct

import pytest

from conftest import Run
from helpers import (
    Client,
    Script,
    eventually,
    raw_exchange,
    raw_exchange_ending,
    running_proxy,
    sample,
    scripted_app,
)

GET = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request and never answers."""
    await reader.readuntil(b"\r\n\r\n")
    await reader.read()


def test_gateway_errors_give_the_client_a_generic_body_and_the_log_the_detail(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    """A 502 body read '[Errno 111] Connection refused': the proxy's internals, useless to the
    client.  The client gets the status's phrase; the detail goes to the warning log and to
    the access log line."""
    async def scenario() -> None:
        async with running_proxy(f"127.0.0.1:{closed_port()}", "--access-log") as proxy:
            reply = await raw_exchange(proxy.port, GET)
        assert reply.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert reply.partition(b"\r\n\r\n")[2] == b"Bad Gateway\n"
        async with scripted_app(_silent) as port, running_proxy(
                f"127.0.0.1:{port}", "--access-log", "--upstream-timeout", "0.2") as proxy:
            reply = await raw_exchange(proxy.port, GET)
        assert reply.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
        assert reply.partition(b"\r\n\r\n")[2] == b"Gateway Timeout\n"

    with caplog.at_level(logging.INFO):
        run(scenario())
    access = [r for r in caplog.records if r.name == "drain_proxy.access"]
    assert [r.fields["status"] for r in access] == [502, 504]  # type: ignore[attr-defined]
    assert "[Errno 111]" in access[0].fields["error"]  # type: ignore[attr-defined]
    assert access[1].fields["error"] == "the app did not answer in time"  # type: ignore[attr-defined]
    warned = [r.getMessage() for r in caplog.records if r.name == "drain_proxy.upstream"]
    assert any("[Errno 111]" in line for line in warned), warned


def test_refused_upstream_gives_502_quickly(run: Run[None]) -> None:
    async def scenario() -> None:
        async with running_proxy(f"127.0.0.1:{closed_port()}") as proxy:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await raw_exchange(proxy.port, GET)
            assert reply.startswith(b"HTTP/1.1 502 ") and loop.time() - started < 2
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "connect"}) == 1

    run(scenario())


async def _hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # never answers; ends when the proxy gives up


def test_app_that_never_answers_gives_504_at_upstream_timeout(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_hang) as port, running_proxy(
                f"127.0.0.1:{port}", "--upstream-timeout", "0.3") as proxy:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await raw_exchange(proxy.port, GET)
            assert reply.startswith(b"HTTP/1.1 504 ")
            assert 0.25 <= loop.time() - started < 2
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "timeout"}) == 1

    run(scenario())


async def _reset_before_response(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    await reader.read()


async def _te_and_cl(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n")
    await reader.read()


@pytest.mark.parametrize(("script", "reason"), [
    (_reset_before_response, "reset"), (_garbage, "protocol"), (_te_and_cl, "protocol")])
def test_broken_response_gives_502(run: Run[None], script: Script, reason: str) -> None:
    async def scenario() -> None:
        async with scripted_app(script) as port, running_proxy(f"127.0.0.1:{port}") as proxy:
            reply = await raw_exchange(proxy.port, GET)
            assert reply.startswith(b"HTTP/1.1 502 "), reply
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": reason}) == 1

    run(scenario())


async def _dies_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    await writer.drain()
    writer.transport.abort()


async def _dies_mid_chunked_body(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    writer.transport.abort()


@pytest.mark.parametrize("script", [_dies_mid_body, _dies_mid_chunked_body])
def test_app_dying_mid_response_is_a_visible_truncation(run: Run[None], script: Script) -> None:
    async def scenario() -> None:
        async with scripted_app(script) as port, running_proxy(f"127.0.0.1:{port}") as proxy:
            reply, reset = await raw_exchange_ending(proxy.port, GET)
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert not reply.endswith(b"0\r\n\r\n"), "no fake end of a chunked body"
            if b"Content-Length: 100" in reply:
                assert len(reply.split(b"\r\n\r\n", 1)[1]) < 100
            assert reset, "a truncated response ends with a reset, not a clean close"

    run(scenario())


async def _too_long_then_normal(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA-BYTES")
    await writer.drain()
    while await reader.read(65536):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_bytes_after_a_response_never_reach_the_next_client(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_too_long_then_normal) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            client = await Client.open(proxy.port)
            first = await client.request()
            second = await client.request()
            client.close()
            assert first.body == b"ok" and second.body == b"ok"

    run(scenario())


def _stale_after_first(counter: list[int]) -> Script:
    """Answers one request per connection, then closes when the next one arrives:
    the race of a pooled connection closed by the app just as it is reused."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counter.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    return script


@pytest.mark.parametrize(("method", "status"), [(b"GET", 200), (b"POST", 502)])
def test_stale_pooled_connection_is_retried_only_for_idempotent_requests(
        run: Run[None], method: bytes, status: int) -> None:
    async def scenario() -> None:
        connections: list[int] = []
        async with scripted_app(_stale_after_first(connections)) as port, running_proxy(
                f"127.0.0.1:{port}", "--upstream-idle-timeout", "30") as proxy:
            client = await Client.open(proxy.port)
            assert (await client.request()).status == 200
            response = await client.request(method.decode(), "/", body=b"")
            client.close()
            assert response.status == status
            retried = sample(proxy, "drain_proxy_upstream_retries_total")
            assert retried == (1 if status == 200 else 0)
            assert len(connections) == (2 if status == 200 else 1)

    run(scenario())


def test_readiness_flips_within_a_second_of_the_app_going_away(run: Run[None]) -> None:
    async def scenario() -> None:
        async def accept_and_close(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(accept_and_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with running_proxy(f"127.0.0.1:{port}") as proxy:
            admin = await Client.open(proxy.admin_port)
            assert (await admin.request("GET", "/readyz")).status == 200
            server.close()
            await server.wait_closed()
            loop = asyncio.get_running_loop()
            gone_at = loop.time()
            not_ready = await admin.request("GET", "/readyz")
            assert not_ready.status == 503 and b"not reachable" in not_ready.body
            assert loop.time() - gone_at < 2
            assert (await admin.request("GET", "/livez")).status == 200
            admin.close()

    run(scenario())


def test_requests_in_flight_returns_to_zero(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_dies_mid_body) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            _, reset = await raw_exchange_ending(proxy.port, GET)
            assert reset
            await eventually(lambda: proxy.ctx.requests_in_flight == 0)
            assert sample(proxy, "drain_proxy_requests_in_flight") == 0

    run(scenario())


async def _reads_head_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(3)  # the app stops reading the request body (the fault under test)


def test_app_that_stops_reading_a_large_body_gives_504(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_reads_head_only) as port, running_proxy(
                f"127.0.0.1:{port}", "--body-timeout", "0.3") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            size = 64 * 1024 * 1024
            writer.write(b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            sender = asyncio.get_running_loop().create_task(_send_forever(writer, size))
            reply = await asyncio.wait_for(reader.read(65536), 5)
            assert reply.startswith(b"HTTP/1.1 504 ")
            sender.cancel()
            writer.close()
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "timeout"}) == 1

    run(scenario())


async def _send_forever(writer: asyncio.StreamWriter, size: int) -> None:
    piece = b"b" * 65536
    with contextlib.suppress(ConnectionError):
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()


async def _streams_a_lot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    size = 64 * 1024 * 1024
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    piece = b"r" * 65536
    for _ in range(size // len(piece)):
        writer.write(piece)
        await writer.drain()


def test_client_that_stops_reading_is_dropped_after_body_timeout(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_streams_a_lot) as port, running_proxy(
                f"127.0.0.1:{port}", "--body-timeout", "0.3") as proxy:
            _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(GET)  # and never read the answer
            await eventually(lambda: sample(proxy, "drain_proxy_connections_closed_total",
                                            {"reason": "error"}) == 1)
            writer.close()

    run(scenario())


async def _closes_when_idle_100ms(reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> None:
    """Like an app server with a 100 ms keep-alive timeout: an idle connection is closed."""
    while True:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.1)
        except TimeoutError:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


def test_app_closing_idle_connections_every_100ms_costs_no_idempotent_request(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_closes_when_idle_100ms) as port, running_proxy(
                f"127.0.0.1:{port}", "--upstream-idle-timeout", "30") as proxy:
            rng = random.Random(7)
            statuses: list[int] = []

            async def client() -> None:
                connection = await Client.open(proxy.port)
                for _ in range(25):
                    statuses.append((await connection.request()).status)
                    await asyncio.sleep(rng.uniform(0.05, 0.15))  # idle around the app's limit
                connection.close()

            await asyncio.gather(*(client() for _ in range(8)))
            assert statuses == [200] * 200
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "reset"}) == 0

    run(scenario())


async def _bad_chunk_after_head(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
    await reader.read()


def test_invalid_chunking_from_the_app_gives_502_or_a_visible_truncation(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_bad_chunk_after_head) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            reply = await raw_exchange(proxy.port, GET)
            # Head and bad chunk arrive in one read: nothing was sent yet, so a clean 502.
            assert reply.startswith(b"HTTP/1.1 502 "), reply
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "protocol"}) == 1

    run(scenario())


async def _early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_1xx_sequences_are_relayed_and_unasked_100_is_not(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_early_hints) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            reply = await raw_exchange(proxy.port, GET)
            assert reply.count(b"HTTP/1.1 103 ") == 2 and b"HTTP/1.1 100 " not in reply
            assert reply.endswith(b"\r\n\r\nok")
            old = await raw_exchange(proxy.port, b"GET / HTTP/1.0\r\n\r\n")
            assert old.startswith(b"HTTP/1.1 200 "), "no 1xx for an HTTP/1.0 client"

    run(scenario())


async def _head_with_a_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while head := await reader.readuntil(b"\r\n\r\n"):
        # A broken app: a body after a response to HEAD would poison a reused connection.
        body = b"SMUGGLED RESPONSE" if head.startswith(b"HEAD") else b"ok"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_a_body_sent_after_a_head_response_never_reaches_the_next_request(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_head_with_a_body) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            client = await Client.open(proxy.port)
            assert (await client.request("HEAD", "/")).body == b""
            assert (await client.request("GET", "/")).body == b"ok"
            client.close()

    run(scenario())


def _answers_first_then_hangs(requests: list[bytes]) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()  # works on it forever; ends when the proxy gives up

    return script


def test_a_response_timeout_on_a_reused_connection_is_not_retried(run: Run[None]) -> None:
    """Only a pooled connection closed before any response byte is retried: after a
    timeout the app may be working on the request, and the client would wait twice."""

    async def scenario() -> None:
        requests: list[bytes] = []
        async with scripted_app(_answers_first_then_hangs(requests)) as port, running_proxy(
                f"127.0.0.1:{port}", "--upstream-timeout", "0.5",
                "--upstream-idle-timeout", "30") as proxy:
            client = await Client.open(proxy.port)
            assert (await client.request("GET", "/first")).status == 200
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert (await client.request("GET", "/second")).status == 504
            assert loop.time() - started < 0.95, "one --upstream-timeout, not two"
            assert [r.split(b" ")[1] for r in requests] == [b"/first", b"/second"]
            assert sample(proxy, "drain_proxy_upstream_retries_total") == 0
            client.close()

    run(scenario())


async def _reset_mid_close_delimited_body(reader: asyncio.StreamReader,
                                          writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial body")
    await writer.drain()
    await asyncio.sleep(0.05)  # the part reaches the proxy before the reset does
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST: the body is cut, not ended


def test_a_reset_in_a_close_delimited_body_is_a_truncation_not_an_end(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_reset_mid_close_delimited_body) as port, running_proxy(
                f"127.0.0.1:{port}") as proxy:
            request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            reply, reset = await raw_exchange_ending(proxy.port, request)
            assert reply.startswith(b"HTTP/1.1 200 ") and b"partial body" in reply
            assert not reply.endswith(b"0\r\n\r\n"), "no fake end of the chunked body"
            assert reset, "the client sees a reset, as the proxy did"
            assert sample(proxy, "drain_proxy_upstream_errors_total", {"reason": "reset"}) == 1

    run(scenario())
