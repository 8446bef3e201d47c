"""TCP-mode targets for the benchmark: drain-proxy `--mode tcp` against nginx's `stream` module.

Both are plain byte relays in front of the same app, so keep-alive HTTP passes through them
unparsed.  Their CPU ratio is taken against `nginx-stream` (a relay), never `nginx-proxy` (an HTTP
proxy): comparing a relay's cost with a parser's would flatter the relay.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Protocol, TypeVar

TCP_TARGETS = ["drain-proxy-tcp", "nginx-stream"]
DRAIN_ARGS = {  # extra `python -m proxy` flags per drain-proxy target
    "drain-proxy-uvloop": ["--loop", "uvloop"],
    "drain-proxy-asyncio": ["--loop", "asyncio"],
    "drain-proxy-tcp": ["--mode", "tcp", "--loop", "uvloop"],
}
BUILD_MARK = "@"  # `drain-proxy-uvloop@baseline`: the same setup, another build (--baseline)
MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
NO_STREAM = "skipped: nginx stream module not installed (apt-get install libnginx-mod-stream)"
# A str.format template like targets.NGINX_CONF: stream_conf() fills {load}, then
# Servers.nginx_argv fills {d} (its prefix dir) and {server}.  1 worker; no http block is needed.
STREAM_CONF = """{load}worker_processes 1; pid {d}/nginx.pid; events {{ worker_connections 4096; }}
stream {{ {server} }}
"""
STREAM_SERVER = "server { listen 127.0.0.1:%d; proxy_pass 127.0.0.1:%d; }"


class Named(Protocol):
    """Anything with a target name (targets.Target)."""
    name: str


T = TypeVar("T", bound=Named)


def setup_of(name: str) -> str:
    """The setup a target runs (`drain-proxy-tcp` for `drain-proxy-tcp@baseline`)."""
    return name.partition(BUILD_MARK)[0]


def stream_conf(nginx: str) -> str | None:
    """nginx.conf template for a stream relay, or None when the stream module is missing.

    `nginx -V` says whether stream is built in (`--with-stream`: nothing to load) or dynamic; a
    dynamic module is looked for in nginx's --modules-path, then in the usual Debian directories.
    """
    try:
        info = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.SubprocessError):
        info = ""
    if re.search(r"--with-stream(?=\s|$)", info):
        return STREAM_CONF.replace("{load}", "")
    for d in re.findall(r"--modules-path=(\S+)", info) + list(MODULE_DIRS):
        so = Path(d) / "ngx_stream_module.so"
        if so.is_file():
            return STREAM_CONF.replace("{load}", f"load_module {so.resolve()};\n")
    return None


def table_groups(targets: list[T]) -> list[tuple[str, str, list[T]]]:
    """(title, CPU-ratio baseline, targets) per mode; `direct` is repeated atop the TCP table.

    The title has a `{body}` field: each mode gets one table per body size.  The HTTP tables are
    printed unless only `direct` and TCP targets were chosen; the TCP ones only when a TCP
    target was chosen.
    """
    http = [t for t in targets if setup_of(t.name) not in TCP_TARGETS]
    tcp = [t for t in targets if setup_of(t.name) in TCP_TARGETS]
    groups = []
    if any(t.name != "direct" for t in http) or (http and not tcp):
        groups.append(("HTTP mode, {body}: reverse proxies, CPU ratio vs nginx-proxy",
                       "nginx-proxy", http))
    if tcp:
        groups.append(("TCP mode, {body}: byte relays (HTTP passes through unparsed), "
                       "CPU ratio vs nginx-stream", "nginx-stream",
                       [t for t in http if t.name == "direct"] + tcp))
    return groups
