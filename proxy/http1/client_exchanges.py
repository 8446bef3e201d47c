"""Which request is where on one client connection, whose a refusal is, and what the read
timer means.  Sans-IO.

HTTP/1.1 answers requests strictly in order, and the parser reads everything a read brings,
so one connection holds up to four kinds of exchange at once:

* ``parsing``: the request being read (its head, then its body; ``reading_head`` while
  the head is incomplete);
* ``ready``: a request whose head completed in the read being parsed, to forward once
  the whole read has parsed (a request malformed later in that read is then refused
  with nothing sent to the app);
* ``active``: the request being answered;
* ``queue``: complete requests pipelined behind it;

and, after a forwarded Upgrade request, the bytes that follow it (``held``), neither
HTTP nor tunnel data until the app decides.  The same exchange may be ``parsing`` and
``active`` (a request being answered while its body still arrives).

Every event that moves an exchange goes through ``ExchangeQueue``, which also moves the
connection's ``ClientMachine``; the asyncio adapter (``proxy.http1.client``) feeds the parser's
events, counts requests in flight, and carries out what it is told.  Three decisions
live here because they depend on which exchange is where:

* **error attribution** (``refuse``): a request that cannot be read is the one being
  parsed, or a new one when the parser had not begun one; it is answered in its turn, after
  the requests before it, and if part of it already went to the app that app
  connection must be reset (``ANSWER_NOW`` with an app connection attached);
* **what the read timer means** (``read_wait``): the whole head (``--header-timeout``),
  a pause in a body (``--body-timeout``), the next request (``--idle-timeout``, or the
  drain's grace on a fresh connection), the linger of a close; nothing while reading is
  paused or while only the app is awaited;
* **what the client's EOF means** (``client_half_closed``).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final

from proxy.http1.client_state import (
    CLOSING,
    FRESH,
    IDLE,
    THEN_DISPATCH_NEXT,
    AfterResponse,
    ClientMachine,
)
from proxy.http1.exchange import Exchange
from proxy.limits import RequestLimits

MAX_HELD_BYTES: Final = 64 * 1024  # bytes past an Upgrade request, while the app decides
LINGER_S: Final = 2.0  # after the last response: read and discard so the client gets it


class ReadWait(enum.IntEnum):
    """What the client connection's read timer waits for."""

    NOTHING = 0  # reading paused, or only the app is awaited: the app's timers run
    REQUEST = 1  # the next request (fresh or idle): --idle-timeout
    HEAD = 2  # the rest of a request head: --header-timeout for the whole head
    BODY = 3  # more of a request body: --body-timeout between reads
    LINGER = 4  # after our last response, reading and discarding: then close
    GRACE = 5  # a fresh connection's first request, once the drain reached it: a short grace


# As plain ints for the per-request code: compiled, they are compared with no object in
# between.
WAIT_NOTHING: Final = 0
WAIT_REQUEST: Final = 1
WAIT_HEAD: Final = 2
WAIT_BODY: Final = 3
WAIT_LINGER: Final = 4
WAIT_GRACE: Final = 5


class Refusal(enum.IntEnum):
    """What becomes of a request that could not be read."""

    ANSWER_NOW = 0  # it is the one being answered (or the only one): answer the error now
    QUEUED = 1  # requests before it are still being answered: its error waits its turn


REFUSE_NOW: Final = Refusal.ANSWER_NOW
REFUSE_QUEUED: Final = Refusal.QUEUED


class AfterEof(enum.IntEnum):
    """What the client's EOF (half-close) means."""

    CLOSE = 0  # nothing is owed: close the connection
    ANSWER_OUTSTANDING = 1  # requests are owed answers: answer them, then close
    REFUSE_BODY = 2  # a request's body can never end: refuse it (400)


EOF_CLOSE: Final = AfterEof.CLOSE
EOF_ANSWER_OUTSTANDING: Final = AfterEof.ANSWER_OUTSTANDING
EOF_REFUSE_BODY: Final = AfterEof.REFUSE_BODY


class ExchangeQueue:
    """The exchanges of one client connection, in order."""

    __slots__ = ("active", "held", "machine", "parsing", "queue", "reading_head", "ready")

    def __init__(self, machine: ClientMachine) -> None:
        self.machine = machine
        self.parsing: Exchange | None = None
        self.reading_head = False  # the request being parsed is still in its head
        self.ready: Exchange | None = None
        self.active: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.held: bytearray | None = None

    # -- the request side (the parser's events) -----------------------------------------------
    def begin(self) -> Exchange:
        """The first byte of a request: it is in flight from now on."""
        exchange = self.parsing = Exchange()
        self.reading_head = True
        self.machine.request_begins()
        return exchange

    def head_complete(self) -> Exchange:
        """The head of the request being parsed (still ``parsing``) is complete: it is
        answered next, or waits behind the one being answered (and reading stops:
        ``PIPELINE``).  Returns its exchange."""
        exchange = self.parsing
        assert exchange is not None and self.reading_head
        self.reading_head = False
        if self.active is None:
            self.active = self.ready = exchange
        else:
            self.queue.append(exchange)
            self.machine.request_queued()
        return exchange

    def message_complete(self) -> Exchange:
        """The request being parsed is whole (its last chunk built, its trailer checked)."""
        exchange = self.parsing
        assert exchange is not None
        self.parsing = None
        exchange.request_complete = True
        return exchange

    def take_ready(self) -> Exchange | None:
        """The request to forward now that the whole read has parsed, if any."""
        exchange, self.ready = self.ready, None
        return exchange

    def refuse(self) -> tuple[Exchange, Refusal, bool]:
        """A request could not be read: nothing more is parsed.  Returns its exchange (a
        new one, ``True``, when the parser had not begun a request) and when it is answered."""
        self.machine.input_closed = True
        exchange = self.parsing
        created = exchange is None
        if exchange is None:
            exchange = Exchange()
            self.machine.request_begins()
        self.parsing, self.reading_head = None, False
        if self.ready is exchange:
            self.ready = None  # it was not forwarded: nothing of it reached the app
        if self.active is None or exchange is self.active:
            self.active = exchange
            return exchange, REFUSE_NOW, created
        if exchange not in self.queue:
            self.queue.append(exchange)
            self.machine.request_queued()
        return exchange, REFUSE_QUEUED, created

    def client_half_closed(self) -> tuple[AfterEof, Exchange | None]:
        """The client's EOF; with ``ANSWER_OUTSTANDING`` or ``CLOSE``, a request whose head
        was cut short is dropped (nothing to answer): it is returned to be finished."""
        if self.machine.ending:
            return EOF_CLOSE, None  # our last response is out and we half-closed
        self.machine.input_closed = True
        partial = self.parsing
        if partial is not None and partial.request is not None:
            return EOF_REFUSE_BODY, None
        self.parsing, self.reading_head = None, False
        owed = self.active is not None or bool(self.queue)
        return (EOF_ANSWER_OUTSTANDING if owed else EOF_CLOSE), partial

    # -- the bytes after a forwarded Upgrade ------------------------------------------------------
    def upgrade_is_last(self) -> bool:
        """The last request read asks to switch protocols and goes to the app: what follows
        it is held until the app decides."""
        last = self.queue[-1] if self.queue else self.active
        return last is not None and last.request is not None and last.request.upgrade

    def hold(self, data: bytes) -> bool:
        """Hold bytes past the Upgrade request; True while more are held than allowed
        (reading pauses: ``HELD``)."""
        if self.held is None:
            self.held = bytearray(data)
        else:
            self.held += data
        return len(self.held) > MAX_HELD_BYTES

    def take_held(self) -> bytes:
        held, self.held = bytes(self.held or b""), None
        return held

    # -- the response side ------------------------------------------------------------------------
    def response_done(self) -> AfterResponse:
        """The active exchange's response is complete: what follows.  With ``CLOSE``, the
        requests still held are dropped (pipelined past the last response, or cut short
        by an early answer: the client must send them again): ``take_dropped``."""
        self.active = None
        after = self.machine.response_done(queued=len(self.queue),
                                           reading=self.parsing is not None)
        if after is THEN_DISPATCH_NEXT:
            self.active = self.queue.popleft()
        return after

    def take_dropped(self) -> list[Exchange]:
        """The connection closes after its last response: nothing more is parsed or
        answered; returns the requests left unanswered."""
        dropped = self.unfinished()
        self.queue.clear()
        self.parsing, self.reading_head = None, False
        return dropped

    def switched(self) -> Exchange:
        """101: the active exchange is over and the connection is a tunnel now."""
        exchange = self.active
        assert exchange is not None
        self.machine.switched()
        self.active = None
        return exchange

    def unfinished(self) -> list[Exchange]:
        """Every exchange not answered yet: the active one, the queue, the one being read."""
        candidates = [self.active, *self.queue, self.parsing]
        return [e for e in candidates if e is not None and not e.finished]

    # -- the read timer ---------------------------------------------------------------------------
    def read_wait(self) -> int:
        """What the read timer waits for now, a ``ReadWait`` value (how long:
        ``read_timeout_s``)."""
        machine = self.machine
        state = machine.state
        if state is CLOSING:
            return WAIT_LINGER
        if machine.paused_by or machine.input_closed:
            return WAIT_NOTHING  # a client we do not read cannot be slow
        if self.parsing is not None:
            return WAIT_HEAD if self.reading_head else WAIT_BODY
        if state is FRESH or state is IDLE:  # idle ones close when the drain reaches them
            return WAIT_GRACE if machine.drain_reached else WAIT_REQUEST
        return WAIT_NOTHING


def read_timeout_s(wait: int, limits: RequestLimits, grace_s: float) -> float:
    """How long the read timer waits for ``wait`` (a ``ReadWait`` other than NOTHING)."""
    if wait == WAIT_HEAD:
        return limits.header_timeout_s
    if wait == WAIT_REQUEST:
        return limits.idle_timeout_s
    if wait == WAIT_BODY:
        return limits.body_timeout_s
    return grace_s if wait == WAIT_GRACE else LINGER_S
