"""The application container of a simulated pod: HTTP/1.1 GETs on 127.0.0.1, via h11.

Every request takes a small fixed service time (a timer, so a killed app can
drop it like a real process drops its work).  ``/slow`` is a slow download: the
head and half of the body go out at once, the rest ``slow_s`` later, so an app
that stops in between cuts a response its client has already started to read,
the one failure no client may retry.  Responses always carry Content-Length.

``kill`` is what happens to a process that exits without a graceful shutdown
(the naive app on SIGTERM, or any app once its preStop sleep is over): the
listening socket closes, so the kernel refuses new connections, and every
connection is dropped at once, whatever it was doing.

An ``asyncio.Protocol`` rather than streams: no task per connection, so killing
the app is synchronous and leaves nothing running behind it.
"""

from __future__ import annotations

import asyncio
from typing import cast

import h11

BODY = b"ok\n"
SLOW_HALF = b"x" * 1024


class App:
    """One app process: a listener and the connections it accepted."""

    def __init__(self, service_s: float, slow_s: float, body: bytes = BODY) -> None:
        self.service_s = service_s
        self.slow_s = slow_s
        self.body = body  # what ``/`` answers: a pod's name lets clients see who served them
        self._server: asyncio.Server | None = None
        self._connections: set[_AppConnection] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AppConnection(self), host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def kill(self) -> None:
        """Exit at once: refuse new connections, drop every open one mid-whatever."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.drop()

    def opened(self, connection: _AppConnection) -> None:
        self._connections.add(connection)

    def closed(self, connection: _AppConnection) -> None:
        self._connections.discard(connection)


class _AppConnection(asyncio.Protocol):
    """Answers one request at a time; never pipelines (nobody here sends that way)."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._h11 = h11.Connection(h11.SERVER)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None  # a response being produced
        self._target = b"/"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._app.opened(self)

    def data_received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        self._advance()

    def eof_received(self) -> bool:
        self._h11.receive_data(b"")
        self._advance()
        return self._timer is not None  # keep the write side for a response under way

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._transport = None
        self._app.closed(self)

    def drop(self) -> None:
        """The process is gone: abort without flushing, like the kernel does for it."""
        self._cancel()
        if self._transport is not None:
            self._transport.abort()

    def _advance(self) -> None:
        while self._timer is None and self._transport is not None:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                self._transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._target = event.target
            elif isinstance(event, h11.EndOfMessage):
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._app.service_s, self._respond)
            elif isinstance(event, h11.ConnectionClosed):
                self._transport.close()
                return

    def _respond(self) -> None:
        self._timer = None
        if self._target == b"/slow":
            self._send(h11.Response(status_code=200, headers=[
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(2 * len(SLOW_HALF)))]), h11.Data(data=SLOW_HALF))
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._app.slow_s, self._finish_slow)
            return
        self._send(h11.Response(status_code=200, headers=[
            ("Content-Type", "text/plain"), ("Content-Length", str(len(self._app.body)))]),
            h11.Data(data=self._app.body), h11.EndOfMessage())
        self._next_cycle()

    def _finish_slow(self) -> None:
        self._timer = None
        self._send(h11.Data(data=SLOW_HALF), h11.EndOfMessage())
        self._next_cycle()

    def _send(self, *events: h11.Event) -> None:
        if self._transport is not None:
            self._transport.write(b"".join(self._h11.send(event) or b"" for event in events))

    def _next_cycle(self) -> None:
        if self._transport is None:
            return
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._advance()
        else:  # the client asked to close (Connection: close), or went away
            self._transport.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
