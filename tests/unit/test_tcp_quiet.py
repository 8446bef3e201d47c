"""The TCP quiet machine (``proxy.tcp.quiet``): examples, then random interleavings.

The machine is not told of every read: it looks at what the relay kept (who spoke last,
a count of moves) when a close is wanted, when its timer fires, and at the first move
after it asked to wait for one.  The model test moves bytes from either side, wants a
close (drain or rotation), fires the timer (only when armed, at or after its time, with
the write buffers flushed or not) and ends the connection, on a virtual clock, and
checks after every step that a close never comes while the client spoke last, comes at
most once, only after a full quiet period with everything written and at the first
look that can tell, and that a connection waiting for its quiet moment always has its
timer armed or, with a request outstanding, waits for the next move (nothing is left to
the deadline by mistake).
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
    WAIT,
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
    machine = QuietMachine(Q, APP, 7, 10.0)
    assert machine.close_wanted("drain", APP, 7, 10.0) is ARM
    assert machine.timer_at == pytest.approx(10.1)
    assert machine.timer(APP, 7, 10.1, flushed=True) is CLOSE
    assert machine.spoke is CLOSED and machine.reason == "drain"


def test_a_quiet_watched_before_the_close_is_wanted_closes_at_once() -> None:
    machine = QuietMachine(Q, APP, 7, 10.0)  # rotation watches a quiet period before the age
    assert machine.close_wanted("max_age", APP, 7, 10.1) is ARM
    assert machine.timer_at == pytest.approx(10.1)
    assert machine.timer(APP, 7, 10.1, flushed=True) is CLOSE


def test_bytes_between_looks_count_as_moved_at_the_later_look() -> None:
    machine = QuietMachine(Q, APP, 0, 10.0)
    assert machine.close_wanted("drain", APP, 0, 10.0) is ARM
    assert machine.timer(APP, 4, 10.1, flushed=True) is ARM  # a request and its answer
    assert machine.timer_at == pytest.approx(10.2)  # quiet counted from this look
    assert machine.timer(APP, 6, 10.2, flushed=True) is ARM  # more of the answer
    assert machine.timer(APP, 6, 10.3, flushed=False) is ARM  # still being written out
    assert machine.timer_at == pytest.approx(10.4)
    assert machine.timer(APP, 6, 10.4, flushed=True) is CLOSE


def test_a_request_outstanding_waits_for_the_answer_without_a_timer() -> None:
    machine = QuietMachine(Q, APP, 0, 10.0)
    assert machine.close_wanted("drain", APP, 0, 10.0) is ARM
    assert machine.timer(CLIENT, 1, 10.1, flushed=True) is WAIT  # no timer until it moves
    assert machine.timer_at is None and machine.waiting
    assert machine.moved(CLIENT, 2, 10.5) is WAIT  # more of the request
    assert machine.moved(APP, 3, 10.9) is ARM  # the answer: quiet counted from it exactly
    assert machine.timer_at == pytest.approx(11.0) and not machine.waiting
    assert machine.timer(APP, 3, 11.0, flushed=True) is CLOSE


def test_a_request_outstanding_is_never_closed() -> None:
    machine = QuietMachine(Q, CLIENT, 1, 0.0)
    assert machine.close_wanted("drain", CLIENT, 1, 0.0) is WAIT
    assert machine.close_wanted("max_age", CLIENT, 1, 5.0) is NOTHING  # waiting already
    assert machine.spoke is CLIENT and machine.reason == "drain"


def test_a_silent_connection_closes_and_rotation_yields_to_the_drain() -> None:
    machine = QuietMachine(Q, NOBODY, 0, 5.0)
    assert machine.close_wanted("max_age", NOBODY, 0, 5.0) is ARM
    assert machine.close_wanted("drain", NOBODY, 0, 5.01) is NOTHING  # armed already
    assert machine.close_wanted("max_age", NOBODY, 0, 5.02) is NOTHING
    assert machine.reason == "drain"
    assert machine.timer(NOBODY, 0, 5.1, flushed=True) is CLOSE


def test_nothing_is_decided_after_the_end() -> None:
    machine = QuietMachine(Q, NOBODY, 0, 0.0)
    machine.ended()
    assert machine.close_wanted("drain", APP, 3, 2.0) is NOTHING
    with pytest.raises(IllegalTransition):
        machine._move(APP)


class QuietModel(RuleBasedStateMachine):
    """Random interleavings of the machine's events against a plain model: the relay's
    state as the machine sees it, and the true times bytes moved."""

    @initialize(spoke=st.sampled_from([NOBODY, CLIENT, APP]), quiet_s=st.sampled_from([0.05, Q]))
    def start(self, spoke: Spoke, quiet_s: float) -> None:
        self.now = 100.0
        self.quiet_s = quiet_s
        self.spoke = spoke  # the relay's: who spoke last
        self.moves = 0  # the relay's count of moves
        self.machine = QuietMachine(quiet_s, spoke, self.moves, self.now)
        self.last_at = self.now  # when bytes truly last moved (or watching began)
        self.looked_at = self.now  # the machine's last look...
        self.moved_since_look = False  # ...and whether bytes moved after it
        self.armed = False  # the adapter's one timer
        self.waiting = False  # the adapter's hook at the next move
        self.wanted = False
        self.closes = 0
        self.ended = False

    def _apply(self, action: object) -> None:
        if action is ARM:
            assert not self.armed, "a second timer armed"
            assert self.machine.timer_at is not None and self.machine.timer_at >= self.now - 1e-9
            self.armed = True
        elif action is WAIT:
            assert not self.armed and not self.waiting, "waits with a look already coming"
            assert self.spoke is CLIENT, "waits with no request outstanding"
            self.waiting = True
        elif action is CLOSE:
            assert self.spoke is not CLIENT, "closed while the client awaits an answer"
            assert self.wanted, "closed though nothing wanted it"
            assert self.now - self.last_at >= self.quiet_s - 1e-9, "closed before quiet"
            self.closes += 1
        else:
            assert action is NOTHING

    def _looked(self) -> None:
        self.looked_at, self.moved_since_look = self.now, False

    @rule(dt=st.floats(0, 0.3))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(spoke=st.sampled_from([CLIENT, APP]), count=st.integers(1, 3))
    def bytes_move(self, spoke: Spoke, count: int) -> None:
        if self.closes or self.ended:
            return
        self.spoke, self.last_at = spoke, self.now
        self.moves += count
        self.moved_since_look = True
        if self.waiting:  # the adapter's hook: once, at this move
            self.waiting = False
            action = self.machine.moved(self.spoke, self.moves, self.now)
            self._looked()
            self._apply(action)
            if action is ARM:
                assert self.machine.timer_at == pytest.approx(self.now + self.quiet_s)

    @rule(reason=st.sampled_from(["drain", "max_age"]))
    def close_wanted(self, reason: str) -> None:
        action = self.machine.close_wanted(reason, self.spoke, self.moves, self.now)
        if not self.closes and not self.ended:
            self.wanted = True
            self._looked()
        self._apply(action)

    @precondition(lambda self: self.armed)
    @rule(flushed=st.booleans())
    def timer_fires(self, flushed: bool) -> None:
        assert self.machine.timer_at is not None
        self.now = max(self.now, self.machine.timer_at)  # a timer never fires early here
        self.armed = False
        # At most a quiet period late: quiet since a look at least a quiet period ago,
        # answered and written out, the close comes now.
        due = (not self.moved_since_look and self.now - self.looked_at >= self.quiet_s - 1e-9
               and self.spoke is not CLIENT and flushed)
        action = self.machine.timer(self.spoke, self.moves, self.now, flushed)
        assert action is not CLOSE or flushed, "closed with relayed bytes still unwritten"
        self._looked()
        self._apply(action)
        if due and not self.closes and not self.ended:
            raise AssertionError("quiet for a period since the last look, but not closed")

    @rule()
    def connection_ends(self) -> None:
        self.machine.ended()
        self.ended = True
        self.armed = self.waiting = False  # the adapter cancels both

    @invariant()
    def at_most_one_close(self) -> None:
        assert self.closes <= 1
        if self.closes:
            assert self.machine.spoke is CLOSED

    @invariant()
    def a_wanted_close_is_never_forgotten(self) -> None:
        """Waiting for a quiet moment (a close wanted) means a timer is armed or, with a
        request outstanding, the next move will be told."""
        if self.wanted and not self.closes and not self.ended:
            assert self.armed or (self.waiting and self.spoke is CLIENT), \
                "a connection waits for its quiet moment with nothing to look again"
            assert self.machine.waiting == self.waiting

    @invariant()
    def the_next_look_is_within_a_quiet_period(self) -> None:
        """With ``timer_fires``' check, what bounds a close's delay: one quiet period."""
        if self.armed:
            assert self.machine.timer_at is not None
            assert self.machine.timer_at <= self.looked_at + self.quiet_s + 1e-9


FAST = settings(max_examples=300, stateful_step_count=40, deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow])


def test_quiet_machine_model() -> None:
    run_state_machine_as_test(QuietModel, settings=FAST)


@pytest.mark.slow
def test_quiet_machine_model_long() -> None:
    run_state_machine_as_test(QuietModel, settings=settings(FAST, max_examples=5000))
