"""Unit tests for proxy.drain.deadline on a real event loop (asyncio, and uvloop when installed).

Nothing sleeps: the tests await an ``asyncio.Event`` that the callback (or a
probe timer scheduled past the deadline) sets, bounded by ``wait_for``.  Times are read
from ``time.monotonic``, the clock Deadline uses (uvloop's loop clock has millisecond
steps), and compared as ``fired_at >= start + delay``, the sum Deadline itself computes,
not as a difference, which can land a hair below the delay.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from proxy.drain.deadline import Deadline, loop_clock

from support.virtual_clock import VirtualClockLoop

SHORT = 0.02
LONG = 5.0
WAIT = 1.0  # generous upper bound for a callback that is due within SHORT-ish
Scenario = Callable[[], Coroutine[Any, Any, None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Scenario], None]]:
    """Run a scenario on a fresh loop; an error reaching the loop's handler fails the test."""
    if request.param == "uvloop":
        factory: Callable[[], asyncio.AbstractEventLoop] = pytest.importorskip(
            "uvloop").new_event_loop
    else:
        factory = asyncio.new_event_loop
    errors: list[dict[str, Any]] = []

    def runner(scenario: Scenario) -> None:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.get_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
            loop_runner.run(scenario())

    yield runner
    assert not errors, errors


class Recorder:
    """The deadline's callback: counts calls and notes the monotonic time of each."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.fired = asyncio.Event()
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.fired.set()

    async def wait(self) -> float:
        await asyncio.wait_for(self.fired.wait(), timeout=WAIT)
        return self.times[-1]

    async def let_pass(self, delay_s: float) -> None:
        """Let ``delay_s`` pass, waiting for a probe timer's event rather than sleeping."""
        probe = asyncio.Event()
        self.loop.call_later(delay_s, probe.set)
        await asyncio.wait_for(probe.wait(), timeout=WAIT)


@pytest.mark.parametrize("horizon", [0.005, SHORT, 10.0])
@pytest.mark.parametrize("delay", [0.01, 0.05])
def test_fires_once_after_the_delay(run: Callable[[Scenario], None], horizon: float,
                                    delay: float) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        deadline = Deadline(recorder.loop, recorder, horizon_s=horizon)
        start = time.monotonic()
        deadline.set(delay)
        fired_at = await recorder.wait()
        assert fired_at >= start + delay  # same float sum as Deadline
        await recorder.let_pass(2 * delay)
        assert recorder.times == [fired_at]  # once, not re-armed

    run(scenario)


@pytest.mark.parametrize("horizon", [0.005, SHORT, 10.0])
def test_set_again_postpones(run: Callable[[Scenario], None], horizon: float) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        deadline = Deadline(recorder.loop, recorder, horizon_s=horizon)
        reset_at: list[float] = []

        def postpone() -> None:
            reset_at.append(time.monotonic())
            deadline.set(0.04)

        deadline.set(SHORT)
        recorder.loop.call_later(SHORT / 2, postpone)  # runs before the first deadline
        fired_at = await recorder.wait()
        assert reset_at, "the postponing timer did not run first"
        assert fired_at >= reset_at[0] + 0.04
        assert len(recorder.times) == 1

    run(scenario)


@pytest.mark.parametrize("horizon", [0.005, 10.0])
def test_set_again_immediately_uses_the_last_delay(run: Callable[[Scenario], None],
                                                   horizon: float) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        deadline = Deadline(recorder.loop, recorder, horizon_s=horizon)
        start = time.monotonic()
        for delay in (0.01, 0.02, 0.05):
            deadline.set(delay)
        fired_at = await recorder.wait()
        assert fired_at >= start + 0.05
        await recorder.let_pass(0.02)
        assert recorder.times == [fired_at]

    run(scenario)


@pytest.mark.parametrize("horizon", [0.005, SHORT, 10.0])
def test_shorter_set_after_longer_fires_on_time(run: Callable[[Scenario], None],
                                                horizon: float) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        deadline = Deadline(recorder.loop, recorder, horizon_s=horizon)
        deadline.set(LONG)
        start = time.monotonic()
        deadline.set(SHORT)
        fired_at = await recorder.wait()  # within WAIT, far before LONG
        assert start + SHORT <= fired_at < start + LONG

    run(scenario)


@pytest.mark.parametrize("horizon", [0.005, 10.0])
def test_clear_prevents_the_call_and_set_rearms(run: Callable[[Scenario], None],
                                                horizon: float) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        deadline = Deadline(recorder.loop, recorder, horizon_s=horizon)
        deadline.set(0.01)
        deadline.clear()
        await recorder.let_pass(0.05)
        assert recorder.times == []
        start = time.monotonic()
        deadline.set(0.01)
        assert await recorder.wait() >= start + 0.01

    run(scenario)


@pytest.mark.parametrize("horizon", [0.005, 10.0])
def test_cancel_stops_it(run: Callable[[Scenario], None], horizon: float) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        deadline = Deadline(recorder.loop, recorder, horizon_s=horizon)
        deadline.set(0.01)
        deadline.cancel()
        deadline.cancel()  # idempotent
        await recorder.let_pass(0.05)
        assert recorder.times == []

    run(scenario)


def test_callback_may_set_the_next_deadline(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        done = asyncio.Event()

        def callback() -> None:
            times.append(time.monotonic())
            if len(times) < 3:
                deadline.set(0.01)
            else:
                done.set()

        deadline = Deadline(loop, callback, horizon_s=0.005)
        deadline.set(0.01)
        await asyncio.wait_for(done.wait(), timeout=WAIT)
        assert len(times) == 3
        assert all(b >= a + 0.01 for a, b in itertools.pairwise(times))

    run(scenario)


def test_the_clock_is_time_monotonic_unless_the_loop_has_its_own() -> None:
    """asyncio's loops and uvloop read CLOCK_MONOTONIC: the deadline calls it directly,
    cheaper than the loop's time(); a loop with a clock of its own is read through it."""
    virtual_loop = VirtualClockLoop()
    loops: list[asyncio.AbstractEventLoop] = [asyncio.new_event_loop(), virtual_loop]
    try:
        assert loop_clock(loops[0]) is time.monotonic
        virtual = loop_clock(virtual_loop)
        assert virtual is not time.monotonic
        virtual_loop.advance(5.0)
        assert virtual() == virtual_loop.time()
        uvloop = pytest.importorskip("uvloop")
        loops.append(uvloop.new_event_loop())
        assert loop_clock(loops[2]) is time.monotonic
        assert abs(loops[2].time() - time.monotonic()) < 0.01  # the same clock, in ms
    finally:
        for loop in loops:
            loop.close()
