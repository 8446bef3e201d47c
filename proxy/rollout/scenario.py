"""One simulated scale-down under load, per setup, in the running event loop.

The seeds measured a ``kubectl drain`` under load at 97.27 % success; this
reproduces that experiment's mechanism without a cluster.  Two pods, A and B,
sit behind a simulated Service (``Endpoints``); clients of every kind run
against it; then, on one schedule that is the same for every setup:

1. ``-before_s``: load starts, both pods serving.
2. ``0``: pod A gets SIGTERM and starts terminating the way its setup does.
3. ``propagation_delay_s``: the endpoints update reaches kube-proxy; new
   connections go to B only.  Established connections stay where they are.
4. ``window_s - slow_lead_s``: the slow client starts a download on pod A that
   lasts past the end of the window (the preStop sleep, or drain-proxy's
   propagation window).
5. Load stops shortly after that download would end; we wait for pod A to have
   exited, then stop pod B.

Only the pods' termination differs between setups, so the table compares like
with like.  The failures a setup shows are the ones its mechanism causes (refused
connections, dropped keep-alive connections, cut responses); nothing is tuned
towards a figure.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.rollout import clients
from proxy.rollout.clients import Pace, Session, Tally
from proxy.rollout.endpoints import Endpoints
from proxy.rollout.pods import Pod, PodSpec, Setup, SetupKind
from proxy.rollout.report import Event, Progress, ScenarioResult

PROGRESS_EVERY_S = 0.1
SETTLE_S = 0.3  # load goes on this long after the slow download would end
REQUEST_TIMEOUT_S = 5.0  # past the slow download's length; a stuck request is a failure


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """Scale and timing of one simulated scale-down; the defaults are the demo's."""

    propagation_delay_s: float = 1.0  # kube-proxy routes new connections to A this long
    window_s: float = 1.5  # drain-proxy's --propagation-window, and the preStop sleep
    before_s: float = 0.5  # load before pod A's SIGTERM
    keep_alive_clients: int = 8
    per_request_clients: int = 4
    idle_clients: int = 4
    slow_s: float = 0.6  # the slow download's length
    slow_lead_s: float = 0.2  # it starts this long before the end of the window (adaptive:
    # before the routing update, after which that window ends)
    think_s: float = 0.02  # mean pause between a client's requests
    service_s: float = 0.002  # the app's time per request
    max_requests_per_connection: int = 50  # drain-proxy's rotation budget, low enough to show
    drain_timeout_s: float = 5.0  # drain-proxy's --drain-timeout, above the slow download
    seed: int = 1

    @property
    def load_after_s(self) -> float:
        """When load stops, from SIGTERM: after the routing update and the slow download."""
        slow_end = self.window_s - self.slow_lead_s + self.slow_s
        return max(self.propagation_delay_s, slow_end) + SETTLE_S

    @property
    def client_count(self) -> int:
        return self.keep_alive_clients + self.per_request_clients + self.idle_clients + 1


ProgressCallback = Callable[[Progress], None]


class _Run:
    """State of one setup's run; times are the event loop's clock."""

    def __init__(self, setup: SetupKind, config: RolloutConfig) -> None:
        self.setup = setup
        self.config = config
        self.loop = asyncio.get_running_loop()
        spec = PodSpec(setup, config.window_s, config.drain_timeout_s,
                       config.max_requests_per_connection, config.service_s, config.slow_s,
                       config.seed)
        self.pod_a, self.pod_b = Pod("A", spec), Pod("B", spec)
        self.tally = Tally()
        self.sigterm_at = self.loop.time() + config.before_s  # reset once the pods are up
        self.events: list[tuple[float, str]] = []

    def note(self, text: str, at: float | None = None) -> None:
        self.events.append((self.loop.time() if at is None else at, text))

    def progress(self, index: int, total: int, done: bool = False) -> Progress:
        return Progress(self.setup.value, index, total, self.loop.time() - self.sigterm_at,
                        self.tally.requests, self.tally.failed, self.tally.retries,
                        self.pod_a.state, done)

    def result(self) -> ScenarioResult:
        assert self.pod_a.exited_at is not None
        # Stable: events noted at the same clock tick keep the order they were noted
        # in, which is causal (uvloop's clock has millisecond resolution).
        events = sorted((Event(at - self.sigterm_at, text) for at, text in self.events),
                        key=lambda event: event.at_s)
        return ScenarioResult(
            setup=self.setup.value, requests=self.tally.requests, retries=self.tally.retries,
            failures=dict(self.tally.failures),
            rotations=_sum_known(self.pod_a.rotations, self.pod_b.rotations),
            drain_s=self.pod_a.exited_at - self.sigterm_at, events=tuple(events),
            window_s=self.pod_a.window_s)

    @property
    def window_end_s(self) -> float:
        """When the slow download should be in flight, from SIGTERM: the end of the window.
        An adaptive window ends once routing has moved, so that is when it is aimed at."""
        if self.setup is Setup.DRAIN_PROXY_ADAPTIVE:
            return self.config.propagation_delay_s
        return self.config.window_s

    def load(self, endpoints: Endpoints) -> list[Coroutine[Any, Any, None]]:
        """Every client of the run, as coroutines to start together."""
        config = self.config
        stop_at = self.sigterm_at + config.load_after_s
        self.events.append((stop_at, "load stops: no client starts another request"))
        pace = Pace(stop_at, config.think_s, config.window_s, random.Random(config.seed))

        def session() -> Session:
            return Session(endpoints, self.tally, config.slow_s + REQUEST_TIMEOUT_S)

        slow_at = self.sigterm_at + self.window_end_s - config.slow_lead_s
        return [
            *(clients.keep_alive_client(session(), pace)
              for _ in range(config.keep_alive_clients)),
            *(clients.per_request_client(session(), pace)
              for _ in range(config.per_request_clients)),
            *(clients.idle_client(session(), pace) for _ in range(config.idle_clients)),
            clients.slow_client(session(), pace, (self.pod_a.name, self.pod_a.port), slow_at,
                                self.note),
        ]

    async def sigterm_and_routing(self, endpoints: Endpoints) -> None:
        """Steps 2 and 3 of the schedule; returns once pod A has exited."""
        await _sleep_until(self.sigterm_at)
        self.sigterm_at = self.loop.time()  # the origin of the timeline, as it happened
        self.note(f"SIGTERM to pod {self.pod_a.name}")
        terminating = self.loop.create_task(self.pod_a.terminate(self.note))
        await _sleep_until(self.sigterm_at + self.config.propagation_delay_s)
        endpoints.remove(self.pod_a.name)
        self.note(f"endpoints update reaches kube-proxy: new connections go to pod "
                  f"{self.pod_b.name} only")
        await terminating


def _sum_known(a: int | None, b: int | None) -> int | None:
    """Both pods' rotations, or None when a pod's are unknown (an external sidecar's)."""
    return None if a is None or b is None else a + b


async def _sleep_until(when: float) -> None:
    """Wait for a moment of the schedule (simulated time passing, not synchronisation)."""
    await asyncio.sleep(max(0.0, when - asyncio.get_running_loop().time()))


async def _report_progress(run: _Run, callback: ProgressCallback, index: int,
                           total: int) -> None:
    while True:
        callback(run.progress(index, total))
        await asyncio.sleep(PROGRESS_EVERY_S)


async def run_setup(setup: SetupKind, config: RolloutConfig,
                    progress: ProgressCallback | None = None, index: int = 1,
                    total: int = 1) -> ScenarioResult:
    """Run the whole schedule for one setup and return what the clients saw."""
    run = _Run(setup, config)
    try:
        for pod in (run.pod_a, run.pod_b):
            await pod.start()
        endpoints = Endpoints({run.pod_a.name: run.pod_a.port, run.pod_b.name: run.pod_b.port})
        run.sigterm_at = run.loop.time() + config.before_s
        run.note(f"load starts: {config.client_count} clients, pods A and B serving")
        load = [run.loop.create_task(client) for client in run.load(endpoints)]
        reporter = (run.loop.create_task(_report_progress(run, progress, index, total))
                    if progress is not None else None)
        tasks = [*load, *([reporter] if reporter is not None else [])]
        try:
            await run.sigterm_and_routing(endpoints)
            await asyncio.gather(*load)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if progress is not None:
            progress(run.progress(index, total, done=True))
        return run.result()
    finally:
        await run.pod_a.stop()
        await run.pod_b.stop()


async def run_rollout(config: RolloutConfig, setups: Sequence[SetupKind] = tuple(Setup),
                      progress: ProgressCallback | None = None) -> list[ScenarioResult]:
    """Run each setup in turn (never at the same time: they would share the CPU)."""
    return [await run_setup(setup, config, progress, index, len(setups))
            for index, setup in enumerate(setups, start=1)]
