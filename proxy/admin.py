"""The admin port: probes, metrics and the preStop drain endpoint, served with h11.

Traffic here is a handful of requests per second, so clarity beats speed: asyncio
streams and h11's strict state machine.

* ``GET /livez``   200 while the event loop turns (a wedged loop cannot answer).
* ``GET /readyz``  200 when serving and the app is reachable; 503 with a reason.
* ``GET /metrics`` Prometheus text format.
* ``GET|POST /drain`` start the drain like SIGTERM and answer when it is over,
  with a JSON summary; ``?wait=false`` answers 202 at once.  This is what the
  app container's ``preStop: httpGet`` calls, so that kubelet holds the app's
  SIGTERM until the proxy in front of it has drained.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.context import ProxyContext
from proxy.drain import DrainCoordinator

log = logging.getLogger("drain_proxy.admin")
READ_TIMEOUT_S = 30.0  # an admin client that sends nothing for this long is dropped
Reply = tuple[int, str, bytes]


class AdminApp:
    """Routes admin requests; each handler returns (status, content type, body)."""

    def __init__(self, ctx: ProxyContext, coordinator: DrainCoordinator,
                 check_app: Callable[[], Awaitable[str | None]]) -> None:
        self._ctx = ctx
        self._coordinator = coordinator
        self._check_app = check_app

    async def route(self, method: bytes, target: bytes) -> Reply:
        parts = urlsplit(target.decode("ascii", "replace"))
        allowed = {"/livez": (b"GET", b"HEAD"), "/readyz": (b"GET", b"HEAD"),
                   "/metrics": (b"GET", b"HEAD"), "/drain": (b"GET", b"POST")}
        if parts.path not in allowed:
            return 404, "text/plain", b"not found; try /livez /readyz /metrics /drain\n"
        if method not in allowed[parts.path]:
            return 405, "text/plain", b"method not allowed\n"
        if parts.path == "/livez":
            return 200, "text/plain", b"ok\n"
        if parts.path == "/readyz":
            return await self._readyz()
        if parts.path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._ctx.metrics.registry)
        wait = parse_qs(parts.query).get("wait", ["true"])[-1].lower() not in ("false", "0")
        return await self._drain(wait)

    async def _readyz(self) -> Reply:
        timeline = self._ctx.timeline
        if not timeline.ready:
            return 503, "text/plain", f"draining (phase {timeline.phase.value})\n".encode()
        problem = await self._check_app()
        if problem is not None:
            return 503, "text/plain", (problem + "\n").encode()
        return 200, "text/plain", b"ready\n"

    async def _drain(self, wait: bool) -> Reply:
        self._coordinator.trigger("admin /drain")
        if not wait:
            return 202, "application/json", self._summary()
        await self._coordinator.wait_drained()
        return 200, "application/json", self._summary()

    def _summary(self) -> bytes:
        loop = asyncio.get_running_loop()
        return json.dumps(self._ctx.timeline.summary(loop.time())).encode() + b"\n"


class AdminServer:
    """Serves ``AdminApp`` over HTTP/1.1 with h11, keep-alive included."""

    def __init__(self, app: AdminApp) -> None:
        self._app = app
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._answering: set[asyncio.Task[None]] = set()  # handlers with a request in hand

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace_s: float = 1.0) -> None:
        """Stop listening and give in-progress answers (a /drain summary) a moment."""
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
            while await self._serve_one(connection, reader, writer):
                connection.start_next_cycle()
        except (h11.ProtocolError, OSError, TimeoutError) as error:
            log.debug("admin connection ended: %s", error)
        finally:
            self._handlers.pop(task, None)
            writer.close()

    async def _serve_one(self, connection: h11.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bool:
        request = await _next_request(connection, reader)
        if request is None:
            return False
        task = asyncio.current_task()
        assert task is not None
        self._answering.add(task)
        try:
            return await self._answer(connection, request, writer)
        finally:
            self._answering.discard(task)

    async def _answer(self, connection: h11.Connection, request: h11.Request,
                      writer: asyncio.StreamWriter) -> bool:
        status, content_type, body = await self._app.route(request.method, request.target)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        writer.write(connection.send(h11.Response(status_code=status, headers=headers)))
        if request.method != b"HEAD":
            writer.write(connection.send(h11.Data(data=body)))
        writer.write(connection.send(h11.EndOfMessage()))
        await writer.drain()
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE


async def _next_request(connection: h11.Connection,
                        reader: asyncio.StreamReader) -> h11.Request | None:
    """Read one whole request (bodies are ignored), or None when the client left."""
    request: h11.Request | None = None
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(READ_TIMEOUT_S):
                connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
