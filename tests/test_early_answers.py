"""Apps that answer before they have read the whole request body.

An app may answer an upload early (401, 413, a refused ``Expect: 100-continue``) and
keep its connection open.  That connection still owes the app the rest of the body,
so it must never carry another client's request: the app would read that request
as the end of the first one's body (request mixing across clients).
"""

from __future__ import annotations

import asyncio

from conftest import Run
from helpers import IO_TIMEOUT_S, raw_exchange, running_proxy, scripted_app

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
    assert loop.time() - started < 1  # answered at once, no stall
    assert app.request_lines == [b"POST /upload HTTP/1.1", b"GET /b HTTP/1.1"]
