"""Give memory back to the system once a load has passed.

When a thousand slow readers go away, their buffers are freed, but glibc's allocator
keeps the freed pages of its heap for reuse: the process's RSS stays where the peak
left it, and on a node the sidecar looks as large as its worst minute.  glibc's
``malloc_trim(0)`` returns the free pages.  It walks the heap (a few milliseconds
for a large one), so it runs only after the number of open connections has fallen to
a quarter of its peak since the last trim, and at most once per ``MIN_INTERVAL_S``
(one put off by the interval runs when it ends).
Where there is no glibc (another libc, another OS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("drain_proxy.memory")
MIN_INTERVAL_S = 1.0  # a trim costs milliseconds; a falling load gets one per second at most
MIN_PEAK = 64  # fewer connections than this never held enough to matter


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


class Trimmer:
    """Decides when a trim is worth it, from the count of open connections."""

    def __init__(self, trim: Callable[[int], int] | None) -> None:
        self._trim = trim  # None: this libc cannot trim, nothing happens
        self._peak = 0
        self._last = float("-inf")
        self.trims = 0

    @classmethod
    def from_libc(cls) -> Trimmer:
        return cls(_malloc_trim())

    @property
    def available(self) -> bool:
        return self._trim is not None

    def connections(self, count: int, now: float) -> float | None:
        """The number of open connections is ``count`` at ``now``.  Returns when to tell
        it again, with no change needed: a trim the interval put off (the last
        connections of a load often close within it, and nothing would follow)."""
        self._peak = max(self._peak, count)
        if self._peak < MIN_PEAK or count > self._peak // 4 or self._trim is None:
            return None
        if now - self._last < MIN_INTERVAL_S:
            return self._last + MIN_INTERVAL_S
        self._trim(0)
        self.trims += 1
        self._last, self._peak = now, count
        log.debug("returned freed memory to the system (%d connections open)", count)
        return None
