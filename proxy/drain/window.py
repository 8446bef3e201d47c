"""When the propagation window may end: the evidence that routing has moved.

Sans-IO: arrival times and the clock come in, a decision goes out; nothing here reads
a clock, a socket or a timer.

Once readiness has failed, every new connection is proof that some router (a node's
kube-proxy, an ingress pod, a client pod) still sends here.  Routers move one by one,
each at its own time, so the evidence is kept per *source*: the peer address of a new
connection.  During the window every response says ``Connection: close``, so a busy
keep-alive client reconnects for each request and its source's arrivals track its
request rate.

**The model.**  While a source's router still sends here, its new connections arrive
as a Poisson process.  Its rate is unknown, so it is not estimated at all: for ``m``
inter-arrival gaps summing to ``S`` and the next gap ``X``, all independent and
exponential with the same rate, ``P(X > c * S) = (1 + c) ** -m`` exactly, whatever the
rate (the ratio does not depend on the time scale).  So a source is judged *quiet*
once its silence exceeds ``S * (q ** (-1 / m) - 1)``, which a still-sending source
does with probability exactly ``q``.

**The budget.**  The window is decided again after every gap, and each test may end it
falsely, so the false-end probability ``p`` (``FALSE_END_PROBABILITY``) is spent over
the tests: the ``j``-th gap of a source since the trigger is tested at
``q_j = p * 6 / (pi**2 * j**2)``, and those sum to ``p``.  A source still sending
therefore ends the window falsely with probability at most ``p``, at any rate and
for any window length.

**Which gaps.**  A source seen before the trigger is measured from the trigger on (a
Poisson process has no memory, so the trigger starts a fresh gap) once it has
``MIN_GAPS`` such gaps; until then its gaps from before the trigger are used.  Those
are no shorter than its gaps in the window (before the trigger a keep-alive client
reuses its connection; in the window it reconnects for every request), so they only
lengthen the bound.  A source first seen after the trigger (an ingress that started
late) is measured from its first arrival.  Of the gaps, the last ``HISTORY - 1`` are
used, so a source that slows down is judged at its recent rate.

**Where it is conservative, and where it is not.**  Real sources are not Poisson: they
come in bursts, and they pause for reasons that are not routing (a SYN retransmitted
after a full backlog, a throttled or collecting client, this process stalled).  So on
top of the Poisson bound the silence must exceed the longest gap of those measured (a
batch every few seconds has short gaps inside bursts and long ones between them) and
``QUIET_FLOOR_S``, whatever the rate; silence is only the time a source was free to
connect (while a request of its is in flight here it is *answering*: a client waiting for
an answer sends nothing, and an app that stalls silences every such client); and the
drain looks at the listener's backlog before it believes a silence.  A source with
fewer than ``MIN_GAPS`` gaps is *too sparse to judge* and holds the window to its
maximum.  What no rule sees is a router that sends nothing at all until after the
window: a client that stays idle on a keep-alive connection through the window, or a
router whose first new connection comes later.  A fixed window of the same length
misses it the same way.

**Bounded memory.**  At most ``MAX_SOURCES`` sources are kept.  Before the trigger,
the source seen least recently makes room for a new one; after the trigger no source
is dropped (that would lose evidence), so a new source past the cap holds the window
to its maximum.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Final, NamedTuple

FALSE_END_PROBABILITY: Final = 1e-3  # per source that is still sending, per drain
MIN_GAPS: Final = 3  # fewer and the rate is a guess: the source holds the window open
HISTORY: Final = 32  # arrivals kept per source: the recent rate, in bounded memory
MAX_SOURCES: Final = 1024  # 1024 x ~1.3 KiB; past it, the window runs to its maximum
# No silence this short counts, whatever the rate: a SYN that met a full backlog is sent
# again after 1 s (RFC 6298's initial timeout), a throttled pod stalls for whole 100 ms CFS
# periods, a client pauses for garbage collection.  None of those is a router moving.
QUIET_FLOOR_S: Final = 1.0
_SPEND: Final = 6.0 / (math.pi ** 2)  # sum over j >= 1 of 1 / j**2 is pi**2 / 6
# While a source waits for answers, the window is decided again this often: how finely
# its waits are measured (each is counted from the decision before it was seen to the one
# that saw it end, never shorter than it was).
LOOK_WHILE_ANSWERING_S: Final = 0.1


class WindowEnd(enum.Enum):
    """Why a propagation window ended; values are the metric's ``reason`` label."""

    ROUTING_MOVED = "routing_moved"  # every source that was sending has gone quiet
    NO_TRAFFIC = "no_traffic"  # no source sent anything recently: nothing to wait for
    MAXIMUM = "maximum"  # --propagation-window reached with a source not shown to have moved
    FIXED = "fixed"  # adaptive off: the window lasts --propagation-window
    FORCED = "forced"  # a second signal skipped to the deadline


class SourceState(enum.Enum):
    SENDING = "sending"  # silent for less than its bound
    QUIET = "quiet"  # silent for longer than its own rate makes plausible
    SPARSE = "sparse"  # too few arrivals to judge: holds the window to its maximum
    ANSWERING = "answering"  # a request of its is in flight here: not moved, as far as known


@dataclass(frozen=True, slots=True)
class WindowBounds:
    """The window's limits and the false-end probability per still-sending source."""

    min_s: float
    max_s: float
    false_end_probability: float = FALSE_END_PROBABILITY
    quiet_floor_s: float = QUIET_FLOOR_S


class Source:
    """One peer address's recent new-connection times (ascending), and its count since
    the trigger (the index of the gap under test)."""

    __slots__ = ("first_seen", "judged", "since_trigger", "times")

    def __init__(self, now: float) -> None:
        self.times: deque[float] = deque((now,), maxlen=HISTORY)
        self.first_seen = now
        self.since_trigger = 0
        # (trigger, bounds, bound) as last computed: it changes only with an arrival, and
        # the drain decides again far more often than one source arrives.
        self.judged: tuple[float, WindowBounds, float | None] | None = None

    @property
    def last(self) -> float:
        return self.times[-1]

    def bound(self, trigger_at: float, bounds: WindowBounds) -> float | None:
        """``source_bound``, remembered until the next arrival."""
        judged = self.judged
        if judged is None or judged[0] != trigger_at or judged[1] != bounds:
            self.judged = judged = (trigger_at, bounds, source_bound(self, trigger_at, bounds))
        return judged[2]


class SourceVerdict(NamedTuple):
    """One source as the decision saw it; times are absolute (the caller's clock).  A
    tuple: a decision makes one per source, often."""

    address: str
    state: SourceState
    last_arrival: float | None  # None: only seen on a connection older than the log
    arrivals_since_trigger: int
    quiet_at: float | None  # when its silence reaches its bound; None: sparse, answering


@dataclass(frozen=True, slots=True)
class WindowDecision:
    """Whether the window ends now; if not, when to decide again if nothing arrives."""

    ended: bool
    reason: WindowEnd | None  # set when ended
    decide_again_at: float
    sources: tuple[SourceVerdict, ...]
    overflowed: bool = False


def silence_bound(gaps: Iterable[float], test: int, false_end_probability: float) -> float:
    """How long a source that produced ``gaps`` may stay silent before its ``test``-th
    silence counts as quiet: the Poisson bound at this test's share of the budget, and
    no less than the longest gap.  Needs at least one gap."""
    measured = list(gaps)
    share = false_end_probability * _SPEND / (test * test)
    poisson = sum(measured) * (math.pow(share, -1.0 / len(measured)) - 1.0)
    return max(poisson, max(measured))


def _gaps(times: Iterable[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def source_bound(source: Source, trigger_at: float, bounds: WindowBounds) -> float | None:
    """How long this source may now stay silent before it counts as quiet, or None when it
    is too sparse to judge.  The choice of gaps is the module docstring's "Which gaps"."""
    seen_before = source.first_seen < trigger_at
    held = len(source.times)
    in_window = list(source.times)[held - min(source.since_trigger, held):]
    if seen_before:
        test = source.since_trigger + 1
        # The trigger starts a gap only if the first arrival after it is still held.
        start = [trigger_at] if source.since_trigger <= len(in_window) else []
        gaps = _gaps(start + in_window)
        if len(gaps) < MIN_GAPS:
            gaps = _gaps(source.times)  # its gaps from before the trigger: no shorter
    else:
        test = max(1, source.since_trigger)
        gaps = _gaps(in_window)
    if len(gaps) < MIN_GAPS:
        return None
    return max(silence_bound(gaps, test, bounds.false_end_probability), bounds.quiet_floor_s)


def silence_start(source: Source, trigger_at: float) -> float:
    """Where a source's current silence is counted from: its last new connection, but
    never before the trigger.  The gap the trigger falls in is longer than most (a fixed
    moment lands in a long gap more often than in a short one); from the trigger on it is
    an ordinary one."""
    return max(source.last, trigger_at)


def decide(sources: Mapping[str, Source], trigger_at: float, now: float,
           bounds: WindowBounds, overflowed: bool = False,
           answering: AbstractSet[str] = frozenset(),
           waited: Mapping[str, float] | None = None) -> WindowDecision:
    """Whether the window that began at ``trigger_at`` ends at ``now``.

    It ends at its maximum, never before its minimum, and in between once every source
    that was sending has gone quiet.  A source counts when it arrived after the trigger
    or within ``bounds.max_s`` before it; older ones were not sending (a source that
    idled longer than the window lasts is what no window sees).

    Silence is the time a source was free to connect and did not.  ``answering``: the
    sources with a request in flight here now, which are not quiet whatever their gaps:
    a client waiting for an answer sends nothing (an app that stalls silences every
    closed-loop client), and once answered it reconnects, to wherever its router says.
    ``waited``: how long each source spent waiting so since its last new connection in
    this window, which its silence does not count.  A source seen only on connections
    older than the log is judged by the floor alone, counted from the trigger."""
    waits = waited or {}
    minimum, maximum = trigger_at + bounds.min_s, trigger_at + bounds.max_s
    look_again = min(maximum, now + LOOK_WHILE_ANSWERING_S)
    verdicts: list[SourceVerdict] = []
    end_at = minimum
    for address, source in sources.items():
        if address in answering:
            verdicts.append(SourceVerdict(address, SourceState.ANSWERING, source.last,
                                          source.since_trigger, None))
            end_at = max(end_at, look_again)
            continue
        if source.since_trigger == 0 and source.last < trigger_at - bounds.max_s \
                and address not in waits:
            continue
        bound = source.bound(trigger_at, bounds)
        if bound is None:
            state, quiet_at, end_at = SourceState.SPARSE, None, maximum
        else:
            quiet_at = silence_start(source, trigger_at) + bound + waits.get(address, 0.0)
            state = SourceState.QUIET if now >= quiet_at else SourceState.SENDING
            end_at = max(end_at, quiet_at)
        verdicts.append(SourceVerdict(address, state, source.last, source.since_trigger,
                                      quiet_at))
    # Seen only on connections older than the log: no gaps, only their answers to go by.
    for address in answering - sources.keys():
        verdicts.append(SourceVerdict(address, SourceState.ANSWERING, None, 0, None))
        end_at = max(end_at, look_again)
    for address in waits.keys() - sources.keys() - answering:
        quiet_at = trigger_at + bounds.quiet_floor_s + waits[address]
        state = SourceState.QUIET if now >= quiet_at else SourceState.SENDING
        verdicts.append(SourceVerdict(address, state, None, 0, quiet_at))
        end_at = max(end_at, quiet_at)
    if overflowed:
        end_at = maximum
    end_at = min(end_at, maximum)
    if now < end_at:
        return WindowDecision(False, None, end_at, tuple(verdicts), overflowed)
    if now >= maximum and (overflowed or any(
            v.state is not SourceState.QUIET for v in verdicts)):
        reason = WindowEnd.MAXIMUM
    else:
        reason = WindowEnd.ROUTING_MOVED if verdicts else WindowEnd.NO_TRAFFIC
    return WindowDecision(True, reason, end_at, tuple(verdicts), overflowed)


class ArrivalLog:
    """Every source's recent new-connection times, kept for the window's decision."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.sources: dict[str, Source] = {}
        self.trigger_at: float | None = None
        self.overflowed = False  # a source past the cap arrived in the window
        self._max_sources = max_sources
        # In the window: since when each source waiting for answers at the last decision
        # has waited (at the earliest: the decision before it was seen), and how long each
        # waited in all since its last new connection.
        self._waiting_since: dict[str, float] = {}
        self.waited: dict[str, float] = {}
        self._decided_at = 0.0

    def arrived(self, address: str, now: float) -> None:
        """A new connection from ``address``."""
        source = self.sources.get(address)
        if source is None:
            if len(self.sources) >= self._max_sources and not self._make_room():
                self.overflowed = True
                return
            source = self.sources[address] = Source(now)
        else:
            source.times.append(now)
            source.judged = None
        if self.trigger_at is not None:
            source.since_trigger += 1
            # Its silence starts again: the waits before this connection no longer count.
            if self.waited:
                self.waited.pop(address, None)
            if address in self._waiting_since:
                self._waiting_since[address] = now

    def _make_room(self) -> bool:
        """Before the trigger, drop the source seen least recently; after it, nothing."""
        if self.trigger_at is not None:
            return False
        oldest = min(self.sources, key=lambda address: self.sources[address].last)
        del self.sources[oldest]
        return True

    def trigger(self, now: float) -> None:
        """The window starts: count arrivals from here."""
        self.untrigger()
        self.trigger_at = self._decided_at = now
        for source in self.sources.values():
            source.since_trigger = 0
            source.judged = None

    def untrigger(self) -> None:
        """The drain was undone: serving again, the history stays."""
        self.trigger_at = None
        self.overflowed = False
        self._waiting_since.clear()
        self.waited.clear()

    def decide(self, now: float, bounds: WindowBounds,
               answering: frozenset[str] = frozenset()) -> WindowDecision:
        """The window's decision at ``now``; ``answering``: the sources with a request in
        flight here now.  Waits are only seen at decisions, so each is counted from the
        decision before the one that saw it begin to the one that saw it end: never
        shorter than it was."""
        if self.trigger_at is None:
            raise RuntimeError("no window to decide: the drain has not started")
        for address in answering:
            self._waiting_since.setdefault(address, self._decided_at)
        for address in [a for a in self._waiting_since if a not in answering]:
            began = self._waiting_since.pop(address)
            source = self.sources.get(address)
            if source is not None:
                began = max(began, source.last)  # what came before its silence: not counted
            self.waited[address] = self.waited.get(address, 0.0) + now - began
        self._decided_at = now
        return decide(self.sources, self.trigger_at, now, bounds, self.overflowed, answering,
                      self.waited)
