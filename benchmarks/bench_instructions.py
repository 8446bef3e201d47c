"""Instructions per proxied request, counted by valgrind: a figure a noisy machine cannot move.

Wall-clock and CPU-time figures on a shared 2-vCPU VM swing by 20 % between runs, too much
to see a few per cent gained or lost by a change.  callgrind counts the instructions the
proxy process executes, which for the same build and the same requests is repeatable to
well under 1 %.  Each build named on the command line (each python with its own
drain-proxy installed) runs under callgrind; after a warm-up the counters are zeroed, N
keep-alive GETs are proxied, and the counters are dumped: instructions per request.  The
first build is the baseline of the ratio column, so a before/after comparison is one run:

    python benchmarks/bench_instructions.py --python /path/to/before/bin/python \\
        --python .venv/bin/python

Needs valgrind (apt-get install valgrind).  The app is ``app.py``, outside callgrind.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import proxy_home
from targets import free_port, stop, wait_for_200

HERE = Path(__file__).resolve().parent
TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def requests(port: int, count: int, connections: int = 4) -> None:
    """``count`` keep-alive GETs spread over a few connections, answered and read."""
    pool = [http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(connections)]
    for n in range(count):
        connection = pool[n % connections]
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b"ok"
    for connection in pool:
        connection.close()


def measure(python: str, loop: str, count: int, workdir: Path, mode: str = "http",
            extra: tuple[str, ...] = ()) -> tuple[str, float]:
    """(build description, instructions per request) for one python's drain-proxy."""
    build = subprocess.run(
        [python, "-c", "import proxy; print(proxy.__version__, proxy.build())"],
        cwd=proxy_home(), capture_output=True, text=True, check=True).stdout.strip()
    app_port, port, admin = free_port(), free_port(), free_port()
    app = subprocess.Popen([sys.executable, str(HERE / "app.py"), str(app_port)])
    out = workdir / f"callgrind.{free_port()}"
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-m", "proxy",
         "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{app_port}", "--admin",
         f"127.0.0.1:{admin}", "--loop", loop, "--log-level", "warning",
         "--max-requests-per-connection", "0", "--mode", mode, *extra],
        cwd=proxy_home(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_200(admin, "/readyz", 120)  # valgrind starts Python slowly
        requests(port, 300)  # warm-up: pools, caches, first-time paths
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True,
                       capture_output=True)
        requests(port, count)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True,
                       capture_output=True)
        dumps = sorted(workdir.glob(f"{out.name}*"), key=lambda p: p.stat().st_mtime)
        match = TOTALS.search(dumps[-1].read_bytes())
        assert match, f"no totals in {dumps[-1]}"
        return build, int(match[1]) / count
    finally:
        stop(proxy)
        stop(app)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", default=[],
                        help="a python with drain-proxy installed (repeat; default: this one)")
    parser.add_argument("--loops", default="uvloop,asyncio")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--mode", choices=("http", "tcp"), default="http",
                        help="the proxy's mode: in tcp mode a request is a relayed round trip")
    parser.add_argument("--proxy-args", default="",
                        help="more proxy flags, e.g. \"--max-connection-age 3600 "
                             "--tcp-rotate-idle 1\" (a configuration's own per-read cost)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench_instructions: valgrind is not installed (apt-get install valgrind)",
              file=sys.stderr)
        return 2
    # Absolute, not resolved: a virtualenv's python is a symlink that must stay one.
    pythons = [os.path.abspath(p) for p in args.python] or [sys.executable]
    rows = ["| build | python | loop | instructions per request | vs first |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        for loop in args.loops.split(","):
            first = 0.0
            for python in pythons:
                print(f"{loop}: {python}", file=sys.stderr)
                build, per_request = measure(python, loop, args.requests, Path(tmp), args.mode,
                                             tuple(shlex.split(args.proxy_args)))
                first = first or per_request
                rows.append(f"| drain-proxy {build} | `{python}` | {loop} | {per_request:,.0f} "
                            f"| {per_request / first:.3f}x |")
    print(f"{args.requests} keep-alive GETs over 4 connections (tiny body), after 300 to "
          f"warm up; --mode {args.mode} {args.proxy_args}".rstrip()
          + "; callgrind instruction counts of the proxy process\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
