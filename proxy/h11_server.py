"""A small HTTP/1.1 server on asyncio streams and h11: the admin port's and the webhook's.

Both see a handful of requests per second, so clarity beats speed: h11's strict state
machine, keep-alive, one request at a time per connection, a bounded body (413 past it),
400 for what h11 refuses, and a close that lets answers in hand finish without waiting
for keep-alive connections that are only idle.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11

READ_TIMEOUT_S = 30.0  # a client that sends nothing for this long is dropped
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Reply:
    """An answer; the reason phrase comes from the status."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def text(status: int, message: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, "text/plain", message.encode() + b"\n", headers)


Handler = Callable[[h11.Request, bytes], Awaitable[Reply]]


class TooLarge(Exception):
    """A request body over the server's limit."""


class H11Server:
    """Serves ``handler`` over HTTP/1.1 (over TLS with an ``ssl_context``)."""

    def __init__(self, handler: Handler, log: logging.Logger, max_body: int) -> None:
        self._handler = handler
        self._log = log
        self._max_body = max_body
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._answering: set[asyncio.Task[None]] = set()  # handlers with a request in hand

    async def start(self, host: str, port: int) -> int:
        """Listen; the port bound (``port`` 0: one the system chose)."""
        context = self.ssl_context()
        self._server = await asyncio.start_server(
            self._handle, host, port, ssl=context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if context is not None else None)
        return int(self._server.sockets[0].getsockname()[1])

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context to listen with; None: plain HTTP."""
        return None

    async def close(self, grace_s: float = 1.0) -> None:
        """Stop listening; give the answers in hand (a /drain summary) a moment."""
        if self._server is not None:
            self._server.close()
        if self._answering:
            await asyncio.wait(set(self._answering), timeout=grace_s)
        for writer in list(self._handlers.values()):
            writer.close()  # the handler's next read fails and it ends by itself
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace_s)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        connection = h11.Connection(h11.SERVER)
        try:
            while await self._serve_one(connection, reader, writer, task):
                connection.start_next_cycle()
        except (h11.ProtocolError, OSError, TimeoutError, ssl.SSLError) as error:
            self._log.debug("connection ended: %s", error)
        finally:
            self._handlers.pop(task, None)
            writer.close()

    async def _serve_one(self, connection: h11.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> bool:
        try:
            received = await _next_request(connection, reader, self._max_body)
        except h11.RemoteProtocolError as error:
            await _send(connection, writer, b"", text(400, f"bad request: {error}"))
            return False
        except TooLarge:
            await _send(connection, writer, b"",
                        text(413, f"request body over {self._max_body} bytes"))
            return False
        if received is None:
            return False
        request, body = received
        self._answering.add(task)
        try:
            await _send(connection, writer, request.method, await self._handler(request, body))
        finally:
            self._answering.discard(task)
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE


async def _next_request(connection: h11.Connection, reader: asyncio.StreamReader,
                        max_body: int) -> tuple[h11.Request, bytes] | None:
    """One whole request and its body, or None when the client left.  Raises ``TooLarge``."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(READ_TIMEOUT_S):
                connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
            length = dict(event.headers).get(b"content-length")
            if length is not None and int(length) > max_body:
                raise TooLarge
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise TooLarge
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send(connection: h11.Connection, writer: asyncio.StreamWriter, method: bytes,
                reply: Reply) -> None:
    headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))),
               *reply.headers]
    if reply.status >= 400 and connection.their_state is not h11.DONE:
        headers.append(("Connection", "close"))  # the rest of the request is not read
    writer.write(connection.send(h11.Response(
        status_code=reply.status, headers=headers, reason=HTTPStatus(reply.status).phrase)))
    if method != b"HEAD":
        writer.write(connection.send(h11.Data(data=reply.body)))
    writer.write(connection.send(h11.EndOfMessage()))
    await writer.drain()
