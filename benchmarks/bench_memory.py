"""Resident memory of drain-proxy with many idle keep-alive connections.

A sidecar's memory request is paid on every pod, and what fills it is idle
keep-alive connections: browsers and connection pools hold them open for
minutes.  This opens ``--connections`` keep-alive connections through the
proxy, completes one request on each (so every connection has its parser,
timers and buffers in their steady state) and leaves them all idle, then reads
the proxy's VmRSS and VmHWM from ``/proc``.  Linux only; standard library only.

    python benchmarks/bench_memory.py [--connections 1000] [--loops uvloop,asyncio]
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

TARGET_MIB = 64  # the design goal for 1000 idle keep-alive connections
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


@dataclass
class Sample:
    loop: str
    connections: int
    rss_start_mib: float
    rss_idle_mib: float
    hwm_mib: float

    @property
    def per_connection_kib(self) -> float:
        grown = self.rss_idle_mib - self.rss_start_mib
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


async def measure(loop: str, connections: int, app_port: int) -> Sample:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}",
         "--admin", f"127.0.0.1:{admin}", "--upstream", f"127.0.0.1:{app_port}",
         "--loop", loop, "--propagation-window", "0", "--log-level", "warning"],
        cwd=proxy_home())  # the installed build, as bench_latency.py measures it
    try:
        await wait_listening(port, 10)
        start = memory_mib(proc.pid, "VmRSS")
        writers = await open_idle(port, connections)
        await asyncio.sleep(0.5)  # let the proxy settle: freed buffers, pooled upstreams
        sample = Sample(loop, connections, start, memory_mib(proc.pid, "VmRSS"),
                        memory_mib(proc.pid, "VmHWM"))
        for writer in writers:
            writer.close()
        return sample
    finally:
        stop(proc)


def table(samples: list[Sample]) -> str:
    lines = [f"| loop | idle keep-alive connections | RSS at start MiB | RSS idle MiB "
             f"| peak RSS MiB | per connection KiB | <= {TARGET_MIB} MiB |",
             "|---|---|---|---|---|---|---|"]
    for s in samples:
        met = "yes" if s.rss_idle_mib <= TARGET_MIB else "no"
        lines.append(f"| {s.loop} | {s.connections} | {s.rss_start_mib:.1f} "
                     f"| {s.rss_idle_mib:.1f} | {s.hwm_mib:.1f} | {s.per_connection_kib:.1f} "
                     f"| {met} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * args.connections + 100:  # both ends of every connection live here
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * args.connections), hard))
    app_port = free_port()
    app = subprocess.Popen([sys.executable, APP_SCRIPT, str(app_port)])  # bench_latency's app
    try:
        await wait_listening(app_port, 10)
        samples = [await measure(loop, args.connections, app_port) for loop in args.loops]
    finally:
        stop(app)
    print(table(samples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="drain-proxy RSS with idle keep-alive clients")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--loops", default=["uvloop", "asyncio"],
                        type=lambda s: s.split(","), help="comma-separated (default both)")
    asyncio.run(main(parser.parse_args()))
