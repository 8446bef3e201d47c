"""A re-armable deadline that reuses one event-loop timer.

Every request moves a connection through "header deadline", "idle deadline"
and back.  Creating and cancelling a loop timer at each step costs more than
the rest of the bookkeeping, so a ``Deadline`` only records the new time and lets
its single timer, when it fires early, re-arm itself for the remaining time.

The timer is never scheduled more than ``horizon_s`` ahead, with ``horizon_s``
no longer than the shortest delay the owner sets routinely: a newly set, shorter
deadline is then never earlier than the running timer, so ``set`` almost never
has to cancel anything.  An occasional shorter delay (a linger) reschedules.

Times are read from ``time.monotonic`` when that is the loop's clock (asyncio's loops,
and uvloop, whose clock is CLOCK_MONOTONIC in whole milliseconds), and the timer is
scheduled with ``call_later``, so only differences of one clock enter the sums.
uvloop's ``time()`` is a method call that updates libuv's clock, about 350 instructions
from compiled code against 275 for ``time.monotonic``; ``set`` runs three times per
proxied request.  A loop with a clock of its own (a test's virtual clock) is read
through its ``time()``.  A timer that fires a little early (uvloop's timers count whole
milliseconds) re-arms itself for the rest, as one capped at the horizon does.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The loop's clock as a function that is cheap to call: ``time.monotonic`` when the
    loop's ``time()`` reads that clock, the loop's ``time`` otherwise."""
    loop_type = type(loop)
    if loop_type.time is asyncio.BaseEventLoop.time or loop_type.__module__ == "uvloop":
        return time.monotonic
    return loop.time


class Deadline:
    """Calls ``callback`` once the time given to the last ``set`` has passed."""

    __slots__ = ("_callback", "_clock", "_horizon_s", "_loop", "_timer", "_timer_at", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None],
                 horizon_s: float) -> None:
        self._loop = loop
        self._clock = loop_clock(loop)  # once: a call through it skips any method lookup
        self._callback = callback
        self._horizon_s = horizon_s
        # The monotonic time it is due, infinity for none: a float either way, which
        # compiled code keeps unboxed (``None`` would box every time set).
        self._when = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def set(self, delay_s: float) -> None:
        now = self._clock()
        self._when = now + delay_s
        if self._timer is not None and self._timer_at > self._when:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._schedule(now)

    def clear(self) -> None:
        """No deadline; the running timer, if any, will find nothing to do."""
        self._when = math.inf

    def cancel(self) -> None:
        """Clear and release the timer (the owner is going away)."""
        self._when = math.inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, now: float) -> None:
        self._timer_at = min(self._when, now + self._horizon_s)
        self._timer = self._loop.call_later(self._timer_at - now, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._when == math.inf:
            return
        now = self._clock()
        if now >= self._when:
            self._when = math.inf
            self._callback()
        else:
            self._schedule(now)
