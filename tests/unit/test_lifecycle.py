"""Unit tests for proxy.drain.lifecycle: the phase table and what each phase implies.

The clock is whatever number the test passes in; nothing here sleeps.
"""

from __future__ import annotations

import itertools

import pytest

from proxy.drain.lifecycle import TRANSITIONS, DrainTimeline, Phase, first_request_grace_s
from proxy.transitions import IllegalTransition

S, P, D, X = Phase.SERVING, Phase.PROPAGATING, Phase.DRAINING, Phase.DRAINED
# One forward step at a time; back to serving only from drained (a drain undone).
ALLOWED = {(S, P), (P, D), (D, X), (X, S)}


def timeline_in(phase: Phase, fail_readiness: bool = True) -> DrainTimeline:
    """A timeline that reached ``phase`` the legal way, one phase per 10 s from t=100."""
    timeline = DrainTimeline(propagation_window_s=10.0, drain_timeout_s=15.0,
                             fail_readiness_on_drain=fail_readiness)
    now = 100.0
    for step in (P, D, X)[: list(Phase).index(phase)]:
        timeline.move_to(step, now)
        now += 10.0
    assert timeline.phase is phase
    return timeline


def test_transition_table() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert set(TRANSITIONS) == set(Phase)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(Phase, Phase)),
                         ids=lambda p: p.value)
def test_move_to(source: Phase, target: Phase) -> None:
    timeline = timeline_in(source)
    before = dict(timeline.entered_at)
    if (source, target) in ALLOWED:
        timeline.move_to(target, 500.0)
        assert timeline.phase is target
        assert timeline.entered_at == {**before, target: 500.0}
    else:
        with pytest.raises(IllegalTransition, match=f"{source.value} -> {target.value}"):
            timeline.move_to(target, 500.0)
        assert timeline.phase is source
        assert timeline.entered_at == before


def test_move_to_returns_previous_phase_duration() -> None:
    timeline = DrainTimeline(propagation_window_s=10.0, drain_timeout_s=15.0)
    assert timeline.move_to(P, 100.0) == 0.0  # serving has no recorded start
    assert timeline.move_to(D, 110.5) == pytest.approx(10.5)
    assert timeline.move_to(X, 113.0) == pytest.approx(2.5)


def test_trigger_only_once() -> None:
    timeline = DrainTimeline(propagation_window_s=10.0, drain_timeout_s=15.0)
    assert not timeline.started
    assert timeline.trigger(42.0) is True
    assert (timeline.phase, timeline.entered_at) == (P, {P: 42.0})
    assert timeline.trigger(43.0) is False
    assert timeline.entered_at == {P: 42.0}
    assert timeline.phase is P


@pytest.mark.parametrize("phase", [D, X])
def test_trigger_later_phases_is_a_no_op(phase: Phase) -> None:
    timeline = timeline_in(phase)
    before = dict(timeline.entered_at)
    assert timeline.trigger(999.0) is False
    assert (timeline.phase, timeline.entered_at) == (phase, before)


@pytest.mark.parametrize(
    ("phase", "fail_readiness", "ready", "accepting", "close_after", "started"),
    [(S, True, True, True, False, False), (S, False, True, True, False, False),
     (P, True, False, True, True, True), (P, False, True, True, True, True),
     (D, True, False, False, True, True), (D, False, False, False, True, True),
     (X, True, False, False, True, True), (X, False, False, False, True, True)],
)
def test_phase_policy(phase: Phase, fail_readiness: bool, ready: bool, accepting: bool,
                      close_after: bool, started: bool) -> None:
    timeline = timeline_in(phase, fail_readiness)
    assert timeline.ready is ready
    assert timeline.accepting is accepting
    assert timeline.close_after_response is close_after
    assert timeline.started is started


@pytest.mark.parametrize(
    ("moves", "now", "expected"),
    [([], 5.0, {}),
     ([(P, 100.0)], 103.5, {"propagating": 3.5}),
     ([(P, 100.0), (D, 110.0)], 112.25, {"propagating": 10.0, "draining": 2.25}),
     ([(P, 100.0), (D, 110.0), (X, 120.0)], 999.0, {"propagating": 10.0, "draining": 10.0}),
     ([(P, 0.0)], 1 / 3, {"propagating": 0.333333})],
)
def test_durations(moves: list[tuple[Phase, float]], now: float,
                   expected: dict[str, float]) -> None:
    timeline = DrainTimeline(propagation_window_s=10.0, drain_timeout_s=15.0)
    for phase, at in moves:
        timeline.move_to(phase, at)
    assert timeline.durations(now) == pytest.approx(expected)
    assert list(timeline.durations(now)) == list(expected)  # phase order


@pytest.mark.parametrize(("trigger_at", "now", "since"), [(None, 50.0, 0.0), (40.0, 47.5, 7.5)])
def test_seconds_since_trigger(trigger_at: float | None, now: float, since: float) -> None:
    timeline = DrainTimeline(propagation_window_s=10.0, drain_timeout_s=15.0)
    if trigger_at is not None:
        timeline.trigger(trigger_at)
    assert timeline.seconds_since_trigger(now) == pytest.approx(since)


def test_summary() -> None:
    timeline = DrainTimeline(propagation_window_s=10.0, drain_timeout_s=15.0)
    timeline.trigger(100.0)
    timeline.move_to(D, 110.0)
    timeline.accepted_while_draining = 3
    timeline.served_while_draining = 7
    timeline.connections_closed_by_drain = 2
    timeline.cut_requests = 1
    timeline.quiet_closed_tunnels = 4
    timeline.forced = True
    timeline.window = {"ended_by": "fixed", "lasted_seconds": 10.0, "adaptive": False}
    assert timeline.summary(111.5) == {
        "phase": "draining",
        "phase_durations_seconds": {"propagating": 10.0, "draining": 1.5},
        "connections_accepted_while_draining": 3,
        "requests_served_while_draining": 7,
        "connections_closed_by_drain": 2,
        "requests_cut": 1,
        "tunnels_closed_quiet": 4,
        "tunnels_cut": 0,
        "forced": True,
        "failed": False,
        "propagation_window": {"ended_by": "fixed", "lasted_seconds": 10.0, "adaptive": False},
    }


def test_summary_before_drain() -> None:
    summary = DrainTimeline(propagation_window_s=10.0, drain_timeout_s=15.0).summary(1.0)
    assert summary["phase"] == "serving"
    assert summary["phase_durations_seconds"] == {}
    assert summary["forced"] is False
    assert summary["requests_cut"] == 0
    assert summary["propagation_window"] is None


@pytest.mark.parametrize(("phase", "value"), [(S, "serving"), (P, "propagating"),
                                              (D, "draining"), (X, "drained")])
def test_phase_values_are_metric_state_names(phase: Phase, value: str) -> None:
    assert phase.value == value


def test_phase_durations_do_not_fall_below_the_window_by_float_error() -> None:
    """A 300 ms window read off a millisecond clock is 0.3, not 0.29999999999927."""
    timeline = DrainTimeline(propagation_window_s=0.3, drain_timeout_s=1.0)
    timeline.trigger(1234.267)
    assert timeline.move_to(Phase.DRAINING, 1234.567) == 0.3
    assert timeline.durations(1234.567)["propagating"] == 0.3


def test_undo_serves_again_and_forgets_the_drain() -> None:
    timeline = timeline_in(X)
    timeline.cut_requests, timeline.forced = 2, True
    timeline.undo(200.0)
    assert timeline.phase is S and timeline.ready and not timeline.started
    assert timeline.entered_at == {} and timeline.cut_requests == 0 and not timeline.forced
    assert timeline.trigger(300.0) is True, "a later drain starts afresh"


@pytest.mark.parametrize(("header_timeout_s", "grace_s"), [(10.0, 1.0), (1.0, 1.0), (0.3, 0.3)])
def test_the_first_request_grace_is_a_second_or_the_header_timeout(
        header_timeout_s: float, grace_s: float) -> None:
    assert first_request_grace_s(header_timeout_s) == grace_s
