"""An asyncio event loop whose clock moves only when the test moves it.

The proxy's timers (``proxy.drain.deadline``) schedule with ``loop.call_later`` and, on
a loop that overrides ``time`` as this one does, read ``loop.time``; both then see a
virtual clock, so a test makes a header or idle timeout fire by advancing the clock, with
no real waiting and no flakiness.  Nothing may wait on the loop for a timer (the
selector would then sleep for real): the test advances the clock past the timer, then
lets the loop turn.

asyncio only: uvloop's clock is its own C code and cannot be replaced this way.
"""

from __future__ import annotations

import asyncio

START_S = 1000.0  # not 0: no code may mistake the clock's start for "never"


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a virtual clock (``advance``)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START_S

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock; timers now due run on the loop's next turns."""
        assert seconds >= 0, "time does not go back"
        self.now += seconds

    def turn(self, turns: int = 4) -> None:
        """Run what is ready (and what that schedules with call_soon), ``turns`` deep.
        Called from outside the loop."""
        async def settle() -> None:
            for _ in range(turns):
                await asyncio.sleep(0)

        self.run_until_complete(settle())

    def pass_time(self, seconds: float, step_s: float = 0.25) -> None:
        """Let ``seconds`` pass in steps, running the timers due at each step in order (a
        timer that re-arms itself for a moment within the span fires within it too)."""
        left = seconds
        while left > 0:
            moved = min(step_s, left)
            self.advance(moved)
            left -= moved
            self.turn()
