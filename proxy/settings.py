"""One frozen, typed settings object, built once from flags and environment.

Every flag also reads ``DRAIN_PROXY_<FLAG_IN_UPPER_SNAKE>``; a flag beats its
environment variable.  A bad value stops start-up with one line that names the
flag, the value and what is allowed (exit code 2), because a sidecar that starts
with a silently-ignored typo only shows the mistake during the next rollout.

The flag table below is the single source of truth: the parser, the environment
lookup and the README's configuration table (checked by a test) all follow it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

ENV_PREFIX = "DRAIN_PROXY_"


class SettingsError(Exception):
    """A flag or environment variable has a value we cannot accept."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where to listen or connect: a TCP host and port, or a unix socket path."""

    host: str = ""
    port: int = 0
    unix_path: str | None = None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def parse_host_port(text: str) -> Address:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 lets the OS pick one."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not _is_decimal(port_text) or int(port_text) > 65535:
        raise ValueError("allowed: HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Address(host=host, port=int(port_text))


def parse_upstream(text: str) -> Address:
    """Parse ``HOST:PORT`` or ``unix:/path/to/socket``."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError("allowed: HOST:PORT or unix:/absolute/path")
        return Address(unix_path=path)
    try:
        return parse_host_port(text)
    except ValueError:
        raise ValueError("allowed: HOST:PORT or unix:/absolute/path") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("allowed: a number of seconds >= 0") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("allowed: a number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise ValueError("allowed: a number of seconds > 0")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _is_decimal(text.strip()) or int(text) < minimum:
            raise ValueError(f"allowed: a whole number >= {minimum}")
        return int(text)

    return parse


def _optional_seconds(text: str) -> float | None:
    if text == "":
        return None
    try:
        return _seconds(text)
    except ValueError:
        raise ValueError("allowed: a number of seconds >= 0, or empty to unset") from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("allowed: a number from 0 to 0.5") from None
    if not 0 <= value <= 0.5:
        raise ValueError("allowed: a number from 0 to 0.5")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError("allowed: " + ", ".join(allowed))
        return text

    return parse


def _path(text: str) -> str | None:
    if text == "":
        return None
    if not text.startswith("/") or any(c in text for c in " \r\n\t"):
        raise ValueError("allowed: an absolute path such as /healthz, or empty to unset")
    return text


# The addresses in-cluster proxies (ingress controllers, meshes) connect from: pod and
# node networks are private (RFC 1918, RFC 6598 shared space, IPv6 ULA), plus loopback.
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                    "127.0.0.0/8", "::1/128", "fc00::/7", "fe80::/10")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(text: str) -> tuple[Network, ...]:
    words = [word.strip() for word in text.split(",")]
    if words == ["none"]:
        return ()
    if words == ["private"]:
        words = list(PRIVATE_NETWORKS)
    try:
        return tuple(ipaddress.ip_network(word, strict=False) for word in words)
    except ValueError:
        raise ValueError("allowed: CIDR[,CIDR...] such as 10.0.0.0/8,fd00::/8, or private, "
                         "or none") from None


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("allowed: true or false")


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its parser, default, and the reason for that default."""

    name: str
    parse: Callable[[str], Any]
    default: str
    metavar: str
    why: str
    is_switch: bool = False

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.dest.upper()


FLAGS: tuple[Flag, ...] = (
    Flag("--listen", parse_host_port, "0.0.0.0:8000", "HOST:PORT",
         "the Service's targetPort points here"),
    Flag("--upstream", parse_upstream, "127.0.0.1:8080", "HOST:PORT|unix:PATH",
         "the app in the same pod, on localhost"),
    Flag("--admin", parse_host_port, "0.0.0.0:9901", "HOST:PORT",
         "probes and Prometheus must reach it from the node"),
    Flag("--mode", _choice("http", "tcp"), "http", "http|tcp",
         "http: HTTP/1.1 with rotation and Upgrade tunnels; tcp: a byte relay (gRPC, Redis, ...)"),
    Flag("--loop", _choice("auto", "uvloop", "asyncio"), "auto", "auto|uvloop|asyncio",
         "uvloop is faster when it is installed"),
    Flag("--idle-timeout", _positive_seconds, "75", "S",
         "longer than common client and load-balancer idle timeouts (60 s)"),
    Flag("--header-timeout", _positive_seconds, "10", "S",
         "total time for a request head; stops slow-header clients (408)"),
    Flag("--body-timeout", _positive_seconds, "60", "S",
         "longest pause in a request body upload or in a client reading its response"),
    Flag("--upstream-connect-timeout", _positive_seconds, "2", "S",
         "the app is on localhost: a slow connect means it is overloaded (504)"),
    Flag("--upstream-timeout", _positive_seconds, "60", "S",
         "wait for the app's response head, and between reads of its body, like nginx's "
         "proxy_read_timeout (504, or a reset once the response has begun)"),
    Flag("--upstream-idle-timeout", _positive_seconds, "2", "S",
         "below app keep-alive defaults (gunicorn 2 s, uvicorn 5 s) to avoid reuse races"),
    Flag("--max-header-bytes", _count(1024), "65536", "N",
         "generous for cookies yet bounded (431); also 100 headers, 8 KiB request line (414)"),
    Flag("--max-connections", _count(1), "10000", "N",
         "bounds memory; beyond it new connections wait in the kernel backlog"),
    Flag("--readiness-path", _path, "", "PATH",
         "unset: a TCP connect to the app; set: GET PATH on the app must be 2xx"),
    Flag("--propagation-window", _seconds, "10", "S",
         "time for endpoints removal to reach kube-proxy and load balancers"),
    Flag("--drain-timeout", _seconds, "15", "S",
         "longest in-flight request we wait for after the window"),
    Flag("--termination-grace-period", _positive_seconds, "30", "S",
         "match the pod's terminationGracePeriodSeconds (Kubernetes default 30)"),
    Flag("--max-requests-per-connection", _count(0), "1000", "N",
         "like nginx keepalive_requests: rebalances keep-alive clients (0 = off)"),
    Flag("--max-connection-age", _seconds, "0", "S",
         "optional age limit for keep-alive connections (0 = off)"),
    Flag("--tcp-rotate-idle", _seconds, "0", "S",
         "tcp mode: close a connection past --max-connection-age once idle this long (0 = off)"),
    Flag("--tunnel-drain-timeout", _optional_seconds, "", "S",
         "how long TCP connections and Upgrade tunnels may run on in the drain (unset: "
         "the drain timeout)"),
    Flag("--rotation-jitter", _fraction, "0.1", "F",
         "spread rotations so connections opened together do not close together"),
    Flag("--readiness-on-drain", _choice("fail", "keep"), "fail", "fail|keep",
         "fail: leave the Service endpoints at once when the drain starts"),
    Flag("--trusted-proxies", _networks, "private", "CIDR[,CIDR...]|private|none",
         "an in-cluster ingress connects from a private address and its X-Forwarded-* are "
         "kept; anyone else's are replaced (see Header trust)"),
    Flag("--allow-underscores-in-headers", _boolean, "false", "",
         "like nginx: X_Forwarded_For would alias X-Forwarded-For in WSGI/CGI apps",
         is_switch=True),
    Flag("--log-level", _choice("debug", "info", "warning", "error"), "info",
         "debug|info|warning|error", "phase changes and errors, not every request"),
    Flag("--log-format", _choice("text", "json"), "text", "text|json",
         "json for log pipelines that parse fields"),
    Flag("--access-log", _boolean, "false", "", "one line per request costs CPU; opt in",
         is_switch=True),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy needs to know, with units in the names."""

    listen: Address
    upstream: Address
    admin: Address
    mode: str
    loop: str
    idle_timeout_s: float
    header_timeout_s: float
    body_timeout_s: float
    upstream_connect_timeout_s: float
    upstream_timeout_s: float
    upstream_idle_timeout_s: float
    max_header_bytes: int
    max_connections: int
    readiness_path: str | None
    propagation_window_s: float
    drain_timeout_s: float
    termination_grace_period_s: float
    max_requests_per_connection: int
    max_connection_age_s: float
    tcp_rotate_idle_s: float
    tunnel_drain_timeout: float | None
    rotation_jitter: float
    readiness_on_drain: str
    log_level: str
    log_format: str
    access_log: bool
    trusted_proxies: tuple[Network, ...]
    allow_underscores_in_headers: bool
    max_header_count: int = 100  # nginx and h11 land near here; more is abuse
    max_request_line_bytes: int = 8192  # nginx's large_client_header_buffers line size

    @property
    def tunnel_drain_timeout_s(self) -> float:
        """How long tunnels may run on after the window (default: the drain timeout)."""
        if self.tunnel_drain_timeout is None:
            return self.drain_timeout_s
        return self.tunnel_drain_timeout

    @property
    def drain_budget_s(self) -> float:
        """Worst-case time from SIGTERM to exit, with a margin for the final steps."""
        longest = max(self.drain_timeout_s, self.tunnel_drain_timeout_s)
        return self.propagation_window_s + longest + 2.0


_FIELD_FOR_FLAG = {
    "--idle-timeout": "idle_timeout_s",
    "--header-timeout": "header_timeout_s",
    "--body-timeout": "body_timeout_s",
    "--upstream-connect-timeout": "upstream_connect_timeout_s",
    "--upstream-timeout": "upstream_timeout_s",
    "--upstream-idle-timeout": "upstream_idle_timeout_s",
    "--propagation-window": "propagation_window_s",
    "--drain-timeout": "drain_timeout_s",
    "--termination-grace-period": "termination_grace_period_s",
    "--max-connection-age": "max_connection_age_s",
    "--tcp-rotate-idle": "tcp_rotate_idle_s",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; values stay raw strings until ``_convert``."""
    parser = _OneLineParser(
        prog="drain-proxy",
        allow_abbrev=False,  # "--idle 5" must not silently mean --idle-timeout
        description="Reverse-proxy sidecar that drains connections for zero-loss rollouts. "
        "Every flag also reads DRAIN_PROXY_<FLAG_IN_UPPER_SNAKE>.",
        epilog="`drain-proxy demo` runs a simulated rollout (naive app vs drain-proxy) in "
        "about 10 s on 127.0.0.1; `drain-proxy demo --help` lists its options.",
    )
    for flag in FLAGS:
        help_text = f"{flag.why} (default {flag.default or 'unset'}; env {flag.env_var})"
        if flag.is_switch:
            parser.add_argument(flag.name, action="store_const", const="true", help=help_text)
        else:
            parser.add_argument(flag.name, metavar=flag.metavar, help=help_text)
    return parser


def _raw_value(flag: Flag, cli_value: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """Pick flag over env var over default, and say where the value came from."""
    if cli_value is not None:
        return cli_value, flag.name
    if flag.env_var in environ:
        return environ[flag.env_var], flag.env_var
    return flag.default, flag.name


# What kubelet injects for a Service named drain-proxy[-...] in the namespace
# (DRAIN_PROXY_SERVICE_HOST, DRAIN_PROXY_PORT_8000_TCP_ADDR, ...): not settings.
_SERVICE_LINK = re.compile(
    r"^[A-Z0-9_]*_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_\d+_(TCP|UDP|SCTP)"
    r"(_PROTO|_PORT|_ADDR)?)$")


# Read by setup.py when installing (the mypyc build) and by the test suite (which build
# it must run), not at run time.
BUILD_ENV_VARS = frozenset({
    "DRAIN_PROXY_NO_EXTENSIONS", "DRAIN_PROXY_REQUIRE_EXTENSIONS", "DRAIN_PROXY_TEST_BUILD",
})


def _check_unknown_env(environ: Mapping[str, str]) -> None:
    known = {flag.env_var for flag in FLAGS}
    for key in environ:
        if key.startswith(ENV_PREFIX) and key not in known | BUILD_ENV_VARS \
                and not _SERVICE_LINK.match(key):
            raise SettingsError(f"{key}: unknown setting; allowed: {', '.join(sorted(known))}")


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from argv and the environment, or raise SettingsError."""
    env = os.environ if environ is None else environ
    _check_unknown_env(env)
    namespace = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    for flag in FLAGS:
        raw, source = _raw_value(flag, getattr(namespace, flag.dest), env)
        try:
            value = flag.parse(raw)
        except ValueError as error:
            raise SettingsError(f"{source}: invalid value {raw!r}; {error}") from None
        values[_FIELD_FOR_FLAG.get(flag.name, flag.dest)] = value
    settings = Settings(**values)
    _check_not_forwarding_to_itself(settings)
    return settings


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|::1|localhost)$")


def _check_not_forwarding_to_itself(settings: Settings) -> None:
    """``--upstream`` on the proxy's own port would forward every request to itself until
    memory runs out.  Caught when the hosts name one address, or the listener takes every
    local address and the upstream is local; a host that resolves to us under another
    name cannot be told here."""
    listen, upstream = settings.listen, settings.upstream
    if upstream.unix_path is not None or listen.port == 0 or listen.port != upstream.port:
        return
    same_host = listen.host.lower() == upstream.host.lower()
    local = bool(_LOOPBACK.match(upstream.host.lower())) or upstream.host in _WILDCARDS
    if same_host or (listen.host in _WILDCARDS and local):
        raise SettingsError(
            f"--upstream {upstream}: that is drain-proxy's own --listen {listen}; "
            f"allowed: the app's address, on another port or host")
