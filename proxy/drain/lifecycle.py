"""The drain timeline: phases, their transition table, and the decisions they imply.

Sans-IO: nothing here touches sockets, timers or asyncio; callers pass the clock.

Why a timeline at all: when Kubernetes deletes a pod, kubelet's SIGTERM and the
removal of the pod from every load balancer's endpoints happen *in parallel*, and
the second can lag by seconds.  A proxy that stops accepting at SIGTERM refuses
the clients that are still routed to it.  So the drain is one ordered sequence
with one deadline:

1. **Trigger** (SIGTERM, SIGINT or ``/drain`` on the admin port) -> ``propagating``.
   Readiness fails at once (unless ``--readiness-on-drain keep``); liveness stays up.
2. **Propagation window** (``--propagation-window``): keep accepting and serving.
   Every response carries ``Connection: close`` so keep-alive clients finish their
   request and reconnect elsewhere.  Idle keep-alive connections are *not* closed
   here: a client may be sending on one at this very moment.  With
   ``--adaptive-window`` the window ends as soon as routing has demonstrably moved
   (``proxy.drain.window``), between ``--min-propagation-window`` and that maximum.
3. ``draining``: close the listener (refusing new handshakes, serving those already
   under way and the backlog), close connections that are idle now; busy ones close
   after their current response.  One that has sent nothing yet gets a short grace
   (``first_request_grace_s``) for its first request, then is closed.
4. Wait until every connection has ended, bounded by ``--drain-timeout`` (tunnels:
   ``--tunnel-drain-timeout``).  A connection accepted in the window whose first
   request comes only now is served too.  At the deadline abort what remains and
   count the requests cut.
5. Close the upstream pool, ``drained``; answer ``/drain`` waiters; exit 0 if no
   request was cut, 1 if the deadline or a second signal cut one.

A second SIGTERM/SIGINT in any phase skips straight to the deadline.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Final

from proxy.transitions import IllegalTransition


class Phase(enum.Enum):
    """Where the proxy is in its life; values are the metric's state names."""

    SERVING = "serving"
    PROPAGATING = "propagating"
    DRAINING = "draining"
    DRAINED = "drained"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.SERVING: frozenset({Phase.PROPAGATING}),
    Phase.PROPAGATING: frozenset({Phase.DRAINING}),
    Phase.DRAINING: frozenset({Phase.DRAINED}),
    # Back to serving only when a drain started by /drain was not followed by SIGTERM
    # within the grace period: it was not a pod termination (``DrainTimeline.undo``).
    Phase.DRAINED: frozenset({Phase.SERVING}),
}


# A client sends its first request right after its connect: a second covers a slow
# client on a loaded node.  A connection still silent then (a speculative preconnect, a
# pool warming connections) would hold the exit until the drain timeout.
FIRST_REQUEST_GRACE_MAX_S: Final = 1.0


def first_request_grace_s(header_timeout_s: float) -> float:
    """How long, from the end of the window, a connection that has sent nothing is given
    for its first request: a second, or --header-timeout if shorter (a request slower
    than that to arrive would be refused anyway)."""
    return min(FIRST_REQUEST_GRACE_MAX_S, header_timeout_s)


@dataclass
class DrainTimeline:
    """The drain's state and the policy derived from it, for one process."""

    propagation_window_s: float
    drain_timeout_s: float
    fail_readiness_on_drain: bool = True
    phase: Phase = Phase.SERVING
    entered_at: dict[Phase, float] = field(default_factory=dict)
    forced: bool = False  # a second signal skipped to the deadline
    failed: bool = False  # the drain itself raised: everything left was cut
    # What this drain did, for the /drain summary and the phase log lines.
    accepted_while_draining: int = 0
    served_while_draining: int = 0
    connections_closed_by_drain: int = 0
    cut_requests: int = 0
    cut_tunnels: int = 0
    # How the propagation window ended and the sources it judged, once it has ended.
    window: dict[str, object] | None = None
    quiet_closed_tunnels: int = 0  # TCP mode: closed between messages (``proxy.tcp.quiet``)

    def move_to(self, phase: Phase, now: float) -> float:
        """Enter ``phase``; return how long the previous phase lasted (0 for the first)."""
        if phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"{self.phase.value} -> {phase.value}")
        previous = self.entered_at.get(self.phase)
        self.phase = phase
        self.entered_at[phase] = now
        return 0.0 if previous is None else _lasted(previous, now)

    def undo(self, now: float) -> None:
        """Serve again after a drain that turned out not to be a termination; what that
        drain did is forgotten (its metrics stay), the next one starts from zero."""
        self.move_to(Phase.SERVING, now)
        self.entered_at.clear()
        self.forced = self.failed = False
        self.accepted_while_draining = self.served_while_draining = 0
        self.connections_closed_by_drain = self.cut_requests = self.cut_tunnels = 0
        self.window = None
        self.quiet_closed_tunnels = 0

    def trigger(self, now: float) -> bool:
        """Start the drain; False when it has already started (callers join it)."""
        if self.phase is not Phase.SERVING:
            return False
        self.move_to(Phase.PROPAGATING, now)
        return True

    @property
    def started(self) -> bool:
        return self.phase is not Phase.SERVING

    @property
    def close_after_response(self) -> bool:
        """Once the drain starts, every response tells the client to reconnect."""
        return self.phase is not Phase.SERVING

    @property
    def accepting(self) -> bool:
        return self.phase in (Phase.SERVING, Phase.PROPAGATING)

    @property
    def ready(self) -> bool:
        """Readiness as the kubelet should see it (the app check comes on top)."""
        if self.phase is Phase.SERVING:
            return True
        return self.phase is Phase.PROPAGATING and not self.fail_readiness_on_drain

    def seconds_since_trigger(self, now: float) -> float:
        return now - self.entered_at[Phase.PROPAGATING] if self.started else 0.0

    def summary(self, now: float) -> dict[str, object]:
        """The JSON-able account of this drain that ``/drain`` answers with."""
        return {
            "phase": self.phase.value,
            "phase_durations_seconds": self.durations(now),
            "connections_accepted_while_draining": self.accepted_while_draining,
            "requests_served_while_draining": self.served_while_draining,
            "connections_closed_by_drain": self.connections_closed_by_drain,
            "requests_cut": self.cut_requests,
            "tunnels_closed_quiet": self.quiet_closed_tunnels,
            "tunnels_cut": self.cut_tunnels,
            "forced": self.forced,
            "failed": self.failed,
            "propagation_window": self.window,
        }

    def durations(self, now: float) -> dict[str, float]:
        """How long each phase of this drain lasted so far, by phase name."""
        order = [Phase.PROPAGATING, Phase.DRAINING, Phase.DRAINED]
        result: dict[str, float] = {}
        for phase, following in itertools.pairwise(order):
            if phase in self.entered_at:
                end = self.entered_at.get(following, now)
                result[phase.value] = _lasted(self.entered_at[phase], end)
        return result


def _lasted(start: float, end: float) -> float:
    """A phase's length, to the microsecond: loop clocks are coarse (uvloop's counts whole
    milliseconds), and the float difference of two such readings can land a hair below the
    configured window it measures (1234.567 - 1234.267 = 0.29999999999927)."""
    return round(end - start, 6)
