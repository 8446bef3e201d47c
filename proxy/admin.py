"""The admin port: probes, metrics and the preStop drain endpoint, served with h11.

Traffic here is a handful of requests per second, so clarity beats speed: asyncio
streams and h11's strict state machine.

* ``GET /livez``   200 while the event loop turns (a wedged loop cannot answer).
* ``GET /readyz``  200 when serving and the app is reachable; 503 with a reason.
* ``GET /metrics`` Prometheus text format.
* ``GET|POST /drain`` start the drain like SIGTERM and answer when it is over,
  with a JSON summary; ``?wait=false`` answers 202 at once.  This is what the
  app container's ``preStop: httpGet`` calls, so that kubelet holds the app's
  SIGTERM until the proxy in front of it has drained.  The admin port is reachable
  from every pod in the cluster, and a drain takes the pod out of its Service: with
  ``--drain-token`` set, ``/drain`` without ``Authorization: Bearer <token>`` gets 401
  and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.context import ProxyContext
from proxy.coordinator import DrainCoordinator
from proxy.http1.http_policy import Headers

log = logging.getLogger("drain_proxy.admin")
READ_TIMEOUT_S = 30.0  # an admin client that sends nothing for this long is dropped


@dataclass(frozen=True)
class Reply:
    """An admin answer; the reason phrase comes from the status."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, text: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, "text/plain", text.encode() + b"\n", headers)


class AdminApp:
    """Routes admin requests to their handlers."""

    def __init__(self, ctx: ProxyContext, coordinator: DrainCoordinator,
                 check_app: Callable[[], Awaitable[str | None]]) -> None:
        self._ctx = ctx
        self._coordinator = coordinator
        self._check_app = check_app
        token = ctx.settings.drain_token
        self._authorization = f"Bearer {token}".encode() if token else None

    async def route(self, method: bytes, target: bytes, headers: Headers) -> Reply:
        parts = urlsplit(target.decode("ascii", "replace"))
        allowed = {"/livez": (b"GET", b"HEAD"), "/readyz": (b"GET", b"HEAD"),
                   "/metrics": (b"GET", b"HEAD"), "/drain": (b"GET", b"POST")}
        if parts.path not in allowed:
            return _text(404, "not found; try /livez /readyz /metrics /drain")
        if method not in allowed[parts.path]:
            return _text(405, "method not allowed",
                         ("Allow", ", ".join(m.decode() for m in allowed[parts.path])))
        if parts.path == "/livez":
            return _text(200, "ok")
        if parts.path == "/readyz":
            return await self._readyz()
        if parts.path == "/metrics":
            return Reply(200, CONTENT_TYPE_LATEST, generate_latest(self._ctx.metrics.registry))
        if not self._authorized(headers):
            self._ctx.metrics.drain_refused.inc()
            log.warning("refused a /drain without the drain token; nothing changed")
            return _text(401, "unauthorized: /drain needs Authorization: Bearer <drain token>",
                         ("WWW-Authenticate", 'Bearer realm="drain-proxy"'))
        wait = parse_qs(parts.query).get("wait", ["true"])[-1].lower() not in ("false", "0")
        return await self._drain(wait)

    def _authorized(self, headers: Headers) -> bool:
        """Without --drain-token anyone may drain; with it, only who presents it."""
        if self._authorization is None:
            return True
        presented = b"".join(v for n, v in headers if n.lower() == b"authorization")
        return hmac.compare_digest(presented, self._authorization)

    async def _readyz(self) -> Reply:
        timeline = self._ctx.timeline
        if not timeline.ready:
            return _text(503, f"draining (phase {timeline.phase.value})")
        problem = await self._check_app()
        if problem is not None:
            return _text(503, problem)
        return _text(200, "ready")

    async def _drain(self, wait: bool) -> Reply:
        self._coordinator.trigger("admin /drain")
        if not wait:
            return Reply(202, "application/json", self._summary())
        await self._coordinator.wait_drained()
        return Reply(200, "application/json", self._summary())

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
        reply = await self._app.route(request.method, request.target, list(request.headers))
        headers = [("Content-Type", reply.content_type),
                   ("Content-Length", str(len(reply.body))), *reply.headers]
        writer.write(connection.send(h11.Response(
            status_code=reply.status, headers=headers, reason=HTTPStatus(reply.status).phrase)))
        if request.method != b"HEAD":
            writer.write(connection.send(h11.Data(data=reply.body)))
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
