"""The TCP quiet machine (``proxy.tcp.quiet``): examples, then random interleavings.

The model test feeds bytes from either side, a wanted close (drain or rotation), the
timer (only when armed, at or after its time, with the write buffers flushed or not)
and the connection ending, on a virtual clock, and checks after every step that a
close never comes while the client spoke last, comes at most once, only after the
quiet period with everything written, and that a connection waiting for its quiet
moment always has its timer armed (nothing is left to the deadline by mistake).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from proxy.tcp.quiet import (
    APP,
    ARM,
    CLIENT,
    CLOSE,
    CLOSED,
    DEFAULT_QUIET_S,
    NOBODY,
    NOTHING,
    QuietMachine,
    Spoke,
    quiet_period_s,
)
from proxy.transitions import IllegalTransition

Q = 0.1


def test_the_quiet_period_is_rotations_when_set() -> None:
    assert quiet_period_s(0.0) == DEFAULT_QUIET_S
    assert quiet_period_s(0.5) == 0.5


def test_an_answered_connection_closes_after_the_quiet_period() -> None:
    machine = QuietMachine(Q, APP, 10.0)
    assert machine.close_wanted("drain", 10.0) is ARM and machine.timer_at == pytest.approx(10.1)
    assert machine.timer(10.1, flushed=True) is CLOSE
    assert machine.spoke is CLOSED and machine.reason == "drain"


def test_bytes_during_the_wait_move_the_moment_without_a_new_timer() -> None:
    machine = QuietMachine(Q, APP, 10.0)
    assert machine.close_wanted("drain", 10.0) is ARM
    assert machine.client_bytes(10.05) is NOTHING  # a request: the timer stays armed
    assert machine.timer(10.1, flushed=True) is NOTHING  # the client spoke last: wait
    assert machine.timer_at is None
    assert machine.app_bytes(10.3) is ARM and machine.timer_at == pytest.approx(10.4)
    assert machine.app_bytes(10.35) is NOTHING  # more of the answer: same timer
    assert machine.timer(10.4, flushed=True) is ARM  # quiet only since 10.35
    assert machine.timer_at == pytest.approx(10.45)
    assert machine.timer(10.45, flushed=False) is ARM  # still being written out
    assert machine.timer(10.55, flushed=True) is CLOSE


def test_a_request_outstanding_is_never_closed() -> None:
    machine = QuietMachine(Q, CLIENT, 0.0)
    assert machine.close_wanted("drain", 0.0) is ARM
    assert machine.timer(100.0, flushed=True) is NOTHING
    assert machine.spoke is CLIENT


def test_a_silent_connection_closes_and_rotation_yields_to_the_drain() -> None:
    machine = QuietMachine(Q, NOBODY, 5.0)
    assert machine.close_wanted("max_age", 5.0) is ARM
    assert machine.close_wanted("drain", 5.01) is NOTHING  # armed already
    assert machine.close_wanted("max_age", 5.02) is NOTHING
    assert machine.reason == "drain"
    assert machine.timer(5.1, flushed=True) is CLOSE


def test_nothing_is_decided_without_a_wanted_close_or_after_the_end() -> None:
    machine = QuietMachine(Q, NOBODY, 0.0)
    assert machine.app_bytes(1.0) is NOTHING  # rotation watches, its age not reached
    machine.ended()
    assert machine.close_wanted("drain", 2.0) is NOTHING
    assert machine.app_bytes(2.0) is NOTHING and machine.client_bytes(2.0) is NOTHING
    with pytest.raises(IllegalTransition):
        machine._move(APP)


class QuietModel(RuleBasedStateMachine):
    """Random interleavings of the machine's events against a plain model."""

    @initialize(spoke=st.sampled_from([NOBODY, CLIENT, APP]), quiet_s=st.sampled_from([0.05, Q]))
    def start(self, spoke: Spoke, quiet_s: float) -> None:
        self.now = 100.0
        self.quiet_s = quiet_s
        self.machine = QuietMachine(quiet_s, spoke, self.now)
        self.client_last = spoke is CLIENT
        self.last_at = self.now
        self.armed = False  # the adapter's one timer
        self.wanted = False
        self.closes = 0
        self.ended = False

    def _apply(self, action: object) -> None:
        if action is ARM:
            assert not self.armed, "a second timer armed"
            assert self.machine.timer_at is not None and self.machine.timer_at >= self.now - 1e-9
            self.armed = True
        elif action is CLOSE:
            assert not self.client_last, "closed while the client awaits an answer"
            assert self.wanted, "closed though nothing wanted it"
            assert self.now - self.last_at >= self.quiet_s - 1e-9, "closed before quiet"
            self.closes += 1
        else:
            assert action is NOTHING

    @rule(dt=st.floats(0, 0.3))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def client_sends(self) -> None:
        action = self.machine.client_bytes(self.now)
        if not self.closes and not self.ended:
            self.client_last, self.last_at = True, self.now
        self._apply(action)

    @rule()
    def app_sends(self) -> None:
        action = self.machine.app_bytes(self.now)
        if not self.closes and not self.ended:
            self.client_last, self.last_at = False, self.now
        self._apply(action)

    @rule(reason=st.sampled_from(["drain", "max_age"]))
    def close_wanted(self, reason: str) -> None:
        action = self.machine.close_wanted(reason, self.now)
        if not self.closes and not self.ended:
            self.wanted = True
        self._apply(action)

    @precondition(lambda self: self.armed)
    @rule(flushed=st.booleans())
    def timer_fires(self, flushed: bool) -> None:
        assert self.machine.timer_at is not None
        self.now = max(self.now, self.machine.timer_at)  # a timer never fires early here
        self.armed = False
        self._apply(self.machine.timer(self.now, flushed))

    @rule()
    def connection_ends(self) -> None:
        self.machine.ended()
        self.ended = True
        self.armed = False  # the adapter cancels it

    @invariant()
    def at_most_one_close(self) -> None:
        assert self.closes <= 1
        if self.closes:
            assert self.machine.spoke is CLOSED

    @invariant()
    def a_wanted_close_is_never_forgotten(self) -> None:
        """Waiting for a quiet moment (closable, a close wanted) means a timer is armed;
        a request outstanding needs none: the app's answer arms it."""
        if self.wanted and not self.closes and not self.ended and not self.client_last:
            assert self.armed, "a closable connection waits with no timer"

    @invariant()
    def the_machine_agrees_on_who_spoke_last(self) -> None:
        if not self.closes and not self.ended:
            assert (self.machine.spoke is CLIENT) == self.client_last


FAST = settings(max_examples=300, stateful_step_count=40, deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow])


def test_quiet_machine_model() -> None:
    run_state_machine_as_test(QuietModel, settings=FAST)


@pytest.mark.slow
def test_quiet_machine_model_long() -> None:
    run_state_machine_as_test(QuietModel, settings=settings(FAST, max_examples=5000))
