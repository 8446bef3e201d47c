"""``drain-proxy webhook``: the mutating admission webhook, over TLS, served with h11.

* ``POST /mutate``            a pod annotated ``drain-proxy/inject: enabled`` is injected.
* ``POST /mutate/namespace``  the entry for namespaces labelled ``drain-proxy/inject:
  enabled``: every pod is injected unless annotated ``drain-proxy/inject: disabled``.
  (A webhook path takes no query string, so the entry says which rule it is by its path.)
* ``GET /healthz``            200 while the event loop turns (liveness).
* ``GET /readyz``             200, then 503 from SIGTERM on (readiness).
* ``GET /metrics``            Prometheus text: ``drain_proxy_webhook_admissions_total{result}``.

The API server sends a few requests per second at most: asyncio streams and h11's strict
state machine, as on the proxy's admin port, are plenty.  The certificate files are checked
on every new connection and read again when they changed (cert-manager renews them in the
mounted Secret), so a renewal needs no restart; a pair that does not load (a renewal seen
half-written) keeps the previous one in use until the next connection looks again.  The
check runs in the listening context's SNI callback, which OpenSSL calls on every handshake
(with or without a server name) and which may swap the connection's context: it works the
same on asyncio and uvloop, where upgrading an accepted stream with ``start_tls`` does not.

On SIGTERM it does what drain-proxy does for an app: readiness fails at once, and it goes on
answering for ``--shutdown-delay`` while the endpoints stop sending here.  A webhook that
stopped at once would have the API server's calls in that window refused, and with
``failurePolicy: Ignore`` those pods would start without the sidecar, unnoticed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import h11
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from proxy.adopt.admission import BadReview, Mutator, Result, decide
from proxy.adopt.pod_injection import pod_mutator
from proxy.adopt.wiring import Options
from proxy.h11_server import H11Server, Reply, text
from proxy.settings import PLACEHOLDER_TOKEN_PREFIX

log = logging.getLogger("drain_proxy.webhook")
MAX_BODY = 3 * 1024 * 1024  # the API server's own limit on a request body
# After SIGTERM: long enough for the endpoints to stop sending here (kube-proxy, the API
# server's own endpoint watch), well within the default 30 s grace period.
SHUTDOWN_DELAY_S = 5.0
MUTATE_PATHS = {"/mutate": False, "/mutate/namespace": True}  # path -> namespace_enabled




class CertificateError(Exception):
    """The certificate and key cannot be loaded: one line."""


class CertificateFiles:
    """The server's TLS context, loaded again when its files change (inode, size, mtime)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = cert, key
        self._stamp: tuple[tuple[int, ...], ...] | None = None
        self._refused: tuple[tuple[int, ...], ...] | None = None  # files that did not load
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """The context for a new connection.  Raises ``CertificateError`` only when no pair
        has loaded yet."""
        try:
            stamp = tuple(_stamp(path) for path in (self._cert, self._key))
        except OSError as error:
            return self._keep(f"cannot read {error.filename}: {error.strerror}")
        if self._context is not None and stamp in (self._stamp, self._refused):
            return self._context  # unchanged, or changed and refused already (said once)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self._cert, self._key)
        except (OSError, ssl.SSLError) as error:
            self._refused = stamp
            return self._keep(f"cannot load {self._cert} with {self._key}: {error}")
        if self._context is not None:
            log.info("certificate files changed: loaded them again")
        self._context, self._stamp = context, stamp
        return context

    def listening_context(self) -> ssl.SSLContext:
        """The context to listen with: each handshake gets the context of the moment."""
        context = self.context()

        def current(connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                    listening: ssl.SSLContext) -> None:
            connection.context = self.context()

        context.sni_callback = current
        return context

    def _keep(self, problem: str) -> ssl.SSLContext:
        if self._context is None:
            raise CertificateError(problem)
        log.warning("%s; keeping the certificate loaded before", problem)
        return self._context


def _stamp(path: Path) -> tuple[int, ...]:
    status = os.stat(path)  # follows the symlinks a mounted Secret swaps on renewal
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


class Metrics:
    """The webhook's own registry: admissions by what they came to."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter("drain_proxy_webhook_admissions",
                                  "AdmissionReview requests answered, by result.", ["result"],
                                  registry=self.registry)
        for result in Result:
            self.admissions.labels(result.value)


class WebhookApp:
    """Routes the webhook's requests to the admission decision, health and metrics."""

    def __init__(self, mutator: Mutator, metrics: Metrics) -> None:
        self._mutator = mutator
        self._metrics = metrics
        self.stopping = False  # SIGTERM came: not ready, still answering

    def route(self, method: bytes, target: bytes, body: bytes) -> Reply:
        path = urlsplit(target.decode("ascii", "replace")).path
        allowed = {"/healthz": (b"GET", b"HEAD"), "/readyz": (b"GET", b"HEAD"),
                   "/metrics": (b"GET", b"HEAD"),
                   **{mutate: (b"POST",) for mutate in MUTATE_PATHS}}
        if path not in allowed:
            return text(404, f"not found; try {' '.join(sorted(allowed))}")
        if method not in allowed[path]:
            return text(405, f"method not allowed; {path} takes "
                              f"{', '.join(m.decode() for m in allowed[path])}")
        if path == "/healthz":
            return text(200, "ok")
        if path == "/readyz":
            return text(503, "stopping") if self.stopping else text(200, "ready")
        if path == "/metrics":
            return Reply(200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry))
        try:
            decision = decide(body, self._mutator, namespace_enabled=MUTATE_PATHS[path])
        except BadReview as error:
            self._metrics.admissions.labels(Result.BAD_REQUEST.value).inc()
            log.warning("refused a request to %s: %s", path, error)
            return text(400, f"bad request: {error}")
        self._metrics.admissions.labels(decision.result.value).inc()
        return Reply(200, "application/json", json.dumps(decision.review).encode())


class WebhookServer(H11Server):
    """Serves ``WebhookApp`` over HTTP/1.1 and TLS, with the certificate files' current pair."""

    def __init__(self, app: WebhookApp, certificates: CertificateFiles) -> None:
        async def handle(request: h11.Request, body: bytes) -> Reply:
            return app.route(request.method, request.target, body)

        super().__init__(handle, log, MAX_BODY)
        self._certificates = certificates

    def ssl_context(self) -> ssl.SSLContext:
        return self._certificates.listening_context()


class UsageError(Exception):
    """A bad flag: one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with one-line errors: the caller prints them and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _listen(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="drain-proxy webhook", description="The injection webhook.")
    parser.add_argument("--listen", type=_listen, required=True, metavar="HOST:PORT")
    parser.add_argument("--tls-cert", type=Path, required=True, metavar="FILE")
    parser.add_argument("--tls-key", type=Path, required=True, metavar="FILE")
    parser.add_argument("--drain-token-file", type=Path, required=True, metavar="FILE",
                        help="the drain token the injected pods' preStop sends: the token of "
                             "the Secret drain-proxy-drain-token of their namespaces")
    parser.add_argument("--image", required=True,
                        help="the drain-proxy image the injected sidecars run")
    parser.add_argument("--layout", choices=("native", "classic"), default="native",
                        help="the sidecar as a native sidecar (initContainers, Kubernetes "
                             "1.29+) or a classic container (default: native)")
    parser.add_argument("--shutdown-delay", type=_seconds, default=SHUTDOWN_DELAY_S,
                        metavar="SECONDS",
                        help="after SIGTERM, keep answering this long with readiness failed "
                             f"(default {SHUTDOWN_DELAY_S:g})")
    return parser.parse_args(argv)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 300:
        raise argparse.ArgumentTypeError(f"{value!r}: allowed: seconds from 0 to 300")
    return seconds


async def serve(host: str, port: int, certificates: CertificateFiles, mutator: Mutator,
                shutdown_delay_s: float = SHUTDOWN_DELAY_S) -> None:
    """Serve until SIGTERM or SIGINT; then, not ready, for ``shutdown_delay_s`` more (a
    second signal cuts that short); then let requests in hand finish."""
    app = WebhookApp(mutator, Metrics())
    server = WebhookServer(app, certificates)
    bound = await server.start(host, port)
    log.info("drain-proxy webhook listening on %s:%d", host, bound)
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    await signals.get()
    app.stopping = True
    log.info("drain-proxy webhook stopping: not ready, answering for %g s more",
             shutdown_delay_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(signals.get(), shutdown_delay_s)
    await server.close()
    log.info("drain-proxy webhook stopped")


def main(argv: Sequence[str]) -> int:
    try:
        args = parse_args(argv)
        certificates = CertificateFiles(args.tls_cert, args.tls_key)
        certificates.context()
        token = read_token(args.drain_token_file)
    except (UsageError, CertificateError) as error:
        print(f"drain-proxy webhook: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, port = args.listen
    mutator = pod_mutator(Options(native=args.layout == "native", image=args.image,
                                  token=token), lambda note: log.info("%s", note))
    try:
        asyncio.run(serve(host, port, certificates, mutator, args.shutdown_delay))
    except OSError as error:
        print(f"drain-proxy webhook: error: cannot listen on {host}:{port}: {error.strerror}",
              file=sys.stderr)
        return 2
    return 0


def read_token(path: Path) -> str:
    """The drain token of the injected pods, or UsageError: one line."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--drain-token-file {path}: cannot read it: {error}") from None
    if not token:
        raise UsageError(f"--drain-token-file {path}: it is empty; allowed: a token of your "
                         f"own, e.g. from openssl rand -hex 32")
    if token.upper().startswith(PLACEHOLDER_TOKEN_PREFIX):
        raise UsageError(f"--drain-token-file {path}: the placeholder token of deploy/, with "
                         f"which the injected proxies would refuse to start; allowed: a token "
                         f"of your own, e.g. from openssl rand -hex 32")
    return token
