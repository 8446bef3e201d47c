"""A simulated pod: the app, optionally drain-proxy in front of it, and how it terminates.

Everything runs in the caller's event loop on 127.0.0.1 ports, so a pod's "IP"
is the loopback port the Service routes to: drain-proxy's when the pod has one,
else the app's.

The three setups differ only in what the pod does between SIGTERM and exit:

- **naive**: the app exits on SIGTERM.  Its listener closes (new connections still
  routed here are refused) and every open connection drops.
- **preStop sleep**: what the seeds recommend without a proxy.  A ``preStop: sleep``
  delays the app's SIGTERM, so it goes on serving while routing catches up, then
  exits just as abruptly: keep-alive clients were never told to leave, and
  whatever is in flight at that moment is cut.
- **an external sidecar** (``external.ExternalSidecar``): another proxy, run as a process
  from a command the caller gives; it gets SIGTERM and the app stops once it has exited.
- **drain-proxy**: what ``deploy/`` does.  The proxy gets SIGTERM and runs its
  drain; the app's ``preStop`` hook (``GET /drain``) holds the app's SIGTERM until
  the drain is over, then the app stops with nothing left to serve.  The drain is
  driven through the coordinator's signal path, exactly as the process's SIGTERM
  handler drives it.
- **drain-proxy adaptive**: the same with ``--adaptive-window`` and the default
  maximum of 10 s: its window ends once routing has moved, not at a guessed time.
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass
from typing import Protocol

from proxy.drain.lifecycle import Phase
from proxy.rollout.app import App
from proxy.rollout.external import ExternalSidecar, SidecarProcess
from proxy.server import ProxyServer
from proxy.settings import parse_settings

CLOSED = "drain_proxy_connections_closed_total"
ROTATION_REASONS = ("max_requests", "max_age")


class Setup(enum.Enum):
    """How a pod terminates; the values are the table's row names."""

    NAIVE = "naive"
    PRESTOP_SLEEP = "preStop sleep"
    DRAIN_PROXY = "drain-proxy"
    DRAIN_PROXY_ADAPTIVE = "drain-proxy adaptive"


DRAIN_PROXY_SETUPS = (Setup.DRAIN_PROXY, Setup.DRAIN_PROXY_ADAPTIVE)
# The adaptive run's --propagation-window, its maximum: the default, as a pod runs it.
ADAPTIVE_MAXIMUM_S = 10.0


SetupKind = Setup | ExternalSidecar  # a built-in setup, or a proxy run from a command
KILL_MARGIN_S = 2.0  # an external sidecar is killed this long after its window + drain timeout


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What every pod of one run looks like."""

    setup: SetupKind
    window_s: float  # the preStop sleep, or drain-proxy's --propagation-window
    drain_timeout_s: float
    max_requests_per_connection: int
    service_s: float
    slow_s: float
    seed: int


class Note(Protocol):
    """Records a timeline event, at ``at`` (loop time) or now; ties keep their order."""

    def __call__(self, text: str, at: float | None = None) -> None: ...


class Pod:
    """One pod: start it, route to ``port``, then ``terminate`` or ``stop`` it."""

    def __init__(self, name: str, spec: PodSpec) -> None:
        self.name = name
        self.spec = spec
        self.app = App(spec.service_s, spec.slow_s)
        self.proxy: ProxyServer | None = None
        self.sidecar: SidecarProcess | None = None
        self.exited_at: float | None = None  # loop time
        self._state = "serving"

    async def start(self) -> None:
        await self.app.start()
        if self.spec.setup in DRAIN_PROXY_SETUPS:
            self.proxy = ProxyServer(parse_settings(self._proxy_flags(), environ={}),
                                     rng=random.Random(f"{self.spec.seed}-{self.name}"))
            await self.proxy.start()
        elif isinstance(self.spec.setup, ExternalSidecar):
            self.sidecar = SidecarProcess(self.spec.setup, self.app.port)
            await self.sidecar.start()

    def _proxy_flags(self) -> list[str]:
        spec = self.spec
        adaptive = spec.setup is Setup.DRAIN_PROXY_ADAPTIVE
        window = ["--adaptive-window", "--propagation-window", str(ADAPTIVE_MAXIMUM_S)] \
            if adaptive else ["--propagation-window", str(spec.window_s)]
        return ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                "--upstream", f"127.0.0.1:{self.app.port}", *window,
                "--drain-timeout", str(spec.drain_timeout_s),
                "--max-requests-per-connection", str(spec.max_requests_per_connection)]

    @property
    def window_s(self) -> float | None:
        """How long this pod went on accepting after SIGTERM (``report.COLUMNS``' window)."""
        if self.spec.setup is Setup.PRESTOP_SLEEP:
            return self.spec.window_s
        if self.proxy is None or self.proxy.ctx.timeline.window is None:
            return None
        lasted = self.proxy.ctx.timeline.window["lasted_seconds"]
        return float(lasted) if isinstance(lasted, (int, float)) else None

    @property
    def port(self) -> int:
        """Where the Service sends this pod's connections."""
        if self.sidecar is not None:
            return self.sidecar.port
        return self.proxy.port if self.proxy is not None else self.app.port

    @property
    def state(self) -> str:
        """For the progress line: serving, preStop sleep, a drain phase, or exited."""
        if self.proxy is not None and self._state == "serving":
            return self.proxy.ctx.timeline.phase.value
        return self._state

    @property
    def rotations(self) -> int | None:
        """Connections drain-proxy ended for their request budget or age (none without it);
        None (unknown) for an external sidecar, whose inside is not observed."""
        if self.sidecar is not None:
            return None
        return rotations_counted(self.proxy, CLOSED)

    async def terminate(self, note: Note) -> None:
        """SIGTERM: behave as the setup does; return once the pod has exited."""
        if self.spec.setup is Setup.PRESTOP_SLEEP:
            self._state = "preStop sleep"
            note(f"pod {self.name}: preStop sleep {self.spec.window_s:g} s, still serving")
            await asyncio.sleep(self.spec.window_s)  # the hook's sleep is the thing simulated
        elif self.spec.setup in DRAIN_PROXY_SETUPS:
            await self._drain(note)
        elif self.sidecar is not None:
            await self._terminate_sidecar(self.sidecar, note)
        self.app.kill()
        if self.proxy is not None:
            await self.proxy.close()
        self._state = "exited"
        self.exited_at = asyncio.get_running_loop().time()
        note(f"pod {self.name} exited" + _how_it_exits(self.spec.setup))

    async def _drain(self, note: Note) -> None:
        """The proxy's SIGTERM path; its phase changes go on the timeline at the times
        the proxy recorded, so the simulation needs no hook inside the drain."""
        assert self.proxy is not None and self.proxy.coordinator is not None
        coordinator, timeline = self.proxy.coordinator, self.proxy.ctx.timeline
        coordinator.on_signal("SIGTERM")
        prefix = f"drain-proxy on pod {self.name}"
        note(f"{prefix}: propagating: readiness 503, responses say Connection: close",
             at=timeline.entered_at[Phase.PROPAGATING])
        await coordinator.wait_exit()  # the app's preStop (GET /drain) returns now
        ended_by = str((timeline.window or {}).get("ended_by", "fixed"))
        why = "" if ended_by == "fixed" else f" (window: {ended_by.replace('_', ' ')})"
        note(f"{prefix}: draining{why}: listener closed, idle connections closed",
             at=timeline.entered_at[Phase.DRAINING])
        note(f"{prefix}: drained: {timeline.served_while_draining} responses since SIGTERM, "
             f"{timeline.cut_requests} requests cut", at=timeline.entered_at[Phase.DRAINED])

    async def _terminate_sidecar(self, sidecar: SidecarProcess, note: Note) -> None:
        """SIGTERM to the sidecar's PID; the app's stop waits for its exit."""
        self._state = "SIGTERM sent"
        name = sidecar.sidecar.name
        note(f"{name} on pod {self.name}: SIGTERM to PID {sidecar.pid}")
        kill_after = self.spec.window_s + self.spec.drain_timeout_s + KILL_MARGIN_S
        code, killed = await sidecar.terminate(kill_after)
        await sidecar.kill()  # removes its directory; the process has exited
        note(f"{name} on pod {self.name}: " + (f"killed after {kill_after:g} s" if killed
                                               else f"exited with code {code}"))

    async def stop(self) -> None:
        """End of the run (pod B): stop at once, no client is left to notice."""
        if self._state == "exited":
            return
        self.app.kill()
        if self.proxy is not None:
            await self.proxy.close()
        if self.sidecar is not None:
            await self.sidecar.kill()
        self._state = "exited"


def _how_it_exits(setup: SetupKind) -> str:
    if isinstance(setup, ExternalSidecar):
        return f": {setup.name} exited, then the app stopped"
    return _HOW_IT_EXITS[setup]


_HOW_IT_EXITS = {
    Setup.NAIVE: ": listener closed, open connections dropped",
    Setup.PRESTOP_SLEEP: " after its preStop sleep: listener closed, open connections dropped",
    Setup.DRAIN_PROXY: ": its preStop hook returned, the app stopped, the proxy exited",
    Setup.DRAIN_PROXY_ADAPTIVE: ": its preStop hook returned, the app stopped, the proxy "
                                "exited",
}


def rotations_counted(proxy: ProxyServer | None, metric: str) -> int:
    """The sum of ``metric`` over the rotation reasons (0 without a proxy): the keep-alive
    closes, or the HTTP/2 GOAWAYs, of the request budget and the age limit."""
    if proxy is None:
        return 0
    registry = proxy.metrics.registry
    return sum(int(registry.get_sample_value(metric, {"reason": reason}) or 0)
               for reason in ROTATION_REASONS)
