"""Runs the drain timeline of ``lifecycle`` against the real listener and connections.

The sequence and its reasons are in ``proxy.lifecycle``; this module executes it
in that order.  Waits are on events (the last in-flight request ending, a second
signal), each bounded by its deadline; nothing polls.  We never rely on
``asyncio.Server.wait_closed()``: on Python 3.11.7 it waits for every open
connection and uvloop behaves differently again.

Signals only change state: the first SIGTERM/SIGINT starts the drain (or joins
one started by ``/drain``) and asks for exit once it is over; a second one skips
to the deadline.  ``/drain`` starts the same drain without asking for exit, so a
preStop hook can hold the app until we are done and SIGTERM then exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.context import InFlight, ProxyContext
from proxy.lifecycle import Phase
from proxy.listener import Listener

log = logging.getLogger("drain_proxy.drain")


class DrainCoordinator:
    """Owns the drain task; answers "is it over?" and "may the process exit?"."""

    def __init__(self, ctx: ProxyContext, listener: Listener) -> None:
        self._ctx = ctx
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._force = asyncio.Event()
        self._drained = asyncio.Event()
        self._exit_requested = asyncio.Event()
        self._signals = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def drained(self) -> bool:
        return self._drained.is_set()

    @property
    def exit_code(self) -> int:
        """0 when the drain cut nothing; 1 when the deadline or a second signal cut work."""
        timeline = self._ctx.timeline
        return 1 if timeline.cut_requests or timeline.forced else 0

    def trigger(self, source: str) -> None:
        """Start the drain (a no-op once started): state change plus one task."""
        if not self._ctx.timeline.trigger(self._loop.time()):
            return
        self._ctx.metrics.drain_started.set(time.time())
        self._on_phase(Phase.PROPAGATING, 0.0, source)
        self._task = self._loop.create_task(self._run())

    def on_signal(self, name: str) -> None:
        """Signal handler: first signal drains then exits, a second one forces."""
        self._signals += 1
        self._exit_requested.set()
        if self._signals == 1:
            self.trigger(name)
        elif not self.drained:
            log.warning("second %s: skipping to the drain deadline", name)
            self._ctx.timeline.forced = True
            self._force.set()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    async def wait_exit(self) -> None:
        """Return when the process should exit: a signal came and the drain is over."""
        await self._exit_requested.wait()
        await self._drained.wait()

    async def _run(self) -> None:
        settings = self._ctx.settings
        await self._wait_for_any([self._force], settings.propagation_window_s)
        self._move(Phase.DRAINING)
        self._listener.close()
        for connection in list(self._ctx.connections):
            connection.drain()
        await asyncio.gather(
            self._settle(self._ctx.in_flight, settings.drain_timeout_s, self._cut_requests),
            self._settle(self._ctx.tunnels_in_flight, settings.tunnel_drain_timeout_s,
                         self._cut_tunnels))
        self._ctx.pool.close()
        self._move(Phase.DRAINED)
        self._drained.set()

    async def _wait_for_any(self, events: list[asyncio.Event], timeout_s: float,
                            *tasks: asyncio.Task[None]) -> None:
        waiters = [self._loop.create_task(event.wait()) for event in events] + list(tasks)
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _settle(self, in_flight: InFlight, timeout_s: float,
                      cut: Callable[[], None]) -> None:
        """Wait until ``in_flight`` is empty, a second signal, or the timeout; then cut."""
        if not self._force.is_set():
            idle = self._loop.create_task(in_flight.wait_idle())
            await self._wait_for_any([self._force], timeout_s, idle)
        if in_flight.count:
            cut()

    def _cut_requests(self) -> None:
        cut = sum(connection.cut() for connection in list(self._ctx.connections))
        self._ctx.timeline.cut_requests += cut
        self._ctx.metrics.requests_cut.inc(cut)
        log.warning("drain deadline: cut %d in-flight requests", cut)

    def _cut_tunnels(self) -> None:
        tunnels = list(self._ctx.tunnels)
        for tunnel in tunnels:
            tunnel.cut("drain_deadline")
        self._ctx.timeline.cut_tunnels += len(tunnels)
        self._ctx.metrics.tunnels_cut.inc(len(tunnels))
        log.warning("tunnel drain deadline: cut %d tunnels", len(tunnels))

    def _move(self, phase: Phase) -> None:
        timeline = self._ctx.timeline
        previous = timeline.phase
        lasted = timeline.move_to(phase, self._loop.time())
        self._ctx.metrics.phase_duration.labels(previous.value).set(lasted)
        self._on_phase(phase, lasted, previous.value)

    def _on_phase(self, phase: Phase, lasted: float, after: str) -> None:
        timeline = self._ctx.timeline
        self._ctx.metrics.phase.state(phase.value)
        log.info(
            "phase %s (after %s, %.3fs): connections=%d in_flight=%d accepted_while_draining=%d "
            "served_while_draining=%d closed_by_drain=%d cut=%d tunnels=%d",
            phase.value, after, lasted, len(self._ctx.connections), self._ctx.in_flight.count,
            timeline.accepted_while_draining, timeline.served_while_draining,
            timeline.connections_closed_by_drain, timeline.cut_requests, len(self._ctx.tunnels))
