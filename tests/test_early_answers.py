"""Apps that answer before they have read the whole request body.

An app may answer an upload early (401, 413, a refused ``Expect: 100-continue``) and
keep its connection open.  That connection still owes the app the rest of the body,
so it must never carry another client's request: the app would read that request
as the end of the first one's body (request mixing across clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from conftest import Run
from helpers import CHILD_CWD, IO_TIMEOUT_S, child_env, raw_exchange, running_proxy, scripted_app

APPS = Path(__file__).resolve().parent / "apps"

UPLOAD_HEAD = (b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n"
               b"Cookie: secret=client-a\r\n\r\n")


class HeadRecorder:
    """A raw-socket app: answers 401 to uploads without reading their body, 200 otherwise,
    keeps every connection alive, and records the first line of each request it reads."""

    def __init__(self) -> None:
        self.request_lines: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            self.request_lines.append(head.split(b"\r\n", 1)[0])
            if b"content-length: 100000" in head.lower():
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()


def test_early_401_never_lets_the_next_client_inherit_the_connection(run: Run[None]) -> None:
    async def scenario() -> None:
        app = HeadRecorder()
        async with scripted_app(app.serve) as port, \
                running_proxy(f"127.0.0.1:{port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                await upload_then_another_client(reader, writer, proxy.port, app)
            finally:
                writer.close()

    run(scenario())


async def upload_then_another_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                     port: int, app: HeadRecorder) -> None:
    writer.write(UPLOAD_HEAD + b"x" * 1000)  # most of the body never comes
    async with asyncio.timeout(IO_TIMEOUT_S):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in head.lower()  # the body cannot be resynced

    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await raw_exchange(
        port, b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert loop.time() - started < 2  # answered at once, no stall
    assert app.request_lines == [b"POST /upload HTTP/1.1", b"GET /b HTTP/1.1"]


# -- the same early answer from real app servers ---------------------------------------------
@contextlib.asynccontextmanager
async def served_by(argv: Callable[[int], list[str]]) -> AsyncIterator[int]:
    """A real server in a subprocess on a listening socket we made (so its port is known at
    once); yields the port once the server answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    process = subprocess.Popen(argv(fd), pass_fds=(fd,), cwd=CHILD_CWD, env=child_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener.close()  # the server holds its own copy
    try:
        reply = await raw_exchange(port, b"GET /ready HTTP/1.1\r\nHost: a\r\n"
                                         b"Connection: close\r\n\r\n", timeout_s=20)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def gunicorn(fd: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "4",
            "--keep-alive", "5", "--bind", f"fd://{fd}", "--chdir", str(APPS),
            "early_answer_apps:wsgi"]


def uvicorn(fd: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--fd", str(fd), "--app-dir", str(APPS),
            "--log-level", "warning", "early_answer_apps:asgi"]


@contextlib.asynccontextmanager
async def aiohttp_app() -> AsyncIterator[int]:
    async def upload(_request: web.Request) -> web.Response:
        return web.Response(status=401)  # the body is never read

    async def describe(request: web.Request) -> web.Response:
        cookie = request.headers.get("Cookie", "-")
        return web.Response(body=f"{request.method} {request.path} cookie={cookie}".encode())

    application = web.Application()
    application.router.add_post("/upload", upload)
    application.router.add_route("*", "/{path:.*}", describe)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


SERVERS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[int]]] = {
    "gunicorn": lambda: served_by(gunicorn),
    "uvicorn": lambda: served_by(uvicorn),
    "aiohttp": aiohttp_app,
}


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_after_an_early_401_the_next_client_is_answered_as_itself(
        run: Run[None], server: str) -> None:
    async def scenario() -> None:
        async with SERVERS[server]() as port, running_proxy(f"127.0.0.1:{port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                writer.write(UPLOAD_HEAD + b"x" * 1000)  # most of the body never comes
                async with asyncio.timeout(IO_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 401 ")
                loop = asyncio.get_running_loop()
                for _ in range(3):  # whichever pooled connection each one gets
                    started = loop.time()
                    reply = await raw_exchange(
                        proxy.port, b"GET /whoami HTTP/1.1\r\nHost: a\r\nCookie: who=b\r\n"
                                    b"Connection: close\r\n\r\n")
                    assert reply.startswith(b"HTTP/1.1 200 "), reply
                    assert reply.endswith(b"GET /whoami cookie=who=b"), reply
                    assert loop.time() - started < 2, "answered at once"
            finally:
                writer.close()

    run(scenario())
