"""A proxy that runs as its own process in front of a simulated pod's app.

The simulation compares drain-proxy with other proxies people put in front of an app for a
graceful drain, without knowing any of them: an ``ExternalSidecar`` is a row name and a
function that returns the command line that runs the proxy on a given listen address, in
front of a given upstream, with its files in a given directory.  The caller (``benchmarks/
rollout.py``) decides what the proxy is and how its drain is configured.

What the pod does with it: start it, poll until a GET through it is answered 200 (a process
gives no other sign of being ready), and on the pod's SIGTERM send SIGTERM to its PID and
wait for it to exit; the app stops after that, as if a ``preStop`` hook held the app's SIGTERM
until the proxy had drained (the order drain-proxy gets from ``GET /drain``).  A proxy that
has not exited ``kill_after_s`` after SIGTERM gets SIGKILL, as kubelet's
``terminationGracePeriodSeconds`` would.  Nothing inside the process is observed, so its
rotations are unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

READY_DEADLINE_S = 15.0
POLL_S = 0.05


@dataclass(frozen=True)
class ExternalSidecar:
    """How to run one external proxy: ``command(listen, upstream, workdir)`` is its argv
    (addresses are ``host:port``); ``name`` is the row name in the results."""

    name: str
    command: Callable[[str, str, Path], list[str]]

    @property
    def value(self) -> str:
        """The row name, as ``Setup.value`` is for the built-in setups."""
        return self.name


def free_port() -> int:
    """A port the kernel picked as free; the external process binds it a moment later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def answers_200(port: int) -> bool:
    """One ``GET /`` through the proxy on a new connection: True on a 200 status line."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: rollout\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 1.0)
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class SidecarProcess:
    """One running external proxy, in front of the app on ``upstream_port``."""

    def __init__(self, sidecar: ExternalSidecar, upstream_port: int) -> None:
        self.sidecar = sidecar
        self.upstream_port = upstream_port
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="rollout-sidecar-")
        self._log = Path(self._dir.name) / "output.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> None:
        """Start the process; return once it proxies a GET with a 200."""
        argv = self.sidecar.command(f"127.0.0.1:{self.port}",
                                    f"127.0.0.1:{self.upstream_port}", Path(self._dir.name))
        with open(self._log, "wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_DEADLINE_S
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(f"{self.sidecar.name} exited with code "
                                   f"{self._proc.returncode} at start: {self.output_tail()}")
            if await answers_200(self.port):
                return
            await asyncio.sleep(POLL_S)  # polling: the process gives no other sign of readiness
        raise RuntimeError(f"{self.sidecar.name} did not answer 200 through port {self.port} "
                           f"within {READY_DEADLINE_S:g} s: {self.output_tail()}")

    def output_tail(self) -> str:
        """The last lines the process wrote, for error messages."""
        with contextlib.suppress(OSError):
            return " / ".join(self._log.read_text(errors="replace").splitlines()[-3:])[:300]
        return ""

    async def terminate(self, kill_after_s: float) -> tuple[int, bool]:
        """SIGTERM to the PID, wait for the exit; SIGKILL after ``kill_after_s``.
        Returns (exit code, whether it had to be killed)."""
        assert self._proc is not None
        if self._proc.returncode is None:
            os.kill(self._proc.pid, signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self._proc.wait(), kill_after_s)
        except TimeoutError:
            await self.kill()
            return self._proc.returncode or -signal.SIGKILL, True
        return code, False

    async def kill(self) -> None:
        """Stop at once (SIGKILL to the PID if it still runs) and remove its directory."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
        self._dir.cleanup()
