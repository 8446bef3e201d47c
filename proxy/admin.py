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
from urllib.parse import parse_qs, urlsplit

import h11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.context import ProxyContext
from proxy.coordinator import DrainCoordinator
from proxy.h11_server import H11Server, Reply, text
from proxy.http1.http_policy import Headers

log = logging.getLogger("drain_proxy.admin")
MAX_BODY_BYTES = 64 * 1024  # no admin route reads a body; a larger one gets 413


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
            return text(404, "not found; try /livez /readyz /metrics /drain")
        if method not in allowed[parts.path]:
            return text(405, "method not allowed",
                         ("Allow", ", ".join(m.decode() for m in allowed[parts.path])))
        if parts.path == "/livez":
            return text(200, "ok")
        if parts.path == "/readyz":
            return await self._readyz()
        if parts.path == "/metrics":
            return Reply(200, CONTENT_TYPE_LATEST, generate_latest(self._ctx.metrics.registry))
        if not self._authorized(headers):
            self._ctx.metrics.drain_refused.inc()
            log.warning("refused a /drain without the drain token; nothing changed")
            return text(401, "unauthorized: /drain needs Authorization: Bearer <drain token>",
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
            return text(503, f"draining (phase {timeline.phase.value})")
        problem = await self._check_app()
        if problem is not None:
            return text(503, problem)
        return text(200, "ready")

    async def _drain(self, wait: bool) -> Reply:
        self._coordinator.trigger("admin /drain")
        if not wait:
            return Reply(202, "application/json", self._summary())
        await self._coordinator.wait_drained()
        return Reply(200, "application/json", self._summary())

    def _summary(self) -> bytes:
        loop = asyncio.get_running_loop()
        return json.dumps(self._ctx.timeline.summary(loop.time())).encode() + b"\n"


class AdminServer(H11Server):
    """Serves ``AdminApp`` over HTTP/1.1 (bodies are not read: none of its routes takes one)."""

    def __init__(self, app: AdminApp) -> None:
        async def handle(request: h11.Request, body: bytes) -> Reply:
            return await app.route(request.method, request.target, list(request.headers))

        super().__init__(handle, log, MAX_BODY_BYTES)
