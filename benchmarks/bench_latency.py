"""Latency/throughput/CPU benchmark: drain-proxy vs nginx and haproxy (HTTP), nginx stream (TCP).

A proxy's cost is what it *adds* over calling the app directly, so every proxy fronts the same
trivial app and is compared with `direct`.  Runs are interleaved (A B C A B C) so drift hits all
targets alike; medians + req/s spread stop one outlier from deciding.  CPU per request matters
because a sidecar's CPU is the real bill, which req/s hides when the load generator is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tcp_targets as tcp  # the TCP-mode targets (drain-proxy --mode tcp, nginx stream)

ROOT = Path(__file__).resolve().parent.parent
SELF = str(Path(__file__).resolve())
ALL_TARGETS = ["direct", "drain-proxy-uvloop", "drain-proxy-asyncio", "nginx-proxy", "haproxy",
               *tcp.TCP_TARGETS]
UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
HEADER = ("| target | conns | req/s (median) | spread | p50 us | p99 us "
          "| added p50 vs direct (us) | proxy CPU us/req | CPU ratio vs {base} |")
Proc = subprocess.Popen[bytes]
SBIN = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # nginx/haproxy are in /usr/sbin

NGINX_CONF = """worker_processes 1; pid {d}/nginx.pid; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  {server} }}
"""
NGINX_APP = 'server { listen 127.0.0.1:%d; location / { return 200 "ok"; } }'
NGINX_PROXY = """upstream app { server 127.0.0.1:%d; keepalive 64; }
  server { listen 127.0.0.1:%d; location / { proxy_pass http://app;
    proxy_http_version 1.1; proxy_set_header Connection ""; } }"""
HAPROXY = ("global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  http-reuse always\n"
           "  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend fe\n"
           "  bind 127.0.0.1:%d\n  default_backend be\nbackend be\n  server app 127.0.0.1:%d\n")


@dataclass
class Sample:
    """One load run against one target; errors = non-2xx responses + socket errors."""
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    errors: int = 0
    cpu_us_per_req: float | None = None


@dataclass
class Stats(Sample):
    """Medians over repetitions; the req/s min/max say how far the medians can be trusted."""
    rps_min: float = 0.0
    rps_max: float = 0.0

    @classmethod
    def of(cls, ss: list[Sample]) -> Stats:
        """Aggregate repetitions (requests/errors summed); CPU only where it was measurable."""
        cpu = [s.cpu_us_per_req for s in ss if s.cpu_us_per_req is not None]
        rps, med = [s.rps for s in ss], statistics.median
        return cls(med(rps), med(s.p50_us for s in ss), med(s.p99_us for s in ss),
                   sum(s.requests for s in ss), sum(s.errors for s in ss),
                   med(cpu) if cpu else None, min(rps), max(rps))


@dataclass
class Target:
    """A thing under test; `cpu_pid` is the process whose CPU we bill (never the app)."""
    name: str
    port: int = 0
    cpu_pid: int | None = None
    proc: Proc | None = None
    error: str | None = None
    samples: dict[int, list[Sample]] = field(default_factory=dict)


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


def http_status(port: int, path: str) -> int | None:
    """Status of one GET, or None while nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    with contextlib.closing(conn), contextlib.suppress(OSError):
        conn.request("GET", path)
        return conn.getresponse().status
    return None


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


def parse_wrk(out: str) -> Sample:
    """req/s, p50/p99 (wrk units us/ms/s/m/h -> us), request count, socket + non-2xx errors."""
    rps, reqs = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    pct = [re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M) for p in (50, 99)]
    if not rps or not reqs or not pct[0] or not pct[1]:
        raise RuntimeError(f"cannot parse wrk output: {out[-300:]!r}")
    errs = re.findall(r"(?:connect|read|write|timeout|responses:) (\d+)", out)
    p50, p99 = (float(m[1]) * UNIT_US[m[2]] for m in (pct[0], pct[1]))
    return Sample(float(rps[1]), p50, p99, int(reqs[1]), sum(int(e) for e in errs))


class Bench:
    """Owns the temp dir, CPU pinning and every process started; close() undoes it all."""

    def __init__(self) -> None:
        """Pin to separate cores so the load generator never steals CPU from what it measures."""
        cpus = sorted(os.sched_getaffinity(0))
        pin = shutil.which("taskset") is not None and len(cpus) >= 2
        self.server_cpu = str(cpus[0]) if pin else None
        self.load_cpu = str(cpus[1]) if pin else None
        self.wrk = shutil.which("wrk")
        self.nginx = shutil.which("nginx", path=SBIN)
        self.haproxy = shutil.which("haproxy", path=SBIN)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
        self.tmp.chmod(0o755)  # nginx workers run as nobody when we are root
        self.procs: list[Proc] = []
        self.app_port, self.app_kind = free_port(), ""

    def close(self) -> None:
        """Stop everything by PID (newest first), then remove the temp dir."""
        for proc in reversed(self.procs):
            stop(proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, argv: list[str], log: str, cwd: Path | None = None) -> Proc:
        """Start a server on the server CPU; taskset execs, so the PID is the server's own."""
        pin = ["taskset", "-c", self.server_cpu] if self.server_cpu else []
        with open(self.tmp / f"{log}.log", "wb") as fh:
            proc = subprocess.Popen(pin + argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, port: int, path: str, log: str) -> str | None:
        """Poll until GET path == 200 (15 s deadline); else say why, with the log tail."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.tmp / f"{log}.log").read_text(errors="replace").splitlines()[-2:]
                return f"exited ({proc.returncode}): {' / '.join(tail)[:160]}".replace("|", "/")
            if http_status(port, path) == 200:
                return None
            time.sleep(0.05)
        return f"no 200 on {path} within 15 s"

    def start_nginx(self, name: str, server_conf: str, port: int, conf: str = NGINX_CONF) -> Target:
        """Foreground nginx with its own prefix dir, so no system path is read or written."""
        d = self.tmp / name
        d.mkdir()
        (d / "nginx.conf").write_text(conf.format(d=d, server=server_conf))
        argv = [self.nginx or "nginx", "-p", str(d), "-e", str(d / "error.log"),
                "-c", str(d / "nginx.conf"), "-g", "daemon off;"]
        proc = self.spawn(argv, name)
        err = self.wait_ready(proc, port, "/", name)
        return Target(name, port, None if err else child_pid(proc.pid), proc, err)

    def start_app(self) -> None:
        """The app is nginx if present (too fast to be the bottleneck), else the built-in one."""
        if self.nginx:
            t = self.start_nginx("nginx-app", NGINX_APP % self.app_port, self.app_port)
            self.app_kind = 'nginx `return 200 "ok"` (1 worker)'
        else:
            proc = self.spawn([sys.executable, SELF, "--serve-app", str(self.app_port)], "app")
            t = Target("app", error=self.wait_ready(proc, self.app_port, "/", "app"))
            self.app_kind = "built-in asyncio server (nginx not installed, so a slower app)"
        if t.error:
            raise SystemExit(f"app failed to start: {t.error}")

    def start_drain(self, name: str, extra: list[str]) -> Target:
        """`python -m proxy` from the repo root; ready once /livez *and* a proxied GET give 200."""
        if not (ROOT / "proxy" / "__main__.py").exists():
            return Target(name, error="not available: proxy/__main__.py missing")
        port, admin = free_port(), free_port()
        argv = [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}",
                "--upstream", f"127.0.0.1:{self.app_port}", "--admin", f"127.0.0.1:{admin}",
                *extra, "--log-level", "warning",  # and on SIGTERM exit now, not drain:
                "--propagation-window", "0", "--drain-timeout", "1"]
        proc = self.spawn(argv, name, cwd=ROOT)
        err = self.wait_ready(proc, admin, "/livez", name) or self.wait_ready(proc, port, "/", name)
        return Target(name, port, proc.pid, proc, f"not available: {err}" if err else None)

    def start_target(self, name: str) -> Target:
        """Start one target; a missing binary or module gives a skipped row, not an abort."""
        if name == "direct":
            return Target(name, self.app_port)
        if name.startswith("drain-proxy-"):
            return self.start_drain(name, tcp.DRAIN_ARGS[name])
        port, exe = free_port(), self.haproxy if name == "haproxy" else self.nginx
        if not exe:
            return Target(name, error=f"skipped: {name.split('-')[0]} not installed")
        if name == "nginx-proxy":  # upstream keep-alive: nginx's fast proxy configuration
            return self.start_nginx(name, NGINX_PROXY % (self.app_port, port), port)
        if name == "nginx-stream":  # a plain TCP relay: the CPU baseline of the TCP-mode table
            if conf := tcp.stream_conf(exe):  # None: the stream module is not installed
                return self.start_nginx(name, tcp.STREAM_SERVER % (port, self.app_port), port, conf)
            return Target(name, error=tcp.NO_STREAM)
        (self.tmp / "haproxy.cfg").write_text(HAPROXY % (port, self.app_port))
        proc = self.spawn([exe, "-db", "-f", str(self.tmp / "haproxy.cfg")], name)
        return Target(name, port, proc.pid, proc, self.wait_ready(proc, port, "/", name))

    def run_load(self, port: int, conns: int, duration: int) -> Sample:
        """wrk on the load CPU when installed (C, low overhead), else the built-in client."""
        pin = ["taskset", "-c", self.load_cpu] if self.load_cpu else []
        url, spec = f"http://127.0.0.1:{port}/", f"{port},{conns},{duration}"
        argv = ([self.wrk, "-t1", f"-c{conns}", f"-d{duration}s", "--latency", url] if self.wrk
                else [sys.executable, SELF, "--load-client", spec])
        proc = subprocess.Popen(pin + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out = proc.communicate(timeout=duration + 30)[0].decode(errors="replace")
        finally:
            stop(proc)
        return parse_wrk(out) if self.wrk else Sample(**json.loads(out.splitlines()[-1]))

    def measure(self, t: Target, conns: int, duration: int) -> Sample:
        """One load run; proxy CPU ticks after minus before, per request -> CPU us/request."""
        before = cpu_ticks(t.cpu_pid) if t.cpu_pid else 0
        s = self.run_load(t.port, conns, duration)
        if t.proc is not None and t.proc.poll() is not None:
            raise RuntimeError(f"{t.name} died during the run (rc={t.proc.returncode})")
        if t.cpu_pid and s.requests:
            ticks = cpu_ticks(t.cpu_pid) - before
            s.cpu_us_per_req = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / s.requests
        if s.errors:
            print(f"  warning: {t.name} c={conns}: {s.errors} errors", file=sys.stderr)
        return s

    def run_all(self, targets: list[Target], conns_list: list[int], dur: int, rep: int) -> None:
        """Per conns: a discarded 1 s warm-up round (pools, caches), then interleaved reps."""
        for conns in conns_list:
            for i in range(-1, rep):
                for t in [t for t in targets if not t.error]:
                    print(f"[c={conns} rep {i + 1}/{rep}] {t.name}", file=sys.stderr)
                    try:
                        s = self.measure(t, conns, dur if i >= 0 else 1)
                    except (RuntimeError, OSError, ValueError) as exc:
                        t.error = f"failed: {exc}".replace("|", "/")[:200]
                    else:
                        t.samples.setdefault(conns, []).extend([s] if i >= 0 else [])


def row(name: str, c: int, m: Stats, direct: Stats | None, base: Stats | None) -> str:
    """One table row; deltas only where the reference row was measured."""
    added = f"{m.p50_us - direct.p50_us:+.0f}" if direct and name != "direct" else "-"
    cpu, ncpu = m.cpu_us_per_req, base.cpu_us_per_req if base else None
    ratio = f"{cpu / ncpu:.2f}x" if cpu is not None and ncpu else "-"
    return (f"| {name} | {c} | {m.rps:.0f} | {m.rps_min:.0f}-{m.rps_max:.0f} | {m.p50_us:.0f}"
            f" | {m.p99_us:.0f} | {added} | {'-' if cpu is None else f'{cpu:.1f}'} | {ratio} |")


def table(targets: list[Target], conns_list: list[int], base: str) -> str:
    """Markdown table per target and connection count; the CPU ratio is against `base`."""
    lines = [HEADER.format(base=base), "|" + "---|" * 9]
    for c in conns_list:
        st = {t.name: Stats.of(t.samples[c]) for t in targets if t.samples.get(c)}
        for t in targets:
            name = t.name.replace("drain-proxy-", "drain-proxy/")
            if t.name not in st:
                lines.append(f"| {name} | {c} | {t.error or 'no data'} |" + " - |" * 6)
                continue
            lines.append(row(name, c, st[t.name], st.get("direct"), st.get(base)))
    return "\n".join(lines)


async def serve_app(port: int) -> None:
    """Fallback app without nginx: minimal keep-alive HTTP/1.1 server answering "ok"."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await r.readuntil(b"\r\n\r\n"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                if b"connection: close" in head.lower():
                    break
                await w.drain()
        w.close()
    await (await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)).serve_forever()


async def load_conn(port: int, deadline: float, lat: list[int], errs: list[int]) -> None:
    """One keep-alive connection sending requests back to back until the deadline."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < deadline:
        t0 = time.perf_counter_ns()
        w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        await r.readexactly(int(m[1]) if m else 0)
        lat.append(time.perf_counter_ns() - t0)
        if not head.startswith(b"HTTP/1.1 2"):
            errs.append(1)
    w.close()


async def load_client(port: int, conns: int, duration: int) -> dict[str, float]:
    """wrk stand-in reporting the same numbers; its ceiling is one Python core, far below wrk."""
    lat: list[int] = []
    errs: list[int] = []
    deadline = time.monotonic() + duration
    res = await asyncio.gather(*(load_conn(port, deadline, lat, errs) for _ in range(conns)),
                               return_exceptions=True)
    n, lat = len(lat), sorted(lat)
    return {"rps": n / duration, "p50_us": lat[n // 2] / 1e3 if n else 0.0,
            "p99_us": lat[min(n - 1, n * 99 // 100)] / 1e3 if n else 0.0, "requests": n,
            "errors": len(errs) + sum(isinstance(x, BaseException) for x in res)}


def parse_args() -> argparse.Namespace:
    """CLI; --serve-app and --load-client are internal helpers this script runs as children."""
    p = argparse.ArgumentParser(description="drain-proxy latency/CPU benchmark")
    p.add_argument("--connections", default="1,16", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--duration", type=int, default=5, help="seconds per run (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), type=lambda s: s.split(","))
    p.add_argument("--json", type=Path, help="also write the raw medians to this file")
    p.add_argument("--quick", action="store_true", help="smoke test: duration 2, repeat 1")
    p.add_argument("--serve-app", type=int, help=argparse.SUPPRESS)
    p.add_argument("--load-client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.duration, args.repeat = 2, 1
    if bad := set(args.targets) - set(ALL_TARGETS):
        p.error(f"unknown targets {sorted(bad)}; choose from {ALL_TARGETS}")
    return args


def report(b: Bench, targets: list[Target], args: argparse.Namespace) -> None:
    """Print what was measured and how (app, load tool, pinning), the table, optional JSON."""
    pin = (f"load generator -> CPU {b.load_cpu}; app + proxy under test -> CPU {b.server_cpu}"
           " (taskset -c)" if b.server_cpu else "none (taskset missing or < 2 CPUs)")
    load = "wrk -t1 --latency" if b.wrk else "built-in asyncio client (wrk not installed)"
    meta = {"app": b.app_kind, "load": f"{load}, {args.duration} s x {args.repeat} interleaved",
            "pinning": pin}
    raw = [{"target": t.name, "conns": c, **asdict(Stats.of(ss)), "samples": list(map(asdict, ss))}
           for c in args.connections for t in targets if (ss := t.samples.get(c))]
    text = "\n\n".join(f"{title}\n\n{table(ts, args.connections, base)}"
                       for title, base, ts in tcp.table_groups(targets))
    print("\n".join(f"{k}: {v}" for k, v in meta.items()) + f"\n\n{text}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": raw}, indent=2) + "\n")


def main() -> None:
    """Dispatch to a helper subprocess role, or run the benchmark and always clean up."""
    args = parse_args()
    if args.serve_app:
        return asyncio.run(serve_app(args.serve_app))
    if args.load_client:
        port, conns, duration = (int(x) for x in args.load_client.split(","))
        return print(json.dumps(asyncio.run(load_client(port, conns, duration))))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally block runs
    b = Bench()
    try:
        b.start_app()
        targets = [b.start_target(name) for name in args.targets]
        b.run_all(targets, args.connections, args.duration, args.repeat)
        report(b, targets, args)
    finally:
        b.close()


if __name__ == "__main__":
    main()
