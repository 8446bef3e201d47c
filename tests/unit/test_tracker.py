"""Unit tests for proxy.tracker's idle registry: which connection makes room at
--max-connections."""

from __future__ import annotations

from proxy.tracker import ConnectionTracker


class Idler:
    """A connection as the idle registry sees it; ``busy`` refuses to be reclaimed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = False
        self.reclaimed = False

    def reclaim(self) -> bool:
        if self.busy:
            return False
        self.reclaimed = True
        return True

    def drain(self) -> None:
        """Drainable: nothing to do here."""

    def cut(self) -> int:
        return 0


def test_the_least_recently_idle_connection_is_reclaimed_first() -> None:
    t = ConnectionTracker()
    a, b, c = Idler("a"), Idler("b"), Idler("c")
    for connection in (a, b, c, a):  # a went idle again: b is now the oldest
        t.idle(connection)
    assert t.reclaim_idle() and b.reclaimed and not (a.reclaimed or c.reclaimed)
    assert t.reclaim_idle() and c.reclaimed
    assert t.reclaim_idle() and a.reclaimed
    assert not t.reclaim_idle(), "none left"


def test_a_connection_busy_again_is_passed_over_and_a_closed_one_forgotten() -> None:
    t = ConnectionTracker()
    busy, closed, idle = Idler("busy"), Idler("closed"), Idler("idle")
    for connection in (busy, closed, idle):
        t.add(connection)
        t.idle(connection)
    busy.busy = True
    t.remove(closed)
    assert t.reclaim_idle() and idle.reclaimed
    assert not busy.reclaimed and not closed.reclaimed
    assert not t.reclaim_idle()
