"""One frozen, typed settings object, built once from flags and environment.

Every flag also reads ``DRAIN_PROXY_<FLAG_IN_UPPER_SNAKE>``; a flag beats its
environment variable.  A bad value stops start-up with one line that names the
flag, the value and what is allowed (exit code 2), because a sidecar that starts
with a silently-ignored typo only shows the mistake during the next rollout.

The flags themselves (names, value parsers, defaults and the reasons for them) are
in ``proxy.flags``; this module builds the frozen ``Settings`` from them and checks
the combinations no single flag can.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from proxy import __version__
from proxy.flags import ENV_PREFIX, FLAGS, Address, Flag, Network


class SettingsError(Exception):
    """A flag or environment variable has a value we cannot accept."""


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
    max_response_header_bytes: int
    max_connections: int
    readiness_path: str | None
    propagation_window_s: float
    adaptive_window: bool
    min_propagation_window_s: float
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
    drain_token: str | None
    drain_token_file: str | None
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

    @property
    def window_description(self) -> str:
        """The propagation window in words, for the start-up and drain log lines."""
        if not self.adaptive_window:
            return f"{self.propagation_window_s:g} s"
        return (f"{self.min_propagation_window_s:g} to {self.propagation_window_s:g} s, "
                f"until routing has moved")


_FIELD_FOR_FLAG = {
    "--idle-timeout": "idle_timeout_s",
    "--header-timeout": "header_timeout_s",
    "--body-timeout": "body_timeout_s",
    "--upstream-connect-timeout": "upstream_connect_timeout_s",
    "--upstream-timeout": "upstream_timeout_s",
    "--upstream-idle-timeout": "upstream_idle_timeout_s",
    "--propagation-window": "propagation_window_s",
    "--min-propagation-window": "min_propagation_window_s",
    "--drain-timeout": "drain_timeout_s",
    "--termination-grace-period": "termination_grace_period_s",
    "--max-connection-age": "max_connection_age_s",
    "--tcp-rotate-idle": "tcp_rotate_idle_s",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


_EPILOG = """\
units: S is a number of seconds (0.5 is fine), N a whole number, F a fraction.

on SIGTERM or SIGINT (or GET /drain on the admin port):
  1. /readyz answers 503 at once (--readiness-on-drain keep: 200); /livez stays 200
  2. for --propagation-window S, connections are still accepted and served, and
     every response says Connection: close (--adaptive-window: until every source
     of new connections has gone quiet, from --min-propagation-window S to that S)
  3. the listener closes, idle connections close (tcp mode: each at its first
     quiet moment between messages), requests in flight get --drain-timeout S
     (tunnels: --tunnel-drain-timeout) and are then cut
  4. the process exits as soon as every connection is done: at the latest
     window + drain timeout after the signal, which must fit in
     --termination-grace-period. A second signal skips to the cut.
  /drain alone leaves the process running until SIGTERM, which then exits at once.

exit codes: 0 drained, nothing cut; 1 a request was cut (deadline or second
signal) or the drain failed; 2 a bad flag or environment variable, or a port
that cannot be listened on.

`drain-proxy demo` runs a simulated rollout (naive app vs drain-proxy) in about
10 s on 127.0.0.1; `drain-proxy demo --help` lists its options.
`drain-proxy check FILE...` checks Kubernetes manifests for what would make a
rollout lose requests; `drain-proxy check --help` lists its options.
`drain-proxy inject [FILE ...]` wires the proxy into Kubernetes manifests (stdin to
stdout without files); `drain-proxy inject --help` lists its options."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; values stay raw strings until ``_convert``."""
    parser = _OneLineParser(
        prog="drain-proxy",
        allow_abbrev=False,  # "--idle 5" must not silently mean --idle-timeout
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the epilog's lines
        description="Reverse-proxy sidecar that drains connections for zero-loss rollouts.\n"
        "Every flag also reads DRAIN_PROXY_<FLAG_IN_UPPER_SNAKE>; a flag beats its variable.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"drain-proxy {__version__}")
    for flag in FLAGS:
        help_text = f"{flag.does} (default {flag.default or 'unset'}; env {flag.env_var})"
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
    """A misspelt variable stops start-up, naming the closest real one; the whole list (30
    names, a thousand characters on one line) is for ``--help``, not for the error."""
    known = {flag.env_var for flag in FLAGS}
    for key in environ:
        if key.startswith(ENV_PREFIX) and key not in known | BUILD_ENV_VARS \
                and not _SERVICE_LINK.match(key):
            # Compared without the prefix every name shares, which would make all look alike.
            close = difflib.get_close_matches(
                key.removeprefix(ENV_PREFIX), sorted(k.removeprefix(ENV_PREFIX) for k in known),
                n=1)
            guess = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            raise SettingsError(f"{key}: unknown setting{guess} "
                                f"(drain-proxy --help lists every {ENV_PREFIX}* name)")


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
    if values["drain_token"] and values["drain_token_file"]:
        raise SettingsError("--drain-token and --drain-token-file: set one of them, not both")
    if values["drain_token_file"]:
        values["drain_token"] = _read_token(values["drain_token_file"])
    settings = Settings(**values)
    _check_window_bounds(settings)
    _check_not_forwarding_to_itself(settings)
    _check_admin_apart(settings)
    return settings


# How deploy/'s manifests mark the drain token to replace (CHANGE-ME-openssl-rand-hex-32).
PLACEHOLDER_TOKEN_PREFIX = "CHANGE-ME"


def refuse_placeholders(settings: Settings) -> None:
    """Stop start-up on the drain token deploy/ ships as a placeholder, or raise SettingsError.

    kustomize renders placeholders without a word and cannot be made to fail on a value, so
    the token every copy of this repository shares reached pods unnoticed, protecting /drain
    with a published secret.  Not in ``parse_settings``: the manifests as shipped are well
    formed (and their tests parse them); they are only not fit to run."""
    token = settings.drain_token
    if token is None or not token.upper().startswith(PLACEHOLDER_TOKEN_PREFIX):
        return
    source = f"--drain-token-file {settings.drain_token_file}" if settings.drain_token_file \
        else "--drain-token"
    raise SettingsError(f"{source}: the placeholder token of deploy/ ({token}); allowed: a "
                        f"token of your own, such as `openssl rand -hex 32` makes")


def _same_socket(a: Address, b: Address) -> bool:
    """Whether two listen addresses would take the same port: same port, and the same host
    or a wildcard on either side."""
    return a.port != 0 and a.port == b.port and (
        a.host == b.host or a.host in _WILDCARDS or b.host in _WILDCARDS)


def _check_admin_apart(settings: Settings) -> None:
    if _same_socket(settings.admin, settings.listen):
        raise SettingsError(f"--admin {settings.admin}: the same port as --listen "
                            f"{settings.listen}; allowed: another port")


def _check_window_bounds(settings: Settings) -> None:
    """Only an adaptive window has a least length; a fixed one is --propagation-window."""
    least, most = settings.min_propagation_window_s, settings.propagation_window_s
    if settings.adaptive_window and least > most:
        raise SettingsError(f"--min-propagation-window {least:g}: longer than "
                            f"--propagation-window {most:g}, the window's maximum; allowed: "
                            f"0 to {most:g}")


def _read_token(path: str) -> str:
    """The token in a file (a mounted Secret): its content without the final newline."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"--drain-token-file {path}: cannot read it: {error}") from None
    if not token or any(c.isspace() for c in token):
        raise SettingsError(f"--drain-token-file {path}: allowed: a file holding one token "
                            f"without spaces")
    return token


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
