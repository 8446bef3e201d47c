"""Runs the drain timeline of ``lifecycle`` against the real listener and connections.

The sequence and its reasons are in ``proxy.drain.lifecycle``; this module executes it in
that order.  Completion is observed, not sampled: the drain is over when the
connection tracker has no connection left (``proxy.drain.tracker``), awaited in a loop
with the deadline, so a request that starts after another one ended is waited for
too.  Nothing polls.  We never rely on ``asyncio.Server.wait_closed()``: on Python
3.11.7 it waits for every open connection and uvloop behaves differently again.

The drain task is supervised: whatever fails inside it, what is left is cut and
counted, the phase reaches ``drained`` and the process exits (with 1).

Signals only change state: the first SIGTERM/SIGINT starts the drain (or joins one
started by ``/drain``) and asks for exit once it is over; a second one skips to the
deadline.  ``/drain`` starts the same drain without asking for exit, so a preStop
hook can hold the app until we are done and SIGTERM then exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from proxy.drain.lifecycle import Phase
from proxy.drain.listener import Listener, Pause
from proxy.drain.tracker import Kind
from proxy.drain.window import WindowBounds, WindowDecision, WindowEnd
from proxy.drain.window_report import explain_window_end, window_summary
from proxy.http1.context import HttpContext
from proxy.telemetry.logs import fields

log = logging.getLogger("drain_proxy.drain")
# A pod termination sends SIGTERM within its grace period of the preStop's /drain; this
# much later, a drain nobody followed up is undone.
UNDO_MARGIN_S = 2.0
# New connections come in runs: the adaptive window is decided again once per run, this
# long after its first arrival, not once per connection (a decision over a thousand
# sources costs about a millisecond).
DECIDE_AGAIN_AFTER_ARRIVAL_S = 0.05
# Loop turns given to accepts already under way before a silence is believed: asyncio
# accepts in one callback and makes the connection in a task scheduled after it.
UNSEEN_ARRIVAL_TURNS = 3


class DrainCoordinator:
    """Owns the drain task; answers "is it over?" and "may the process exit?"."""

    def __init__(self, ctx: HttpContext, listener: Listener) -> None:
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
        """0 when the drain cut no request; 1 when it did, or when the drain itself failed.
        A second signal alone does not make it 1: it only matters if it cut something."""
        timeline = self._ctx.timeline
        return 1 if timeline.cut_requests or timeline.failed else 0

    def trigger(self, source: str) -> None:
        """Start the drain (a no-op once started): state change plus one task."""
        if not self._ctx.begin_drain(self._loop.time()):
            return
        self._ctx.metrics.drain_started.set(time.time())
        self._on_phase(Phase.PROPAGATING, 0.0, source)
        for connection in list(self._ctx.h2_connections):
            connection.goaway("drain")  # at once, not on its next request
        log.info("%s", self._plan(source))
        self._task = self._loop.create_task(self._supervised())

    def _plan(self, source: str) -> str:
        """What happens now and when the process exits at the latest, for the operator."""
        settings = self._ctx.settings
        readiness = ("readiness failing" if self._ctx.timeline.fail_readiness_on_drain
                     else "readiness kept (--readiness-on-drain keep)")
        window = settings.propagation_window_s
        longest = max(settings.drain_timeout_s, settings.tunnel_drain_timeout_s)
        accepting = settings.window_description
        if source.startswith("SIG"):
            return (f"{source}: {readiness}; accepting for {accepting}; exit by "
                    f"{window + longest:g} s; signal again to stop now")
        undo = settings.termination_grace_period_s + UNDO_MARGIN_S
        return (f"{source}: {readiness}; accepting for {accepting}, then draining for up to "
                f"{longest:g} s; running until SIGTERM, which then exits at once (without "
                f"one, the drain is undone after {undo:g} s)")

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

    @property
    def running(self) -> bool:
        """The drain task is at work: draining, or watching for the SIGTERM that makes a
        /drain a pod termination."""
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        """Stop the drain task, if any (the process is closing)."""
        if self._task is not None:
            self._task.cancel()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    async def wait_exit(self) -> None:
        """Return when the process should exit: a signal came and the drain is over."""
        await self._exit_requested.wait()
        await self._drained.wait()

    async def _supervised(self) -> None:
        triggered_at = self._loop.time()
        try:
            await self._sequence()
        except Exception:
            log.exception("the drain failed; cutting every connection left")
            self._ctx.timeline.failed = True
            self._cut(tunnels=False)
            self._cut(tunnels=True)
        finally:
            self._ctx.pool.close()
            if self._ctx.timeline.phase is Phase.PROPAGATING:
                self._move(Phase.DRAINING)
            self._move(Phase.DRAINED)
            self._drained.set()
        await self._undo_unless_terminated(triggered_at)

    async def _undo_unless_terminated(self, triggered_at: float) -> None:
        """A drain that /drain started and no SIGTERM followed within the pod's grace
        period was not a pod termination (kubelet sends SIGTERM by then): a stray or
        hostile /drain, or a preStop hook of a container that was restarted.  Staying
        drained would keep the pod out of its Service for good, so serve again."""
        grace = self._ctx.settings.termination_grace_period_s + UNDO_MARGIN_S
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(triggered_at + grace):
                await self._exit_requested.wait()
                return  # a signal came: a real termination, the process exits
        try:
            await self._listener.reopen()
        except OSError as error:
            log.error("a drain without SIGTERM could not be undone: --listen: cannot "
                      "listen again: %s", error.strerror)
            return
        if self._exit_requested.is_set():
            # A signal landed while the listener reopened: a termination after all.  Its
            # trigger joined this (finished) drain, so the drain must stay done.
            self._listener.close()
            return
        self._ctx.pool.reopen()
        self._ctx.end_drain(self._loop.time())
        self._drained.clear()
        self._force.clear()
        self._ctx.metrics.drains_undone.inc()
        self._ctx.metrics.drain_started.set(0)
        self._ctx.metrics.set_phase(Phase.SERVING.value)
        log.warning("drain undone: no SIGTERM within the termination grace period (%.0f s) "
                    "plus %.0f s of /drain, so it was not a pod termination; ready and "
                    "accepting again", self._ctx.settings.termination_grace_period_s,
                    UNDO_MARGIN_S)

    async def _sequence(self) -> None:
        settings = self._ctx.settings
        await self._window()
        self._move(Phase.DRAINING)
        self._listener.pause(Pause.DRAIN)
        for connection in self._ctx.connections.connections(Kind.HTTP, Kind.TUNNEL):
            connection.drain()  # a TCP-mode tunnel closes at its first quiet moment
        await asyncio.gather(
            self._listener.stop_accepting(),
            self._settle(tunnels=False, timeout_s=settings.drain_timeout_s),
            self._settle(tunnels=True, timeout_s=settings.tunnel_drain_timeout_s))

    async def _window(self) -> None:
        """The propagation window: --propagation-window long, or with --adaptive-window
        until the decision of ``drain.window`` says that routing has moved."""
        settings, arrivals = self._ctx.settings, self._ctx.arrivals
        if arrivals is None:
            await self._first_of([], settings.propagation_window_s)
            self._window_ended(WindowEnd.FORCED if self._force.is_set() else WindowEnd.FIXED)
            return
        arrivals.trigger(self._ctx.timeline.entered_at[Phase.PROPAGATING])
        bounds = WindowBounds(settings.min_propagation_window_s, settings.propagation_window_s)
        arrived = self._ctx.arrived_in_window
        arrived.clear()
        decision = arrivals.decide(self._loop.time(), bounds, self._answering())
        while not self._force.is_set():
            if not decision.ended:
                await self._first_of([arrived.wait()],
                                     decision.decide_again_at - self._loop.time())
                if arrived.is_set():  # arrivals come in runs: decide once per run
                    await self._first_of([], DECIDE_AGAIN_AFTER_ARRIVAL_S)
            elif decision.reason is WindowEnd.MAXIMUM or not await self._unseen_arrivals():
                break
            else:  # silence we may not have seen the end of: let those arrivals count
                await self._first_of([], DECIDE_AGAIN_AFTER_ARRIVAL_S)
            arrived.clear()
            decision = arrivals.decide(self._loop.time(), bounds, self._answering())
        reason = decision.reason
        if self._force.is_set() or reason is None:
            reason = WindowEnd.FORCED
        self._window_ended(reason, decision)

    def _answering(self) -> frozenset[str]:
        return self._ctx.connections.sources_awaiting_answers()

    async def _unseen_arrivals(self) -> bool:
        """Whether a silence may be our own: a process that was stalled (CPU throttling,
        a long callback) has connections in the backlog, or accepted and not yet
        registered, that it has not counted.  Let the loop run them, then look."""
        for _ in range(UNSEEN_ARRIVAL_TURNS):
            await asyncio.sleep(0)
        return self._ctx.arrived_in_window.is_set() or self._listener.clients_in_backlog

    def _window_ended(self, reason: WindowEnd, decision: WindowDecision | None = None,
                      ) -> None:
        """Say how the window ended, in one line, in the metrics and in the summary."""
        timeline, metrics = self._ctx.timeline, self._ctx.metrics
        trigger_at = timeline.entered_at[Phase.PROPAGATING]
        lasted = round(self._loop.time() - trigger_at, 6)
        metrics.propagation_window.set(lasted)
        metrics.propagation_windows.labels(reason.value).inc()
        timeline.window = window_summary(reason, lasted, trigger_at, decision)
        log.info("propagation window ended after %.2f s: %s", lasted,
                 explain_window_end(reason, trigger_at, decision,
                                    self._ctx.settings.propagation_window_s),
                 extra=fields(window_end=reason.value, window_s=lasted))

    async def _settle(self, tunnels: bool, timeout_s: float) -> None:
        """Wait until no connection of the kind is left, a second signal, or the deadline;
        then cut what is left.  A loop: woken by the last connection ending, it looks again
        (one adopted from the backlog may have registered since)."""
        tracker = self._ctx.connections
        left: Callable[[], int] = (lambda: tracker.tunnels) if tunnels else \
            (lambda: tracker.http)
        wait_none = tracker.wait_no_tunnels if tunnels else tracker.wait_no_http
        deadline = self._loop.time() + timeout_s
        while left() and not self._force.is_set():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            await self._first_of([wait_none()], remaining)
        if left():
            self._cut(tunnels)

    def _cut(self, tunnels: bool) -> None:
        """Cut every connection of the kind; one failing does not spare the others."""
        cut = ended = 0
        for connection in self._ctx.connections.connections(Kind.TUNNEL if tunnels else Kind.HTTP):
            try:
                cut += connection.cut()
                ended += 1
            except Exception:
                log.exception("cutting a connection failed")
        timeline, metrics = self._ctx.timeline, self._ctx.metrics
        if tunnels:
            timeline.cut_tunnels += ended
            metrics.tunnels_cut.inc(ended)
            log.warning("tunnel drain deadline: cut %d tunnels", ended,
                        extra=fields(tunnels_cut=ended))
        else:
            timeline.cut_requests += cut
            metrics.requests_cut.inc(cut)
            log.warning("drain deadline: cut %d in-flight requests, closed %d connections",
                        cut, ended, extra=fields(requests_cut=cut, connections_closed=ended))

    async def _first_of(self, waits: list[Awaitable[object]], timeout_s: float) -> None:
        """Wait for the first of ``waits``, a second signal, or ``timeout_s``."""
        tasks = [asyncio.ensure_future(w) for w in [*waits, self._force.wait()]]
        try:
            await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    def _move(self, phase: Phase) -> None:
        timeline = self._ctx.timeline
        previous = timeline.phase
        lasted = timeline.move_to(phase, self._loop.time())
        self._ctx.metrics.phase_duration.labels(previous.value).set(lasted)
        self._on_phase(phase, lasted, previous.value)

    def _on_phase(self, phase: Phase, lasted: float, after: str) -> None:
        timeline = self._ctx.timeline
        self._ctx.metrics.set_phase(phase.value)
        connections = self._ctx.connections
        counts = {
            "connections": connections.http, "tunnels": connections.tunnels,
            "in_flight": self._ctx.requests_in_flight,
            "accepted_while_draining": timeline.accepted_while_draining,
            "served_while_draining": timeline.served_while_draining,
            "closed_by_drain": timeline.connections_closed_by_drain,
            "cut": timeline.cut_requests,
        }
        log.info("phase %s (after %s, %.3fs)", phase.value, after, lasted,
                 extra=fields(phase=phase.value, after=after, lasted_s=lasted, **counts))
