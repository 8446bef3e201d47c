"""A re-armable deadline that reuses one event-loop timer.

Every request moves a connection through "header deadline", "idle deadline"
and back.  Creating and cancelling a loop timer at each step costs more than
the rest of the bookkeeping, so a ``Deadline`` only records the new time and lets
its single timer, when it fires early, re-arm itself for the remaining time.

The timer is never scheduled more than ``horizon_s`` ahead, with ``horizon_s``
no longer than the shortest delay the owner sets routinely: a newly set, shorter
deadline is then never earlier than the running timer, so ``set`` almost never
has to cancel anything.  An occasional shorter delay (a linger) reschedules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """Calls ``callback`` once the time given to the last ``set`` has passed."""

    __slots__ = ("_callback", "_horizon_s", "_loop", "_now", "_timer", "_timer_at", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None],
                 horizon_s: float) -> None:
        self._loop = loop
        # Bound once: a call through it skips the method lookup on the loop's type, which
        # costs more than the clock read itself (``set`` runs several times per request).
        self._now: Callable[[], float] = loop.time
        self._callback = callback
        self._horizon_s = horizon_s
        self._when: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def set(self, delay_s: float) -> None:
        now = self._now()
        self._when = now + delay_s
        if self._timer is not None and self._timer_at > self._when:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._schedule(now)

    def clear(self) -> None:
        """No deadline; the running timer, if any, will find nothing to do."""
        self._when = None

    def cancel(self) -> None:
        """Clear and release the timer (the owner is going away)."""
        self._when = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, now: float) -> None:
        assert self._when is not None
        self._timer_at = min(self._when, now + self._horizon_s)
        self._timer = self._loop.call_at(self._timer_at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._when is None:
            return
        now = self._now()
        if now >= self._when:
            self._when = None
            self._callback()
        else:
            self._schedule(now)
