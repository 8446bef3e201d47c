"""Unit tests for proxy.drain.tracker's reclaim: which connection makes room at
--max-connections."""

from __future__ import annotations

from proxy.drain.tracker import ConnectionTracker


class Idler:
    """A connection as the tracker sees it: idle with rank ``since`` (None: busy or fresh)."""

    def __init__(self, since: int | None) -> None:
        self.since = since
        self.reclaimed = False

    def idle_rank(self) -> int | None:
        return self.since

    def reclaim(self) -> bool:
        if self.since is None:
            return False
        self.reclaimed, self.since = True, None
        return True

    def drain(self) -> None:
        """Drainable: nothing to do here."""

    def cut(self) -> int:
        return 0


def test_the_least_recently_idle_connection_is_reclaimed_first() -> None:
    t = ConnectionTracker()
    a, b, c = Idler(3), Idler(1), Idler(2)  # b went idle first
    for connection in (a, b, c):
        t.add(connection)
    assert t.reclaim_idle() and b.reclaimed and not (a.reclaimed or c.reclaimed)
    assert t.reclaim_idle() and c.reclaimed
    assert t.reclaim_idle() and a.reclaimed
    assert not t.reclaim_idle(), "none left"


def test_busy_fresh_and_closed_connections_are_passed_over() -> None:
    t = ConnectionTracker()
    busy, closed, idle = Idler(None), Idler(1), Idler(2)
    for connection in (busy, closed, idle):
        t.add(connection)
    t.remove(closed)
    assert t.reclaim_idle() and idle.reclaimed
    assert not busy.reclaimed and not closed.reclaimed
    assert not t.reclaim_idle()
