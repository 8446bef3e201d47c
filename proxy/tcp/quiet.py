"""When a raw TCP connection may be closed without cutting a message.  Sans-IO.

TCP mode relays bytes it does not parse, so it cannot see where one request or
response ends.  What it can see is who sent bytes last and how long nothing has
moved.  Most protocols run over TCP (Postgres, Redis, MySQL, memcached, AMQP's
RPCs, ...) are request/response: the client asks, the app answers, the client asks
again.  Between an answer and the next request the connection is *quiet*, and a
close then cuts nothing: the app sees EOF with no request open (Postgres rolls back
nothing, it was not in a statement), the client sees EOF after a complete answer,
as when a server closes an idle pooled connection, and opens a new one.

A **quiet moment** is therefore: the app spoke last (or nobody has spoken at all),
nothing moved in either direction for the quiet period, and what was relayed has
been written out on both sides.  A connection where the client spoke last has a
request outstanding, however long the app takes to answer, and is never closed
here; the drain deadline decides about it.

The quiet period is ``--tcp-rotate-idle`` when set, else ``DEFAULT_QUIET_S``.  It must
be longer than the pauses *inside* one answer (an app writing a reply in pieces, a
large result arriving over several reads), which on a cluster network are well under
a millisecond to a few milliseconds, and short enough that an idle pooled connection
is found at once.  A client that sends its next request the instant an answer
arrives (a benchmark at full speed) has no quiet moment at all: nothing that does
not parse the protocol can tell its gaps from the pauses inside an answer, so it is
cut at the deadline as before.

Two things want a connection closed at a quiet moment: the drain (after the
propagation window) and ``--max-connection-age`` rotation (with ``--tcp-rotate-idle``).
Both use this machine.  It is not told of every read: a clock read and a call on every
relayed read would cost a sixth of a round trip's instructions.  The relay keeps, with
no clock, who spoke last and a count that grows whenever bytes or an EOF move
(``Tunnel.moves``); the machine *looks* at them when a close is wanted and when its one
timer fires, and answers with an ``Action`` that ``proxy.tcp.relay`` carries out.
Bytes found to have moved since the previous look are taken to have moved at this
look, the latest they can have: so a close never comes before a full quiet period,
and comes at most one quiet period later than a clock on every read would have
closed it.  A request outstanding (the client spoke last) needs no timer: the machine
asks to be told at the next move (``WAIT``), once, and the app's answer starts the
quiet from then.  While a close is wanted one of the two is always set, until the
connection is closed or ends.
"""

from __future__ import annotations

import enum
from typing import Final

from proxy.transitions import bit_masks, check_move

# Longer than the pauses inside one answer on a cluster network (microseconds to a few
# milliseconds), short against the drain timeout, and a pooled connection that is idle
# is closed a tenth of a second after the window.
DEFAULT_QUIET_S: Final = 0.1


def quiet_period_s(tcp_rotate_idle_s: float) -> float:
    """The quiet period: ``--tcp-rotate-idle`` when set, so rotation and the drain agree
    on what quiet means, else the default."""
    return tcp_rotate_idle_s if tcp_rotate_idle_s > 0 else DEFAULT_QUIET_S


class Spoke(enum.IntEnum):
    """Who sent bytes (or EOF) last on the connection."""

    NOBODY = 0  # not a byte either way yet: nothing can be cut
    CLIENT = 1  # a request is outstanding: never closed here
    APP = 2  # answered: quiet for long enough, it is between messages
    CLOSED = 3  # closed (by this machine, or it ended by itself): final


NOBODY: Final = Spoke.NOBODY
CLIENT: Final = Spoke.CLIENT
APP: Final = Spoke.APP
CLOSED: Final = Spoke.CLOSED

TRANSITIONS: Final[dict[Spoke, frozenset[Spoke]]] = {
    NOBODY: frozenset({CLIENT, APP, CLOSED}),
    CLIENT: frozenset({CLIENT, APP, CLOSED}),
    APP: frozenset({CLIENT, APP, CLOSED}),
    CLOSED: frozenset(),
}
_ALLOWED: Final = bit_masks(TRANSITIONS)


class Action(enum.IntEnum):
    """What the adapter does after an event."""

    NOTHING = 0
    ARM = 1  # call ``timer`` at ``QuietMachine.timer_at`` (no timer is armed now)
    CLOSE = 2  # close gracefully now: FIN both ways after flushing
    WAIT = 3  # call ``moved`` at the next bytes or EOF either way, once (nothing is armed)


NOTHING: Final = Action.NOTHING
ARM: Final = Action.ARM
CLOSE: Final = Action.CLOSE
WAIT: Final = Action.WAIT


class QuietMachine:
    """One TCP connection's last speaker and quiet time, and whether to close it now.

    Watching starts with what the relay kept then (who spoke last, its count of moves),
    and the quiet is counted from then: a quiet period before the age for rotation, at
    the drain otherwise."""

    __slots__ = ("last_at", "moves", "quiet_s", "reason", "spoke", "timer_at", "waiting")

    def __init__(self, quiet_s: float, spoke: Spoke, moves: int, now: float) -> None:
        self.quiet_s = quiet_s
        self.spoke = spoke
        self.moves = moves  # the relay's count at the last look
        self.last_at = now  # the look that found bytes moved (or watching began)
        self.reason: str | None = None  # why a close is wanted: "drain", "max_age"
        self.timer_at: float | None = None  # the armed timer, if any
        self.waiting = False  # to be told at the next move (``WAIT``)

    def _move(self, spoke: Spoke) -> None:
        check_move(_ALLOWED, "tcp quiet", self.spoke, spoke)
        self.spoke = spoke

    @property
    def closable(self) -> bool:
        """Nobody has a message open: the app spoke last, or nobody spoke."""
        return self.spoke is APP or self.spoke is NOBODY

    def _look(self, spoke: Spoke, moves: int, now: float) -> None:
        """Take in what the relay kept: bytes that moved since the last look moved, at
        the latest, now."""
        if moves != self.moves:
            self.moves = moves
            self.last_at = now
        if spoke is not self.spoke:
            self._move(spoke)

    # -- events ---------------------------------------------------------------------------------
    def close_wanted(self, reason: str, spoke: Spoke, moves: int, now: float) -> Action:
        """The drain reached the connection, or rotation found it past its age.  The
        drain's reason wins over rotation's: the close is then the drain's, and counted
        so."""
        if self.spoke is CLOSED:
            return NOTHING
        self._look(spoke, moves, now)
        if self.reason != "drain":
            self.reason = reason
        if not self.closable:
            return self._wait()
        return self._arm(max(now, self.last_at + self.quiet_s))

    def timer(self, spoke: Spoke, moves: int, now: float, flushed: bool) -> Action:
        """The armed timer fired.  ``flushed``: nothing relayed is still waiting to be
        written on either side (a slow reader still being fed is not quiet)."""
        self.timer_at = None
        if self.spoke is CLOSED or self.reason is None:
            return NOTHING
        self._look(spoke, moves, now)
        quiet_until = self.last_at + self.quiet_s
        if not self.closable:
            return self._wait()
        if not flushed:
            return self._arm(now + self.quiet_s)  # a slow reader: look again later
        if now < quiet_until:
            return self._arm(quiet_until)  # bytes moved since the last look
        self._move(CLOSED)
        return CLOSE

    def moved(self, spoke: Spoke, moves: int, now: float) -> Action:
        """Bytes or an EOF moved after a ``WAIT``: now, so the quiet is counted exactly."""
        self.waiting = False
        if self.spoke is CLOSED:
            return NOTHING
        self._look(spoke, moves, now)
        if not self.closable:
            return self._wait()  # more of the request
        return self._arm(self.last_at + self.quiet_s)

    def ended(self) -> None:
        """The connection ended by itself (or was cut): nothing more is decided."""
        if self.spoke is not CLOSED:
            self._move(CLOSED)
        self.timer_at = None
        self.waiting = False

    def _arm(self, at: float) -> Action:
        """Arm the timer unless it is armed."""
        if self.timer_at is not None:
            return NOTHING
        self.timer_at = at
        return ARM

    def _wait(self) -> Action:
        """Ask to be told at the next move, unless asked already or a timer will look."""
        if self.waiting or self.timer_at is not None:
            return NOTHING
        self.waiting = True
        return WAIT
