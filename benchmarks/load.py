"""Load generators: wrk when installed, else a built-in asyncio keep-alive client.

Both report the same `Sample` (req/s, latency percentiles, requests, errors), so nothing
downstream cares which one ran.  The built-in client runs as its own process
(`python load.py PORT PATH CONNS SECONDS`) so it can be pinned to the load CPU like wrk and never
shares an interpreter with the benchmark that is reading /proc.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

PERCENTILES = (50, 75, 90, 99)  # the ones wrk --latency prints
UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
SELF = str(Path(__file__).resolve())


@dataclass
class Sample:
    """One load run against one target; errors = non-2xx responses + socket errors."""

    rps: float
    p50_us: float
    p75_us: float
    p90_us: float
    p99_us: float
    requests: int
    errors: int = 0
    cpu_us_per_req: float | None = None

    def percentiles(self) -> list[float]:
        """Latency at each of PERCENTILES, in microseconds (the chart's y values)."""
        return [self.p50_us, self.p75_us, self.p90_us, self.p99_us]


def parse_wrk(out: str) -> Sample:
    """req/s, percentiles (wrk units us/ms/s/m/h -> us), request count, socket + non-2xx errors."""
    rps, reqs = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    pct = [re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M) for p in PERCENTILES]
    if not rps or not reqs or not all(pct):
        raise RuntimeError(f"cannot parse wrk output: {out[-300:]!r}")
    errs = re.findall(r"(?:connect|read|write|timeout|responses:) (\d+)", out)
    p50, p75, p90, p99 = (float(m[1]) * UNIT_US[m[2]] for m in pct if m)
    return Sample(float(rps[1]), p50, p75, p90, p99, int(reqs[1]), sum(int(e) for e in errs))


class LoadGen:
    """Runs one load process per measurement, pinned to the load CPU when there is one."""

    def __init__(self, wrk: str | None, cpu: str | None) -> None:
        """`wrk`: its path, or None for the built-in client."""
        self.wrk, self.pin = wrk, ["taskset", "-c", cpu] if cpu else []

    def describe(self) -> str:
        """What generated the load, for the output header."""
        return "wrk -t1 --latency" if self.wrk else "built-in asyncio client (python load.py)"

    def run(self, port: int, path: str, conns: int, duration_s: int) -> Sample:
        """One run of `duration_s` seconds with `conns` keep-alive connections, GET `path`."""
        argv = ([self.wrk, "-t1", f"-c{conns}", f"-d{duration_s}s", "--latency",
                 f"http://127.0.0.1:{port}{path}"] if self.wrk
                else [sys.executable, SELF, str(port), path, str(conns), str(duration_s)])
        proc = subprocess.Popen(self.pin + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out = proc.communicate(timeout=duration_s + 30)[0].decode(errors="replace")
        finally:
            if proc.poll() is None:  # the timeout fired: never leave a load process behind
                proc.kill()
                proc.wait()
        return parse_wrk(out) if self.wrk else Sample(**json.loads(out.splitlines()[-1]))


async def keep_alive(r: asyncio.StreamReader, w: asyncio.StreamWriter, request: bytes,
                     deadline: float, lat: list[int]) -> int:
    """GETs back to back on one connection until the deadline or the server's `close`."""
    errors = 0
    while time.monotonic() < deadline:
        t0 = time.perf_counter_ns()
        w.write(request)
        head = await r.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        await r.readexactly(int(m[1]) if m else 0)
        lat.append(time.perf_counter_ns() - t0)
        errors += not head.startswith(b"HTTP/1.1 2")
        if b"connection: close" in head.lower():
            break
    return errors


async def load_conn(port: int, path: str, deadline: float, lat: list[int]) -> int:
    """One client connection until the deadline; returns errors.

    Like wrk, it reconnects when the server closes: drain-proxy rotates keep-alive connections
    (`Connection: close` every ~1000 requests by default), and that reconnect is part of its cost.
    A connection lost mid-response counts as one error.
    """
    request, errors = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), 0
    while time.monotonic() < deadline:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            errors += await keep_alive(r, w, request, deadline, lat)
        except (asyncio.IncompleteReadError, ConnectionError):
            errors += 1
        finally:
            w.close()
    return errors


async def load_client(port: int, path: str, conns: int, duration_s: int) -> Sample:
    """wrk stand-in with the same figures; its ceiling is one Python core, far below wrk's."""
    lat: list[int] = []
    deadline = time.monotonic() + duration_s
    res = await asyncio.gather(*(load_conn(port, path, deadline, lat) for _ in range(conns)),
                               return_exceptions=True)
    n, lat = len(lat), sorted(lat)
    p50, p75, p90, p99 = (lat[min(n - 1, n * p // 100)] / 1e3 if n else 0.0 for p in PERCENTILES)
    errors = sum(x if isinstance(x, int) else 1 for x in res)  # a raised connection counts once
    return Sample(n / duration_s, p50, p75, p90, p99, n, errors)


def event_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (it is a drain-proxy dependency): a higher ceiling for the client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    port, path, conns, duration = sys.argv[1:5]
    with asyncio.Runner(loop_factory=event_loop()) as runner:
        sample = runner.run(load_client(int(port), path, int(conns), int(duration)))
    print(json.dumps(asdict(sample)))
