"""The kernel rollout's pods: real processes in the pods' namespaces, per setup.

Every pod serves on ``<pod address>:8080``.  What is there, and what SIGTERM does:

- **naive**: the app itself; SIGTERM kills it (no handler), the kernel closes its
  listener and connections;
- **preStop sleep**: the same app; the kubelet runs ``sleep <preStop>`` first, then
  the SIGTERM kills it just as abruptly;
- **drain-proxy**: ``python -m proxy`` on the pod address, the app on the pod's
  127.0.0.1:8081; SIGTERM goes to the proxy, and the app is stopped once the proxy
  has exited (the app container's ``preStop: GET /drain`` in ``deploy/`` holds the
  app's SIGTERM until the drain is over);
- **drain-proxy adaptive**: the same with ``--adaptive-window``: the window is the
  maximum, ``--min-propagation-window`` the minimum;
- **traefik**, **caddy**: the same as drain-proxy with that server as the sidecar,
  configured by ``peers.sidecar_command``.

``ip netns exec`` execs its command, so each process's PID is the server's own, and
the signals go straight to it, as the kubelet's go to a container's PID 1.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from machine import proxy_home
from netns import POD_PORT, PodNet

APP_SCRIPT = Path(__file__).resolve().parent / "kernel_pod_app.py"
APP_BEHIND_SIDECAR = "127.0.0.1:8081"
CORE_SETUPS = ("naive", "prestop-sleep", "drain-proxy", "drain-proxy-adaptive")
DRAIN_PROXY_SETUPS = ("drain-proxy", "drain-proxy-adaptive")
TITLES = {"naive": "naive", "prestop-sleep": "preStop sleep", "drain-proxy": "drain-proxy",
          "drain-proxy-adaptive": "drain-proxy adaptive", "traefik": "Traefik",
          "caddy": "Caddy"}


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What every pod of one run looks like."""

    setup: str
    window_s: float  # the sidecar's propagation window (adaptive: its maximum)
    drain_timeout_s: float
    max_requests_per_connection: int
    service_s: float
    prestop_s: float | None = None  # the preStop sleep; None: the window
    min_window_s: float = 1.0  # adaptive: the window's minimum

    @property
    def sleep_s(self) -> float:
        return self.window_s if self.prestop_s is None else self.prestop_s


Note = Callable[[str], None]


class PodFailed(Exception):
    """A pod's process could not start (say, a flag this build of drain-proxy lacks)."""


class Pod:
    """One pod's processes: ``start``, ``terminate`` (the rollout) or ``kill`` (the end)."""

    def __init__(self, net: PodNet, spec: PodSpec) -> None:
        self.net = net
        self.spec = spec
        self.app: asyncio.subprocess.Process | None = None
        self.sidecar: asyncio.subprocess.Process | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="kernel-rollout-")
        self._sidecar_log = Path(self._workdir.name) / "sidecar.log"

    @property
    def listen(self) -> str:
        return f"{self.net.address}:{POD_PORT}"

    async def start(self) -> None:
        sidecar = sidecar_command(self.spec, self.listen, APP_BEHIND_SIDECAR,
                                  Path(self._workdir.name))
        self.app = await self._spawn([
            sys.executable, str(APP_SCRIPT), "--name", self.net.name,
            "--listen", APP_BEHIND_SIDECAR if sidecar else self.listen,
            "--service-time", str(self.spec.service_s)])
        if sidecar:
            with self._sidecar_log.open("wb") as log:  # the child keeps its own descriptor
                self.sidecar = await self._spawn(sidecar, stderr=log)

    async def _spawn(self, argv: list[str],
                     stderr: IO[bytes] | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.net.netns, *argv, cwd=proxy_home(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr)

    def window_report(self) -> tuple[float | None, str, str]:
        """drain-proxy's propagation window as it logged it: how long it lasted (its
        ``phase draining`` JSON line: how long ``propagating`` lasted), why it ended (the
        ``window_end`` of its ``propagation window ended`` line, where the build has one)
        and that line's words; (None, "", "") for any other setup or before the end."""
        if self.spec.setup not in DRAIN_PROXY_SETUPS or not self._sidecar_log.exists():
            return None, "", ""
        lasted, reason, words = None, "", ""
        for line in self._sidecar_log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("phase") == "draining" and "lasted_s" in entry:
                lasted = float(entry["lasted_s"])
            elif "window_end" in entry:
                reason, words = str(entry["window_end"]), str(entry.get("message", ""))
        return lasted, reason, words

    def sidecar_log(self) -> str:
        return self._sidecar_log.read_text(errors="replace") if self._sidecar_log.exists() else ""

    async def wait_listening(self, timeout_s: float = 10.0) -> None:
        """Until the pod's port (and, behind a sidecar, the app's) is listening, seen from
        inside the pod: a readiness check that opens no connection, so the pod's server
        sees no peer but the clients (for drain-proxy's adaptive window every peer address
        is a source whose traffic it watches)."""
        wanted = [f"{self.listen}"] + ([APP_BEHIND_SIDECAR] if self.sidecar else [])
        async with asyncio.timeout(timeout_s):
            while True:
                ss = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", self.net.netns, "ss", "-Hltn",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
                listed = (await ss.communicate())[0].decode()
                if all(address in listed for address in wanted):
                    return
                self._check_running()
                await asyncio.sleep(0.05)

    def _check_running(self) -> None:
        for process, what in ((self.sidecar, TITLES[self.spec.setup]), (self.app, "the app")):
            if process is not None and process.returncode is not None:
                said = self.sidecar_log().strip().splitlines() if process is self.sidecar else []
                raise PodFailed(f"pod {self.net.name}: {what} exited ({process.returncode}) "
                                f"before listening: {said[-1] if said else 'no message'}")

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Until the pod answers ``/`` on its address with its name (the readiness the
        Endpoints controller waits for before it adds a pod to the Service)."""
        async with asyncio.timeout(timeout_s):
            while not await self._answers():
                await asyncio.sleep(0.05)

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection(self.net.address, POD_PORT)
        except OSError:
            return False
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
        except OSError:
            return False
        finally:
            writer.close()
        return answer.startswith(b"HTTP/1.1 200") and answer.endswith(f"{self.net.name}\n".encode())

    async def terminate(self, note: Note) -> None:
        """The kubelet's side of a pod deletion; returns once every process has exited."""
        assert self.app is not None
        if self.spec.setup == "prestop-sleep":
            note(f"pod {self.net.name}: preStop sleep {self.spec.sleep_s:g} s, still serving")
            await asyncio.sleep(self.spec.sleep_s)  # the hook's sleep is the thing modelled
        if self.sidecar is not None:
            self.sidecar.send_signal(signal.SIGTERM)
            code = await self.sidecar.wait()
            note(f"pod {self.net.name}: {TITLES[self.spec.setup]} exited ({code}); "
                 "preStop returns, SIGTERM to the app")
        self.app.send_signal(signal.SIGTERM)
        await self.app.wait()
        note(f"pod {self.net.name} exited")

    async def kill(self) -> None:
        """End of the run, or a failure: nothing is left to be graceful for."""
        for process in (self.sidecar, self.app):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        self._workdir.cleanup()


def sidecar_command(spec: PodSpec, listen: str, upstream: str, workdir: Path) -> list[str]:
    """The sidecar's argv for the setup, or [] when the app serves the pod port itself."""
    if spec.setup in ("naive", "prestop-sleep"):
        return []
    if spec.setup in DRAIN_PROXY_SETUPS:
        adaptive = (["--adaptive-window", "--min-propagation-window", str(spec.min_window_s)]
                    if spec.setup == "drain-proxy-adaptive" else [])
        return [sys.executable, "-m", "proxy", "--listen", listen, "--upstream", upstream,
                "--admin", "127.0.0.1:9901", "--propagation-window", str(spec.window_s),
                *adaptive, "--drain-timeout", str(spec.drain_timeout_s),
                "--max-requests-per-connection", str(spec.max_requests_per_connection),
                "--log-level", "info", "--log-format", "json"]
    import peers  # the peers' flags live with the peers' benchmark
    return peers.sidecar_command(spec.setup, listen, upstream, spec.window_s,
                                 spec.drain_timeout_s, workdir,
                                 max_requests_per_connection=spec.max_requests_per_connection)
