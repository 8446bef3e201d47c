"""Resident memory of drain-proxy with many idle keep-alive connections and slow readers.

A sidecar's memory request is paid on every pod.  Two loads fill it:

* idle keep-alive connections (browsers and connection pools hold them for minutes):
  ``--connections`` keep-alive connections through the proxy, one request answered on
  each so every connection has its parser, timers and buffers in their steady state,
  then all left idle;
* slow readers: ``--slow-readers`` clients each ask for a 10 MiB response and read none
  of it, so the proxy holds as much of each response as it ever buffers.  Then they all
  close, and the RSS is read again: memory must come back.

RSS (VmRSS) and its peak (VmHWM) come from ``/proc``.  Linux only; standard library only.

    python benchmarks/bench_memory.py [--connections 1000] [--slow-readers 1000]
        [--loops uvloop,asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from machine import proxy_home
from targets import APP_SCRIPT, free_port, stop

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


SLOW_READER_REQUEST = b"GET /stream HTTP/1.1\r\nHost: bench\r\n\r\n"  # 10 MiB, app.py


@dataclass
class Sample:
    loop: str
    load: str  # "idle keep-alive" or "slow readers"
    connections: int
    rss_start_mib: float
    rss_loaded_mib: float
    hwm_mib: float
    rss_after_mib: float  # once every client has closed

    @property
    def per_connection_kib(self) -> float:
        grown = self.rss_loaded_mib - self.rss_start_mib
        return grown * 1024 / self.connections if self.connections else 0.0


def memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


async def wait_listening(port: int, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.05)


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections, each with one request answered, all left open and idle."""
    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        await reader.readuntil(b"\r\n\r\n")
        if await reader.readexactly(2) != b"ok":
            raise RuntimeError("unexpected response body")
        return writer

    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 100):  # 100 at a time, like a busy pod's clients
        writers += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return writers


async def open_slow_readers(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` clients that ask for 10 MiB each and never read a byte of it."""
    writers: list[asyncio.StreamWriter] = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(SLOW_READER_REQUEST)
        writers.append(writer)
    return writers


async def settled_rss(pid: int, quiet_s: float = 2.0, deadline_s: float = 30.0) -> float:
    """VmRSS once it has stopped moving by more than 1 MiB for ``quiet_s`` (buffers filling
    or being freed take a moment): the steady state the load leads to."""
    end = time.monotonic() + deadline_s
    last, since = memory_mib(pid, "VmRSS"), time.monotonic()
    while time.monotonic() < end:
        await asyncio.sleep(0.2)  # nothing to wait on but the number itself
        now = memory_mib(pid, "VmRSS")
        if abs(now - last) > 1:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return memory_mib(pid, "VmRSS")


async def measure(loop: str, load: str, connections: int, app_port: int) -> Sample:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}",
         "--admin", f"127.0.0.1:{admin}", "--upstream", f"127.0.0.1:{app_port}",
         "--loop", loop, "--propagation-window", "0", "--log-level", "warning",
         "--max-connections", str(connections + 100)],  # measure them all at once
        cwd=proxy_home())  # the installed build, as bench_latency.py measures it
    try:
        await wait_listening(port, 10)
        start = memory_mib(proc.pid, "VmRSS")
        opener = open_idle if load == "idle keep-alive" else open_slow_readers
        writers = await opener(port, connections)
        loaded = await settled_rss(proc.pid)
        peak = memory_mib(proc.pid, "VmHWM")
        for writer in writers:
            writer.close()
        after = await settled_rss(proc.pid)
        return Sample(loop, load, connections, start, loaded, peak, after)
    finally:
        stop(proc)


def table(samples: list[Sample]) -> str:
    lines = ["| loop | load | connections | RSS at start MiB | RSS loaded MiB | peak RSS MiB "
             "| per connection KiB | RSS after they close MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for s in samples:
        lines.append(f"| {s.loop} | {s.load} | {s.connections} | {s.rss_start_mib:.1f} "
                     f"| {s.rss_loaded_mib:.1f} | {s.hwm_mib:.1f} | {s.per_connection_kib:.1f} "
                     f"| {s.rss_after_mib:.1f} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    most = max(args.connections, args.slow_readers)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * most + 100:  # both ends of every connection live here
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * most), hard))
    app_port = free_port()
    app = subprocess.Popen([sys.executable, APP_SCRIPT, str(app_port)])  # bench_latency's app
    loads = [("idle keep-alive", args.connections), ("slow readers", args.slow_readers)]
    try:
        await wait_listening(app_port, 10)
        samples = [await measure(loop, load, count, app_port)
                   for loop in args.loops for load, count in loads if count]
    finally:
        stop(app)
    print(table(samples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="drain-proxy RSS with idle keep-alive clients")
    parser.add_argument("--connections", type=int, default=1000,
                        help="idle keep-alive connections (0: skip)")
    parser.add_argument("--slow-readers", type=int, default=1000,
                        help="clients that never read their 10 MiB response (0: skip)")
    parser.add_argument("--loops", default=["uvloop", "asyncio"],
                        type=lambda s: s.split(","), help="comma-separated (default both)")
    asyncio.run(main(parser.parse_args()))
