"""The adaptive propagation window's decision, on synthetic arrival streams.

Every stream here is a list of (source, time) pairs with the trigger at 0; the
decision is asked right before each arrival whether the window would already have
ended, which is exactly when a real drain would have closed its listener on it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from proxy.drain.window import (
    FALSE_END_PROBABILITY,
    HISTORY,
    MIN_GAPS,
    QUIET_FLOOR_S,
    ArrivalLog,
    SourceState,
    WindowBounds,
    WindowDecision,
    WindowEnd,
    silence_bound,
)
from proxy.drain.window_report import explain_window_end, window_summary

TRIGGER = 0.0
Stream = list[tuple[str, float]]


def poisson(rng: random.Random, rate: float, start: float, stop: float) -> Iterator[float]:
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= stop:
            return
        yield t


def merged(*streams: Stream) -> Stream:
    return sorted((pair for stream in streams for pair in stream), key=lambda pair: pair[1])


def source(address: str, times: Iterator[float] | list[float]) -> Stream:
    return [(address, t) for t in times]


def window_end(stream: Stream, bounds: WindowBounds) -> tuple[float, WindowDecision]:
    """Feed the stream to a log triggered at 0; return when the window ends and how.

    Between arrivals the window is decided at the times the decision names: if it ended
    before an arrival, that arrival came too late.  After the last arrival the window
    ends at its own time (at the latest at its maximum)."""
    log = ArrivalLog()
    for address, t in stream:
        if t < TRIGGER:
            log.arrived(address, t)
    log.trigger(TRIGGER)
    now = TRIGGER
    for address, t in stream:
        if t < TRIGGER:
            continue
        now, decision = _settle(log, now, t, bounds)
        if decision.ended:
            return now, decision
        log.arrived(address, t)
        now = t
    return _settle(log, now, math.inf, bounds)


def _settle(log: ArrivalLog, now: float, before: float, bounds: WindowBounds,
            ) -> tuple[float, WindowDecision]:
    """Decide from ``now`` on, at the times each decision names, until the window ends or
    ``before`` (the next arrival) comes."""
    decision = log.decide(now, bounds)
    while not decision.ended and decision.decide_again_at < before:
        now = decision.decide_again_at
        decision = log.decide(now, bounds)
    return now, decision


BOUNDS = WindowBounds(min_s=1.0, max_s=10.0)


# -- the bound itself -------------------------------------------------------------------


def test_the_bound_is_the_poisson_tail_at_the_tests_share_of_the_budget() -> None:
    gaps = [0.1] * 20
    share = FALSE_END_PROBABILITY * 6 / math.pi ** 2
    # P(X > c * S) = (1 + c) ** -m  =>  c = share ** (-1/m) - 1
    assert silence_bound(gaps, 1, FALSE_END_PROBABILITY) == pytest.approx(
        2.0 * (share ** (-1 / 20) - 1))
    # Later tests get a smaller share of the budget, hence a longer bound.
    assert silence_bound(gaps, 50, FALSE_END_PROBABILITY) > silence_bound(gaps, 1, 1e-3)


def test_the_bound_is_never_shorter_than_the_longest_gap_seen() -> None:
    bursty = [0.001] * 9 + [2.0]  # ten gaps: bursts a millisecond apart, two seconds between
    assert silence_bound(bursty, 1, 0.5) == 2.0


# -- streams ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [5.0, 20.0, 100.0, 500.0])
@pytest.mark.parametrize("seed", range(5))
def test_a_poisson_source_ends_the_window_soon_after_it_stops_and_not_before(
        rate: float, seed: int) -> None:
    rng = random.Random(seed)
    stops_at = 2.5
    stream = source("10.0.2.15", poisson(rng, rate, -5.0, stops_at))
    last = stream[-1][1]
    ended_at, decision = window_end(stream, BOUNDS)
    assert decision.reason is WindowEnd.ROUTING_MOVED
    assert ended_at >= last + QUIET_FLOOR_S, "ended while the source was still sending"
    # Quiet within the Poisson bound at the last test (about ln(1/q) mean gaps), or the floor.
    arrivals = sum(1 for _, t in stream if t >= 0)
    share = FALSE_END_PROBABILITY * 6 / math.pi ** 2 / (arrivals + 1) ** 2
    assert ended_at - last < max(QUIET_FLOOR_S, 3 * math.log(1 / share) / rate) + 0.05


def test_a_busy_source_is_quiet_once_the_floor_has_passed() -> None:
    """At 1,000 connections a second the Poisson bound is about 20 ms; no silence under
    the floor counts, whatever the rate."""
    rng = random.Random(1)
    stream = source("10.0.1.3", poisson(rng, 1000.0, -1.0, 0.3))
    last = stream[-1][1]
    ended_at, decision = window_end(stream, BOUNDS)
    assert decision.reason is WindowEnd.ROUTING_MOVED
    assert ended_at == pytest.approx(last + QUIET_FLOOR_S)
    without_floor = WindowBounds(0.0, 10.0, quiet_floor_s=0.0)
    ended_at, _ = window_end(stream, without_floor)
    assert last < ended_at < last + 0.05


def test_a_pause_shorter_than_the_floor_does_not_end_the_window() -> None:
    # A busy client stalls for 0.8 s (a throttled pod, a collection, a retransmitted SYN)
    # and goes on: forty times its usual gap, still not a router moving.
    rng = random.Random(6)
    stream = source("10.0.1.3", [*poisson(rng, 200.0, -2.0, 1.2), *poisson(rng, 200.0, 2.0, 3.0)])
    ended_at, _ = window_end(stream, BOUNDS)
    assert ended_at > 3.0


def test_the_window_lasts_its_minimum_when_routing_moved_before_the_trigger() -> None:
    rng = random.Random(2)
    stream = source("10.0.1.3", poisson(rng, 50.0, -5.0, -2.0))
    ended_at, decision = window_end(stream, BOUNDS)
    assert ended_at == BOUNDS.min_s and decision.reason is WindowEnd.ROUTING_MOVED


def test_no_traffic_ends_at_the_minimum() -> None:
    ended_at, decision = window_end([], BOUNDS)
    assert ended_at == BOUNDS.min_s and decision.reason is WindowEnd.NO_TRAFFIC


def test_a_source_idle_longer_than_the_maximum_before_the_trigger_is_not_waited_for() -> None:
    ended_at, decision = window_end(source("10.0.9.9", [-30.0, -29.0]), BOUNDS)
    assert ended_at == BOUNDS.min_s and decision.reason is WindowEnd.NO_TRAFFIC


def test_a_sparse_source_holds_the_window_to_its_maximum() -> None:
    # One request every 1.5 s, still sending at the maximum: never enough gaps to judge
    # a rate that low within ten seconds.
    stream = source("10.0.3.7", [1.5 * k for k in range(-2, 9)])
    ended_at, decision = window_end(stream, BOUNDS)
    assert ended_at == BOUNDS.max_s
    assert decision.reason is WindowEnd.MAXIMUM
    (verdict,) = decision.sources
    assert verdict.state is not SourceState.QUIET


def test_a_source_with_too_few_arrivals_is_sparse() -> None:
    log = ArrivalLog()
    log.arrived("10.0.3.7", -0.5)
    log.trigger(TRIGGER)
    log.arrived("10.0.3.7", 0.2)
    decision = log.decide(5.0, BOUNDS)
    assert not decision.ended and decision.decide_again_at == BOUNDS.max_s
    assert decision.sources[0].state is SourceState.SPARSE
    assert decision.sources[0].quiet_at is None


def test_bursts_do_not_end_the_window_between_them() -> None:
    # A batch of ten connections a millisecond apart every 0.8 s until 4 s: the gaps
    # inside a batch would make a pure rate estimate end the window between batches.
    bursts = [start + k * 0.001 for start in (-4.0 + 0.8 * b for b in range(11))
              for k in range(10)]
    stream = source("10.0.4.4", bursts)
    ended_at, decision = window_end(stream, BOUNDS)
    assert ended_at > bursts[-1]
    assert decision.reason is WindowEnd.ROUTING_MOVED


@pytest.mark.parametrize("seed", range(10))
def test_a_source_that_slows_down_before_it_stops_is_not_cut_off(seed: int) -> None:
    # 100/s, halving every half second, stopping at 2 s (12.5/s by then).
    rng = random.Random(seed)
    times, t = [], -2.0
    while True:
        rate = 100.0 * 0.5 ** (max(t, 0.0) / 0.5)
        t += rng.expovariate(rate)
        if t >= 2.0:
            break
        times.append(t)
    ended_at, decision = window_end(source("10.0.5.5", times), BOUNDS)
    assert ended_at > times[-1]
    assert decision.reason is WindowEnd.ROUTING_MOVED


@pytest.mark.parametrize("seed", range(5))
def test_a_source_first_seen_after_the_trigger_counts_like_any_other(seed: int) -> None:
    rng = random.Random(seed)
    early = source("10.0.1.1", poisson(rng, 100.0, -3.0, 0.3))
    ingress = source("10.0.7.7", poisson(rng, 40.0, 0.5, 2.5))  # starts after SIGTERM
    ended_at, decision = window_end(merged(early, ingress), BOUNDS)
    assert ended_at > ingress[-1][1]
    assert decision.reason is WindowEnd.ROUTING_MOVED
    late = next(v for v in decision.sources if v.address == "10.0.7.7")
    assert late.arrivals_since_trigger == len(ingress)


def test_a_router_that_first_sends_after_the_window_ended_is_not_seen() -> None:
    """The blind spot every window shares: nothing arrived to wait for.  (A fixed window
    of the same length would end at the same moment.)"""
    rng = random.Random(4)
    early = source("10.0.1.1", poisson(rng, 100.0, -3.0, 0.3))
    too_late = source("10.0.7.7", poisson(rng, 40.0, 1.5, 2.5))
    ended_at, decision = window_end(merged(early, too_late), BOUNDS)
    assert ended_at == pytest.approx(early[-1][1] + QUIET_FLOOR_S)
    assert ended_at < too_late[0][1]
    assert [v.address for v in decision.sources] == ["10.0.1.1"]


def test_several_routers_moving_at_their_own_lags_end_it_after_the_last() -> None:
    rng = random.Random(7)
    stream = merged(source("10.0.0.1", poisson(rng, 150.0, -3.0, 0.3)),
                    source("10.0.0.2", poisson(rng, 80.0, -3.0, 1.0)),
                    source("10.0.0.3", poisson(rng, 60.0, -3.0, 2.5)))
    ended_at, decision = window_end(stream, BOUNDS)
    assert 2.5 < ended_at < 4.0
    assert decision.reason is WindowEnd.ROUTING_MOVED
    assert {v.state for v in decision.sources} == {SourceState.QUIET}


def test_one_sparse_source_among_busy_ones_holds_the_maximum_and_says_so() -> None:
    rng = random.Random(3)
    stream = merged(source("10.0.0.1", poisson(rng, 150.0, -3.0, 0.3)),
                    source("10.0.3.7", [-1.4, 0.1, 1.6]))
    ended_at, decision = window_end(stream, BOUNDS)
    assert ended_at == BOUNDS.max_s and decision.reason is WindowEnd.MAXIMUM
    line = explain_window_end(WindowEnd.MAXIMUM, TRIGGER, decision, BOUNDS.max_s)
    assert line == "maximum reached: 1 source too sparse to judge (10.0.3.7)"


# -- the false-end probability -------------------------------------------------------------


def false_ends(rate: float, seeds: int, probability: float, max_s: float) -> float:
    """The share of seeds in which a source sending throughout was judged quiet."""
    bounds = WindowBounds(0.0, max_s, probability, quiet_floor_s=0.0)  # the Poisson bound
    ended_early = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        stream = source("10.0.0.1", poisson(rng, rate, -HISTORY / rate, max_s + 1.0))
        ended_at, _ = window_end(stream, bounds)
        ended_early += ended_at < max_s
    return ended_early / seeds


@pytest.mark.parametrize(("rate", "max_s"), [(2.0, 10.0), (20.0, 5.0), (200.0, 0.5)])
def test_a_still_sending_source_ends_the_window_falsely_at_about_the_chosen_probability(
        rate: float, max_s: float) -> None:
    """Measured at p = 0.1 so that 1,500 seeds see it: within three standard deviations
    below p (the budget is an upper bound), and not far below it either (the bound is
    the real tail, not a loose one)."""
    p, seeds = 0.1, 1500
    measured = false_ends(rate, seeds, p, max_s)
    sd = math.sqrt(p * (1 - p) / seeds)
    assert measured <= p + 3 * sd
    assert measured >= p / 3


@pytest.mark.slow
@pytest.mark.parametrize("rate", [1.0, 10.0, 100.0])
def test_the_false_end_rate_at_one_in_a_hundred(rate: float) -> None:
    p, seeds = 0.01, 20_000
    measured = false_ends(rate, seeds, p, min(10.0, 200 / rate))
    assert measured <= p + 3 * math.sqrt(p * (1 - p) / seeds)


# -- bounded memory, and invariants over any stream -------------------------------------------


def test_before_the_trigger_the_least_recently_seen_source_makes_room() -> None:
    log = ArrivalLog(max_sources=2)
    log.arrived("a", 1.0)
    log.arrived("b", 2.0)
    log.arrived("a", 3.0)
    log.arrived("c", 4.0)
    assert set(log.sources) == {"a", "c"}


def test_a_new_source_past_the_cap_in_the_window_holds_it_to_the_maximum() -> None:
    log = ArrivalLog(max_sources=1)
    log.arrived("a", -1.0)
    log.trigger(TRIGGER)
    log.arrived("b", 0.5)
    assert set(log.sources) == {"a"}
    decision = log.decide(2.0, BOUNDS)
    assert not decision.ended and decision.overflowed
    decision = log.decide(BOUNDS.max_s, BOUNDS)
    assert decision.reason is WindowEnd.MAXIMUM
    assert "past the cap" in explain_window_end(WindowEnd.MAXIMUM, TRIGGER, decision, 10.0)


ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "::1")


class WindowMachine(RuleBasedStateMachine):
    """Arrivals, looks with any set of sources waiting for answers, the trigger and its
    undoing, interleaved in any order on a clock that only moves forward; a small cap so
    that eviction and overflow happen.  Checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.log = ArrivalLog(max_sources=3)
        self.now = -5.0
        self.bounds = WindowBounds(1.0, 6.0)
        self.decision: WindowDecision | None = None
        self.decided_at = 0.0
        self.answering: frozenset[str] = frozenset()
        self.waited_on: set[str] = set()  # every source that was answering this window

    @rule(dt=st.floats(0.0, 2.0))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(address=st.sampled_from(ADDRESSES))
    def arrive(self, address: str) -> None:
        self.log.arrived(address, self.now)

    @precondition(lambda self: self.log.trigger_at is None)
    @rule()
    def trigger(self) -> None:
        self.log.trigger(self.now)
        self.waited_on.clear()

    @precondition(lambda self: self.log.trigger_at is not None)
    @rule()
    def undo(self) -> None:
        self.log.untrigger()
        self.decision = None

    @precondition(lambda self: self.log.trigger_at is not None)
    @rule(answering=st.frozensets(st.sampled_from(ADDRESSES), max_size=2))
    def look(self, answering: frozenset[str]) -> None:
        self.answering = answering
        self.waited_on |= answering
        self.decision = self.log.decide(self.now, self.bounds, answering)
        self.decided_at = self.now

    @invariant()
    def bounded(self) -> None:
        assert len(self.log.sources) <= 3
        assert set(self.log.answered_at) <= self.waited_on

    @invariant()
    def decision_keeps_its_bounds(self) -> None:
        decision, trigger_at = self.decision, self.log.trigger_at
        if decision is None or trigger_at is None:
            return
        elapsed = self.decided_at - trigger_at
        verdicts = {v.address: v for v in decision.sources}
        assert {a for a, v in verdicts.items() if v.state is SourceState.ANSWERING} == \
            set(self.answering)
        if elapsed < self.bounds.min_s:
            assert not decision.ended
        if elapsed >= self.bounds.max_s:
            assert decision.ended
        if decision.ended:
            assert decision.reason is WindowEnd.MAXIMUM or (
                all(v.state is SourceState.QUIET for v in decision.sources)
                and not decision.overflowed)
        else:
            assert self.decided_at < decision.decide_again_at <= trigger_at + self.bounds.max_s
        for verdict in decision.sources:
            assert (verdict.quiet_at is None) == (verdict.state in (SourceState.SPARSE,
                                                                    SourceState.ANSWERING))
            if verdict.quiet_at is not None:
                assert verdict.quiet_at >= trigger_at + QUIET_FLOOR_S
                if verdict.last_arrival is not None:
                    assert verdict.quiet_at >= verdict.last_arrival + QUIET_FLOOR_S


WindowMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                           deadline=None)
test_the_window_machine_keeps_its_invariants = WindowMachine.TestCase


def test_min_gaps_is_what_makes_a_source_judgeable() -> None:
    log = ArrivalLog()
    log.trigger(TRIGGER)
    for k in range(MIN_GAPS):
        log.arrived("10.0.0.1", 0.1 * k)
    assert log.decide(0.5, BOUNDS).sources[0].state is SourceState.SPARSE
    log.arrived("10.0.0.1", 0.1 * MIN_GAPS)
    assert log.decide(0.5, BOUNDS).sources[0].state is not SourceState.SPARSE


# -- what the operator reads ---------------------------------------------------------------


def test_the_log_line_names_the_last_source_and_its_arrival() -> None:
    rng = random.Random(5)
    stream = merged(source("10.0.0.1", poisson(rng, 150.0, -3.0, 0.3)),
                    source("10.0.2.15", [0.5 + 0.16 * k for k in range(8)]))
    _, decision = window_end(stream, BOUNDS)
    line = explain_window_end(WindowEnd.ROUTING_MOVED, TRIGGER, decision, BOUNDS.max_s)
    assert line == "routing moved: 2 sources quiet, last arrival 10.0.2.15 at +1.62 s"


def test_the_summary_lists_the_sources_most_recent_first() -> None:
    rng = random.Random(5)
    stream = merged(source("10.0.0.1", poisson(rng, 150.0, -3.0, 0.3)),
                    source("10.0.2.15", [0.5 + 0.16 * k for k in range(8)]))
    ended_at, decision = window_end(stream, BOUNDS)
    summary = window_summary(WindowEnd.ROUTING_MOVED, ended_at, TRIGGER, decision)
    assert summary["ended_by"] == "routing_moved" and summary["adaptive"] is True
    assert summary["sources_judged"] == 2
    sources = summary["sources"]
    assert isinstance(sources, list)
    assert [s["address"] for s in sources] == ["10.0.2.15", "10.0.0.1"]
    assert sources[0]["state"] == "quiet" and sources[0]["arrivals_in_window"] == 8
    assert sources[0]["last_arrival_seconds"] == 1.62
    assert window_summary(WindowEnd.FIXED, 10.0, TRIGGER, None) == {
        "ended_by": "fixed", "lasted_seconds": 10.0, "adaptive": False}


# -- sources waiting for answers ---------------------------------------------------------------


def test_a_source_waiting_for_answers_is_not_quiet_whatever_its_gaps() -> None:
    """Closed-loop clients send their next request only once answered: an app that stalls
    silences them all, and that silence says nothing about routing."""
    log = ArrivalLog()
    rng = random.Random(8)
    for t in poisson(rng, 200.0, -1.0, 0.5):
        if t >= TRIGGER and log.trigger_at is None:
            log.trigger(TRIGGER)
        log.arrived("10.0.1.3", t)
    busy = frozenset({"10.0.1.3"})
    decision = log.decide(3.0, BOUNDS, busy)  # silent 2.5 s, far past its bound
    assert not decision.ended
    assert decision.sources[0].state is SourceState.ANSWERING
    assert decision.decide_again_at == pytest.approx(3.0 + QUIET_FLOOR_S)
    # Answered between 3.0 and 3.2: its silence counts from 3.2, the latest it can have been.
    decision = log.decide(3.2, BOUNDS)
    assert not decision.ended and decision.sources[0].state is SourceState.SENDING
    assert decision.decide_again_at == pytest.approx(3.2 + QUIET_FLOOR_S)
    decision = log.decide(3.2 + QUIET_FLOOR_S, BOUNDS)
    assert decision.ended and decision.reason is WindowEnd.ROUTING_MOVED


def test_a_source_seen_only_on_an_old_connection_is_waited_for_until_answered() -> None:
    """A keep-alive connection older than the log, busy at the trigger: its client will be
    told to reconnect, so the window waits for that, and a floor after it."""
    log = ArrivalLog()
    log.trigger(TRIGGER)
    busy = frozenset({"10.0.8.8"})
    decision = log.decide(1.5, BOUNDS, busy)
    assert not decision.ended
    assert decision.sources == (("10.0.8.8", SourceState.ANSWERING, None, 0, None),)
    decision = log.decide(2.0, BOUNDS)  # answered, and it did not come back
    assert not decision.ended and decision.decide_again_at == 2.0 + QUIET_FLOOR_S
    decision = log.decide(2.0 + QUIET_FLOOR_S, BOUNDS)
    assert decision.ended and decision.reason is WindowEnd.ROUTING_MOVED
    line = explain_window_end(decision.reason, TRIGGER, decision, BOUNDS.max_s)
    assert line == "routing moved: 1 source quiet"
    summary = window_summary(decision.reason, 3.0, TRIGGER, decision)
    assert summary["sources"] == [{"address": "10.0.8.8", "state": "quiet",
                                   "arrivals_in_window": 0, "last_arrival_seconds": None,
                                   "quiet_after_seconds": 3.0}]


def test_a_source_still_waiting_at_the_maximum_says_so() -> None:
    log = ArrivalLog()
    log.trigger(TRIGGER)
    decision = log.decide(BOUNDS.max_s, BOUNDS, frozenset({"10.0.8.8"}))
    assert decision.ended and decision.reason is WindowEnd.MAXIMUM
    assert explain_window_end(WindowEnd.MAXIMUM, TRIGGER, decision, BOUNDS.max_s) == (
        "maximum reached: 1 source waiting for answers (10.0.8.8)")


def test_a_new_trigger_forgets_the_last_windows_answers() -> None:
    log = ArrivalLog()
    log.trigger(TRIGGER)
    log.decide(0.5, BOUNDS, frozenset({"10.0.8.8"}))
    log.decide(0.6, BOUNDS)
    assert log.answered_at == {"10.0.8.8": 0.6}
    log.untrigger()
    log.trigger(100.0)
    assert log.answered_at == {}
    assert log.decide(101.0, BOUNDS).reason is WindowEnd.NO_TRAFFIC
