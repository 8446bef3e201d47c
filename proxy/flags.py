"""The command-line vocabulary: every flag, how its value is parsed, and why its default.

The flag table is the single source of truth: the parser, the environment lookup
(``DRAIN_PROXY_<FLAG_IN_UPPER_SNAKE>``), ``--help`` and the README's configuration
table (checked by a test) all follow it.  Values are parsed by small functions that
raise ValueError with what is allowed; ``settings`` turns that into one line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

ENV_PREFIX = "DRAIN_PROXY_"


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


def _url_address(text: str) -> str | None:
    """The ``HOST:PORT`` inside a URL-like value (``http://127.0.0.1:8080/x`` gives
    ``127.0.0.1:8080``), or None for a value with neither a scheme nor a path.  Taken as is,
    such a value parses: ``http://127.0.0.1`` becomes the host, and every request fails."""
    _, scheme, rest = text.partition("://")
    if not scheme and "/" not in text:
        return None
    return (rest if scheme else text).split("/", 1)[0]


def parse_host_port(text: str) -> Address:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 lets the OS pick one."""
    meant = _url_address(text)
    if meant is not None:
        right = meant if _is_decimal(meant.rpartition(":")[2]) else f"{meant or 'HOST'}:PORT"
        raise ValueError(f"allowed: HOST:PORT, no scheme or path: use {right}")
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
        if _url_address(text) is not None:
            raise  # it shows the address that was meant
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


def _word(text: str) -> str:
    """The one rule for words (booleans, choices, keywords), from a flag or a variable alike:
    any case, spaces around ignored.  ``TCP`` and `` on `` mean what they say everywhere."""
    return text.strip().lower()


def _one_of(words: tuple[str, ...]) -> str:
    """What is accepted, every word of it: ``allowed: http or tcp (any case)``."""
    return f"allowed: {', '.join(words[:-1])} or {words[-1]} (any case)"


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = _word(text)
        if word not in allowed:
            raise ValueError(_one_of(allowed))
        return word

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
    words = [_word(word) for word in text.split(",")]
    if words == ["none"]:
        return ()
    if words == ["private"]:
        words = list(PRIVATE_NETWORKS)
    try:
        return tuple(ipaddress.ip_network(word, strict=False) for word in words)
    except ValueError:
        raise ValueError("allowed: CIDR[,CIDR...] such as 10.0.0.0/8,fd00::/8, or private, "
                         "or none") from None


def _optional_text(text: str) -> str | None:
    if any(c in text for c in " \r\n\t"):
        raise ValueError("allowed: a token without spaces, or empty to unset")
    return text or None


def _optional_absolute_path(text: str) -> str | None:
    if text and not text.startswith("/"):
        raise ValueError("allowed: an absolute path, or empty to unset")
    return text or None


_TRUE: Final = ("true", "yes", "on", "1")
_FALSE: Final = ("false", "no", "off", "0")


def _boolean(text: str) -> bool:
    word = _word(text)
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(_one_of(("true", "false", "yes", "no", "on", "off", "1", "0")))


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its parser, its default, what it does (``--help``), and why the
    default is what it is (the README's configuration table)."""

    name: str
    parse: Callable[[str], Any]
    default: str
    metavar: str
    does: str
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
         "where clients connect (the traffic port)",
         "the Service's targetPort points here"),
    Flag("--upstream", parse_upstream, "127.0.0.1:8080", "HOST:PORT|unix:PATH",
         "the app every request is forwarded to",
         "the app in the same pod, on localhost"),
    Flag("--admin", parse_host_port, "0.0.0.0:9901", "HOST:PORT",
         "where /livez, /readyz, /metrics and /drain are served",
         "probes and Prometheus must reach it from the node"),
    Flag("--mode", _choice("http", "tcp"), "http", "http|tcp",
         "http: HTTP/1.1 and HTTP/2 cleartext (gRPC), rotated and drained, Upgrades "
         "tunnelled; tcp: relay bytes",
         "http: HTTP/1.1 and h2c/gRPC with rotation and GOAWAY drain; tcp: a byte relay "
         "(Redis, TLS, ...)"),
    Flag("--loop", _choice("auto", "uvloop", "asyncio"), "auto", "auto|uvloop|asyncio",
         "the event loop: auto takes uvloop when it is installed",
         "uvloop is faster when it is installed"),
    Flag("--idle-timeout", _positive_seconds, "75", "S",
         "close a client connection that sends nothing for S seconds between requests",
         "longer than common client and load-balancer idle timeouts (60 s)"),
    Flag("--header-timeout", _positive_seconds, "10", "S",
         "answer 408 when a request head is not complete S seconds after its first byte",
         "total time for a request head; stops slow-header clients (408)"),
    Flag("--body-timeout", _positive_seconds, "60", "S",
         "the longest pause in a request body (408; 504 if the app stopped reading it) or in "
         "a client reading its response (closed)",
         "longest pause in a request body upload or in a client reading its response"),
    Flag("--upstream-connect-timeout", _positive_seconds, "2", "S",
         "give up connecting to the app after S seconds (504; refused: 502)",
         "the app is on localhost: a slow connect means it is overloaded (504)"),
    Flag("--upstream-timeout", _positive_seconds, "60", "S",
         "wait S seconds for the app's response head, and between reads of its body (504, "
         "or a reset once the response has begun)",
         "wait for the app's response head, and between reads of its body, like nginx's "
         "proxy_read_timeout (504, or a reset once the response has begun)"),
    Flag("--upstream-idle-timeout", _positive_seconds, "2", "S",
         "close a pooled connection to the app after S seconds unused",
         "below app keep-alive defaults (gunicorn 2 s, uvicorn 5 s) to avoid reuse races"),
    Flag("--max-header-bytes", _count(1024), "65536", "N",
         "the largest request head in bytes (431), also for trailers",
         "generous for cookies yet bounded (431); also 100 headers, 8 KiB request line (414)"),
    Flag("--max-response-header-bytes", _count(1024), "65536", "N",
         "the largest response head, and response trailer section, from the app in bytes "
         "(502; a reset once the response has begun; HTTP/2: a header block, reset)",
         "like Envoy's 60 KiB response-header cap; nginx's 4-8 KiB proxy_buffer_size would "
         "refuse apps with large Set-Cookie or CSP headers"),
    Flag("--max-connections", _count(1), "1000", "N",
         "stop accepting at N open client connections; more wait in the kernel backlog",
         "bounds memory: 1000 slow readers x 64 KiB + 32 MiB fits the manifests' 128 MiB "
         "limit (deploy/README.md); more wait in the kernel backlog"),
    Flag("--readiness-path", _path, "", "PATH",
         "/readyz asks the app GET PATH (2xx: ready) instead of only connecting to it",
         "unset: a TCP connect to the app; set: GET PATH on the app must be 2xx"),
    Flag("--propagation-window", _seconds, "10", "S",
         "after SIGTERM or /drain, keep accepting for S seconds, every response saying "
         "Connection: close",
         "time for endpoints removal to reach kube-proxy and load balancers"),
    Flag("--adaptive-window", _boolean, "false", "",
         "end the propagation window once every source of new connections has been quiet "
         "for longer than its own rate makes plausible (--propagation-window: the most)",
         "off until measured in more clusters: a source too sparse to judge holds the "
         "window to its maximum anyway", is_switch=True),
    Flag("--min-propagation-window", _seconds, "1", "S",
         "with --adaptive-window, the least the window lasts",
         "a router's first connection after the trigger may take a moment"),
    Flag("--drain-timeout", _seconds, "15", "S",
         "after the window, wait up to S seconds for requests in flight, then cut them",
         "longest in-flight request we wait for after the window"),
    Flag("--termination-grace-period", _positive_seconds, "30", "S",
         "the pod's terminationGracePeriodSeconds: start-up warns when window + drain timeout "
         "+ 2 s exceeds it; a /drain no SIGTERM follows within it (+ 2 s) is undone",
         "match the pod's terminationGracePeriodSeconds (Kubernetes default 30)"),
    Flag("--max-requests-per-connection", _count(0), "1000", "N",
         "close a keep-alive connection after about N responses (HTTP/2: N streams, ended "
         "by GOAWAY), jittered (0: never)",
         "like nginx keepalive_requests: rebalances keep-alive and gRPC clients (0 = off)"),
    Flag("--max-connection-age", _seconds, "0", "S",
         "close a keep-alive connection after its first response past about S seconds of age "
         "(HTTP/2: GOAWAY at that age) (0: never)",
         "optional age limit for keep-alive connections (0 = off)"),
    Flag("--tcp-rotate-idle", _seconds, "0", "S",
         "tcp mode: a connection is between messages once the app spoke last and nothing "
         "moved for S seconds; one past --max-connection-age is then closed (0: never), and "
         "after the window the drain closes each one then (0: after 0.1 s)",
         "no rotation; the drain's quiet period is then 0.1 s, longer than the pauses inside "
         "one answer and short for an idle pooled connection"),
    Flag("--tunnel-drain-timeout", _optional_seconds, "", "S",
         "after the window, let tunnels (tcp mode, WebSockets) run S seconds more, then cut "
         "them (unset: --drain-timeout)",
         "how long TCP connections and Upgrade tunnels may run on in the drain (unset: "
         "the drain timeout)"),
    Flag("--rotation-jitter", _fraction, "0.1", "F",
         "draw each connection's budget and age limit from N(1-F) to N(1+F)",
         "spread rotations so connections opened together do not close together"),
    Flag("--readiness-on-drain", _choice("fail", "keep"), "fail", "fail|keep",
         "what /readyz answers in the window: fail (503) or keep (200)",
         "fail: leave the Service endpoints at once when the drain starts"),
    Flag("--drain-token", _optional_text, "", "TOKEN",
         "/drain then needs Authorization: Bearer TOKEN (401 without it)",
         "the admin port is reachable from every pod: /drain wants Authorization: Bearer "
         "TOKEN (unset: anyone may drain, and a warning says so off loopback)"),
    Flag("--drain-token-file", _optional_absolute_path, "", "PATH",
         "read the drain token from the file PATH (a mounted Secret)",
         "the same token read from a file, such as a mounted Secret"),
    Flag("--trusted-proxies", _networks, "private", "CIDR[,CIDR...]|private|none",
         "peers whose X-Forwarded-*, Forwarded and X-Real-IP pass; anyone else's are "
         "replaced (private: RFC 1918, RFC 6598, loopback, IPv6 ULA and link-local)",
         "an in-cluster ingress connects from a private address and its X-Forwarded-* are "
         "kept; anyone else's are replaced (see Header trust)"),
    Flag("--allow-underscores-in-headers", _boolean, "false", "",
         "forward header names with '_' (dropped otherwise)",
         "like nginx: X_Forwarded_For would alias X-Forwarded-For in WSGI/CGI apps",
         is_switch=True),
    Flag("--log-level", _choice("debug", "info", "warning", "error"), "info",
         "debug|info|warning|error", "the least severe log lines written",
         "phase changes and errors, not every request"),
    Flag("--log-format", _choice("text", "json"), "text", "text|json",
         "one line per event as text or as a JSON object",
         "json for log pipelines that parse fields"),
    Flag("--access-log", _boolean, "false", "",
         "log one line per request: client, method, path, status, bytes, durations",
         "one line per request costs CPU; opt in", is_switch=True),
)
