"""Edges of one HTTP/1.1 exchange that once lost, hung or cut a request.

Each test drives the proxy with a raw-socket client and a raw-socket app, so that the
exact bytes and their timing are the test's: a refusal that arrives after the request
went to the app, an app that answers an upload before reading all of it, a client's
EOF after our half-close, a client's FIN before the app's 101.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import sys
import termios
from collections.abc import Iterator

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


@contextlib.contextmanager
def connected_socket(local: tuple[str, int], remote: tuple[str, int]) -> Iterator[socket.socket]:
    """This process's TCP connection from ``local`` to ``remote`` (a duplicate descriptor),
    found through /proc: how a test reaches the proxy's end of a connection without
    reaching into its objects."""
    for name in os.listdir("/proc/self/fd"):
        try:
            probe = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket
        try:
            if probe.type == socket.SOCK_STREAM and probe.getsockname() == local \
                    and probe.getpeername() == remote:
                break
        except OSError:
            pass  # unbound, or listening
        probe.close()
    else:
        raise AssertionError(f"no connection from {local} to {remote}")
    with probe:
        yield probe


def queued_bytes(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int]:
    """Bytes the kernel holds for a connection of this process: (received and not read
    yet, sent and not acknowledged yet)."""
    with connected_socket(local, remote) as sock:
        unread = fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0")
        unsent = fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0")
    return int.from_bytes(unread, sys.byteorder), int.from_bytes(unsent, sys.byteorder)


def test_early_answer_while_the_apps_socket_is_full_leaves_the_connection_readable(
        run: Run[None]) -> None:
    """The app answers an upload (401) before reading its last bytes, then drains them:
    the client connection was paused because the app's socket was full, and that pause
    must go with the exchange.  The next request on the connection is answered.

    Deterministic: the kernel holds a few KiB between proxy and app (small buffers at
    both ends) and the app reads slowly.  The upload's last 60,000 bytes are sent once
    the proxy has read the rest, so they reach it in one read, which completes the
    request and fills the app's socket; the app answers as soon as the proxy has read
    everything, and only then drains the upload."""

    async def scenario() -> None:
        first_part, last_part = 100_000, 60_000
        whole_upload_read = asyncio.Event()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with connected_socket(writer.get_extra_info("peername"),
                                  writer.get_extra_info("sockname")) as proxy_to_app:
                proxy_to_app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await reader.readuntil(b"\r\n\r\n")
            read = 0
            while not whole_upload_read.is_set():
                read += len(await reader.readexactly(1024))
                await asyncio.sleep(0.001)
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            await reader.readexactly(first_part + last_part - read)  # then drain the upload
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

        app_socket = socket.socket()
        app_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        async with scripted_app(app, sock=app_socket) as port, \
                running_proxy(f"127.0.0.1:{port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            proxy_end = writer.get_extra_info("peername")
            client_end = writer.get_extra_info("sockname")

            def proxy_has_read_everything() -> bool:
                try:
                    unsent = queued_bytes(client_end, proxy_end)[1]
                    unread = queued_bytes(proxy_end, client_end)[0]
                except AssertionError:
                    return False  # not accepted yet
                return writer.transport.get_write_buffer_size() == 0 and unsent == unread == 0

            writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                         % (first_part + last_part) + b"x" * first_part)
            await eventually(proxy_has_read_everything)
            writer.write(b"y" * last_part)
            await eventually(proxy_has_read_everything)
            whole_upload_read.set()
            async with asyncio.timeout(IO_TIMEOUT_S):
                first = await reader.readuntil(b"\r\n\r\n")
            assert first.startswith(b"HTTP/1.1 401 "), first
            assert b"close" not in first.lower(), first  # the connection is kept
            writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            async with asyncio.timeout(IO_TIMEOUT_S):
                second = await reader.readuntil(b"ok")
            writer.close()
            assert second.startswith(b"HTTP/1.1 200 "), second
            assert proxy.ctx.requests_in_flight == 0

    run(scenario())


async def upload_answered_early_then_eof(proxy_port: int, status: bytes) -> None:
    """Start a 5 MB upload, read the early answer, give up (EOF), read to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n\r\n"
                 + b"x" * 65536)
    async with asyncio.timeout(IO_TIMEOUT_S):
        answer = await reader.readuntil(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    writer.write_eof()  # the client gives up on its upload
    with contextlib.suppress(ConnectionResetError):  # the body's rest, discarded
        await read_until_closed(reader)
    writer.close()


def test_the_clients_eof_after_an_early_answer_to_a_large_upload_is_quiet(
        run: Run[None]) -> None:
    """The app answers 413 before reading a large upload; the client reads it and closes.
    Its EOF, after our half-close, must not produce a second answer (a write after
    write_eof: a traceback), and the close is not counted as an error twice."""

    async def scenario() -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()

        async with scripted_app(app) as port, \
                running_proxy(f"127.0.0.1:{port}") as proxy:
            await upload_answered_early_then_eof(proxy.port, b"413")
            await eventually(lambda: len(proxy.ctx.connections) == 0)
            assert sample(proxy, "drain_proxy_connections_closed_total",
                          {"reason": "error"}) == 1  # the early answer, nothing more

    run(scenario())


def test_the_clients_eof_after_a_502_to_a_large_upload_is_quiet(run: Run[None]) -> None:
    """The same with the app down: 502 before the upload is read, then the client's EOF."""

    async def scenario() -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            dead_port = unused.getsockname()[1]  # nothing listens there once closed
        async with running_proxy(f"127.0.0.1:{dead_port}") as proxy:
            await upload_answered_early_then_eof(proxy.port, b"502")
            await eventually(lambda: len(proxy.ctx.connections) == 0)
            assert sample(proxy, "drain_proxy_connections_closed_total",
                          {"reason": "error"}) == 1

    run(scenario())


def test_a_client_fin_before_the_apps_101_reaches_the_app_through_the_tunnel(
        run: Run[None]) -> None:
    """The client sends an Upgrade request and its FIN at once (it has nothing more to
    say); the app switches protocols and then waits for the client's EOF, which must
    come through the tunnel."""

    async def scenario() -> None:
        eof_at_app = asyncio.Event()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.05)  # the client's FIN reaches the proxy first
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            await writer.drain()
            if await reader.read() == b"":
                eof_at_app.set()
            writer.write(b"bye")
            await writer.drain()

        async with scripted_app(app) as port, \
                running_proxy(f"127.0.0.1:{port}") as proxy:
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            writer.write_eof()
            async with asyncio.timeout(IO_TIMEOUT_S):
                await eof_at_app.wait()
            tail = await read_until_closed(reader)
            writer.close()
            assert tail.startswith(b"HTTP/1.1 101 ") and tail.endswith(b"bye"), tail

    run(scenario())
