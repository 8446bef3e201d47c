"""Forwarding over real loopback sockets: methods, framing, keep-alive, headers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import Run
from helpers import (
    App,
    Client,
    ParsedRequest,
    Reply,
    app_and_proxy,
    assert_parsers_agree,
    eventually,
    raw_exchange,
    running_proxy,
    sample,
    scripted_app,
)


def test_get_and_post_keep_alive_on_both_sides(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            client = await Client.open(proxy.port)
            for i in range(5):
                assert (await client.request("GET", f"/r{i}")).body == f"GET /r{i} 0".encode()
            response = await client.request("POST", "/submit", body=b"x" * 1000)
            assert response.status == 200 and response.body == b"POST /submit 1000"
            client.close()
            assert app.connections == 1, "the pooled upstream connection is reused"

    run(scenario())


def test_chunked_request_is_forwarded_chunked(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            raw = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                   b"Connection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
            reply = await raw_exchange(proxy.port, raw)
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"POST /c 11")
            assert app.requests[0].body == b"hello world"
            assert (b"transfer-encoding", b"chunked") in app.requests[0].headers

    run(scenario())


def test_hop_by_hop_removed_and_forwarded_headers_added(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            client = await Client.open(proxy.port)
            await client.request("GET", "/", headers=[
                ("Connection", "keep-alive, X-Private"), ("X-Private", "secret"),
                ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("X-Forwarded-For", "10.1.1.1"),
                ("X-Kept", "yes")])
            client.close()
            headers = dict(app.requests[0].headers)
            for dropped in (b"connection", b"x-private", b"keep-alive", b"te"):
                assert dropped not in headers
            assert headers[b"x-kept"] == b"yes"
            assert headers[b"x-forwarded-for"] == b"10.1.1.1, 127.0.0.1"
            assert headers[b"x-forwarded-proto"] == b"http"
            assert headers[b"x-forwarded-host"] == b"test.local"

    run(scenario())


def test_absolute_form_target_is_forwarded_in_origin_form(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            raw = (b"GET http://example.com:81/p?q=1 HTTP/1.1\r\nHost: other\r\n"
                   b"Connection: close\r\n\r\n")
            reply = await raw_exchange(proxy.port, raw)
            assert reply.endswith(b"GET /p?q=1 0")
            assert dict(app.requests[0].headers)[b"host"] == b"example.com:81"

    run(scenario())


def test_absolute_form_options_without_a_path_is_forwarded_as_asterisk(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            raw = (b"OPTIONS http://example.com:81 HTTP/1.1\r\nHost: other\r\n"
                   b"Connection: close\r\n\r\n")
            reply = await raw_exchange(proxy.port, raw)
            assert reply.startswith(b"HTTP/1.1 200 "), reply
            assert app.requests[0].target == b"*"
            assert dict(app.requests[0].headers)[b"host"] == b"example.com:81"

    run(scenario())


async def _head_or_status(request: ParsedRequest) -> Reply:
    if request.target == b"/204":
        return 204, [], b""
    if request.target == b"/304":
        return 304, [("ETag", '"x"')], b""
    return 200, [("Content-Length", "11")], b"hello world"


def test_head_204_304_have_no_body_and_keep_the_connection(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy(handler=_head_or_status) as (_app, proxy):
            client = await Client.open(proxy.port)
            head = await client.request("HEAD", "/")
            assert head.status == 200 and head.body == b""
            assert head.header("content-length") == b"11"
            assert (await client.request("GET", "/204")).status == 204
            not_modified = await client.request("GET", "/304")
            assert not_modified.status == 304 and not_modified.body == b""
            assert (await client.request("GET", "/")).body == b"hello world"
            client.close()

    run(scenario())


def test_expect_100_continue_is_relayed(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 ")
            writer.write(b"data")
            final = await asyncio.wait_for(reader.readuntil(b"PUT /up 4"), 5)
            assert final.startswith(b"HTTP/1.1 200 ")
            writer.close()

    run(scenario())


def test_pipelined_requests_are_answered_in_order(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            raw = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3))
            raw += b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            reply = await raw_exchange(proxy.port, raw)
            bodies = [b"GET /0 0", b"GET /1 0", b"GET /2 0", b"GET /last 0"]
            positions = [reply.index(body) for body in bodies]
            assert positions == sorted(positions)

    run(scenario())


def test_http10_client_gets_close_delimited_or_keep_alive(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            reply = await raw_exchange(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"GET /old 0")
            assert dict(app.requests[0].headers)[b"host"] == f"127.0.0.1:{app.port}".encode()

    run(scenario())


async def _close_delimited_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    await writer.drain()
    writer.close()


def test_close_delimited_response_is_chunked_for_http11(run: Run[None]) -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_close_delimited_app, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with running_proxy(f"127.0.0.1:{port}") as proxy:
            client = await Client.open(proxy.port)
            response = await client.request("GET", "/")
            assert response.body == b"until the end"
            assert response.header("transfer-encoding") == b"chunked"
            client.close()
            old = await raw_exchange(proxy.port, b"GET / HTTP/1.0\r\n\r\n")
            assert old.endswith(b"\r\n\r\nuntil the end") and b"chunked" not in old
        server.close()

    run(scenario())


def test_app_sees_one_canonical_request_per_client_request(run: Run[None]) -> None:
    async def scenario() -> None:
        app = await App().start()
        from helpers import running_proxy

        async with running_proxy(f"127.0.0.1:{app.port}") as proxy:
            raw = (b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\nabc"
                   b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            await raw_exchange(proxy.port, raw)
        await app.stop()
        app.check_parsers_agree()
        assert [(r.method, r.target, r.body) for r in app.requests] == [
            (b"POST", b"/a", b"abc"), (b"GET", b"/b", b"")]
        assert dict(app.requests[0].headers)[b"content-length"] == b"3"

    run(scenario())


def test_max_connections_queues_new_connections_until_one_closes(run: Run[None]) -> None:
    """None of the connections holding the slots is idle (they have not asked yet): the
    new one waits."""

    async def scenario() -> None:
        async with app_and_proxy("--max-connections", "2") as (_app, proxy):
            first, second = await Client.open(proxy.port), await Client.open(proxy.port)
            await eventually(lambda: len(proxy.ctx.connections) == 2)
            waiting = await Client.open(proxy.port)  # completes in the kernel backlog
            queued = asyncio.get_running_loop().create_task(waiting.request("GET", "/queued"))
            done, _ = await asyncio.wait({queued}, timeout=0.3)
            assert not done, "served beyond --max-connections"
            admin = await Client.open(proxy.admin_port)
            assert (await admin.request("GET", "/readyz")).status == 200, "no flapping"
            admin.close()
            first.close()
            assert (await queued).body == b"GET /queued 0"
            second.close()
            waiting.close()

    run(scenario())


def test_at_max_connections_the_least_recently_used_idle_connection_makes_room(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    """Idle keep-alive connections used to keep their slots while a new client waited
    for --idle-timeout; as nginx does, the oldest idle one is closed to make room."""

    async def scenario() -> None:
        async with app_and_proxy("--max-connections", "3") as (_app, proxy):
            pool = [await Client.open(proxy.port) for _ in range(3)]
            for index in (0, 1, 2, 1):  # 0 is now the least recently used
                assert (await pool[index].request()).status == 200
            newcomer = await Client.open(proxy.port)
            response = await newcomer.request("GET", "/new")
            assert response.body == b"GET /new 0"
            assert await pool[0].is_closed_by_peer()
            assert sample(proxy, "drain_proxy_connections_closed_total",
                          {"reason": "max_connections"}) == 1
            for client in pool[1:]:
                assert (await client.request()).status == 200, "only one was closed"
            warnings = [r for r in caplog.records if r.name == "drain_proxy.capacity"]
            assert len(warnings) == 1 and "--max-connections 3" in warnings[0].getMessage()
            for client in (*pool, newcomer):
                client.close()

    run(scenario())


def test_unix_socket_upstream(run: Run[None], tmp_path: Path) -> None:
    async def scenario() -> None:
        path = str(tmp_path / "app.sock")
        app = await App().start_unix(path)
        from helpers import running_proxy

        async with running_proxy(f"unix:{path}") as proxy:
            client = await Client.open(proxy.port)
            assert (await client.request("GET", "/via-unix")).body == b"GET /via-unix 0"
            client.close()
        await app.stop()
        app.check_parsers_agree()

    run(scenario())


def test_request_trailers_are_forwarded_without_the_fields_they_may_not_carry(
        run: Run[None]) -> None:
    """RFC 9112 7.1.2 allows trailers on a chunked request: forward them, never refuse."""

    async def scenario() -> None:
        received = bytearray()

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.extend(await reader.readuntil(b"0\r\n"))
            received.extend(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

        async with scripted_app(record) as port, running_proxy(f"127.0.0.1:{port}") as proxy:
            reply = await raw_exchange(proxy.port, (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n"
                b"Authorization: Bearer sneaked-in\r\n\r\n"))
            assert reply.startswith(b"HTTP/1.1 200 ")
        assert received.endswith(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")
        [request] = assert_parsers_agree(bytes(received))
        assert request.body == b"hello" and request.trailers == [(b"x-checksum", b"abc")]

    run(scenario())


def test_response_trailers_reach_a_chunked_client(run: Run[None]) -> None:
    async def scenario() -> None:
        async def trailers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Trailer: Server-Timing\r\n\r\n2\r\nok\r\n"
                         b"0\r\nServer-Timing: app;dur=12\r\nSet-Cookie: late=1\r\n\r\n")
            await writer.drain()

        async with scripted_app(trailers) as port, running_proxy(f"127.0.0.1:{port}") as proxy:
            reply = await raw_exchange(
                proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert reply.endswith(b"2\r\nok\r\n0\r\nServer-Timing: app;dur=12\r\n\r\n"), reply

    run(scenario())


def test_request_durations_have_sub_millisecond_resolution(run: Run[None]) -> None:
    """uvloop's clock counts whole milliseconds; durations measured with it would make the
    0.5 ms and 1 ms histogram buckets meaningless."""

    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            client = await Client.open(proxy.port)
            for _ in range(20):
                assert (await client.request()).status == 200
            client.close()
            total_ms = sample(proxy, "drain_proxy_request_duration_seconds_sum") * 1000
            assert abs(total_ms - round(total_ms)) > 1e-6, "whole milliseconds only"

    run(scenario())


def test_at_max_connections_a_connection_going_idle_makes_room_for_a_waiting_client(
        run: Run[None]) -> None:
    """No connection was idle when the client came: the first to go idle makes room."""
    release = asyncio.Event()

    async def hold(request: ParsedRequest) -> Reply:
        if request.target == b"/hold":
            await release.wait()
        return 200, [], request.target

    async def scenario() -> None:
        async with app_and_proxy("--max-connections", "1", handler=hold) as (_app, proxy):
            loop = asyncio.get_running_loop()
            holder = await Client.open(proxy.port)
            held = loop.create_task(holder.request("GET", "/hold"))
            await eventually(lambda: sample(proxy, "drain_proxy_requests_in_flight") == 1)
            waiting = await Client.open(proxy.port)  # in the backlog: the one slot is busy
            queued = loop.create_task(waiting.request("GET", "/queued"))
            done, _ = await asyncio.wait({queued}, timeout=0.3)
            assert not done, "served beyond --max-connections"
            release.set()
            assert (await held).body == b"/hold"
            assert (await queued).body == b"/queued"
            assert await holder.is_closed_by_peer(), "the idle holder made room"
            for client in (holder, waiting):
                client.close()

    run(scenario())
