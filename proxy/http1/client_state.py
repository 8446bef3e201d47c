"""The state of one client connection, and the keep-alive decision.  Sans-IO.

A client connection carries requests one after another.  Most of the time it is
waiting for the next one (``FRESH`` before the first, ``IDLE`` after), or busy with
exactly one (``ACTIVE``).  HTTP/1.1 lets a client send the next request before the
previous answer has arrived (pipelining): the parser reads everything a read brings,
so a complete later request may already be waiting; then reading stops until the
earlier answers are out (``PIPELINE_PAUSED``).  A request that asks to switch
protocols (WebSocket) is special: until the app says yes (101) or no, the bytes
after it are neither HTTP nor tunnel data, so they are held unparsed
(``UPGRADE_PENDING``); on a yes the connection becomes a byte relay
(``TUNNELLED``).  A connection that must end after its last response half-closes
and reads on, discarding, so that the client sees that response instead of a reset
(``CLOSING``).  A connection whose first bytes are the HTTP/2 preface is handed
over to ``proxy.http2.relay`` (``HTTP2``).

Every state change goes through ``TRANSITIONS``; anything else raises
``IllegalTransition``, a bug by definition.  The asyncio adapter (``proxy.http1.client``)
reports events and carries out what the methods here return.

The drain reads the state too (``ClientMachine.drain``): ``IDLE`` connections are
closed at once, busy ones close after their response, tunnels have their own deadline.
A ``FRESH`` connection is served if its first request comes within a short grace (its
client connected while we were still routed to, and a request follows its connect at
once), then closed: a client that connects and sends nothing (a browser's speculative
preconnect, a pool warming connections) must not hold the pod's exit until the drain
timeout.

Whether a response ends the connection (``Connection: close``) is decided once, in
``ClientMachine.close_decision``: the client's wish, the framing, an early answer,
the drain and keep-alive rotation (see ``proxy.drain.rotation``).

Why the connection is not being read is the machine's too (``paused_by``, the reasons
of ``proxy.flow``), and each reason has an owner that takes it away when it goes: the
queue owns ``PIPELINE`` (set while ``PIPELINE_PAUSED``), the exchange being answered
owns ``APP_FULL`` (its app connection's socket is full) and ``CONNECTING``, the held
Upgrade tail owns ``HELD``.  When the exchange ends its reasons end with it, even if
its app connection never says it became writable again: an app that answers an upload
before reading its last bytes would otherwise leave a keep-alive connection that is
never read again.  An ``IDLE`` connection has no reason to be paused.
"""

from __future__ import annotations

import enum
import math
from typing import Final

from proxy.drain.rotation import rotation_reason
from proxy.flow import APP_FULL, CONNECTING, PIPELINE
from proxy.transitions import bit_masks, check_move


class ClientState(enum.IntEnum):
    """Where one client connection is.

    An IntEnum for speed only: the transition check indexes a tuple by the state and
    shifts by the target, where an Enum would run Python-level hashing on every request.
    States are compared by identity, never ordered.
    """

    FRESH = 0  # accepted, no request byte yet
    IDLE = 1  # kept alive between requests
    ACTIVE = 2  # one request being read, forwarded or answered
    PIPELINE_PAUSED = 3  # a complete later request waits; reading paused
    UPGRADE_PENDING = 4  # an Upgrade request is with the app; bytes after it held
    TUNNELLED = 5  # the app switched protocols: a byte relay
    CLOSING = 6  # the last response is written: half-closed, discarding input
    CLOSED = 7
    HTTP2 = 8  # began with the HTTP/2 preface: handed over to http2.relay


# The members as module constants for the per-request code: reading ``ClientState.IDLE``
# runs EnumType's attribute hook, several times the cost of reading a global.
FRESH: Final = ClientState.FRESH
IDLE: Final = ClientState.IDLE
ACTIVE: Final = ClientState.ACTIVE
PIPELINE_PAUSED: Final = ClientState.PIPELINE_PAUSED
UPGRADE_PENDING: Final = ClientState.UPGRADE_PENDING
TUNNELLED: Final = ClientState.TUNNELLED
CLOSING: Final = ClientState.CLOSING
CLOSED: Final = ClientState.CLOSED
HTTP2: Final = ClientState.HTTP2

TRANSITIONS: Final[dict[ClientState, frozenset[ClientState]]] = {
    FRESH: frozenset({ACTIVE, CLOSING, CLOSED, HTTP2}),
    IDLE: frozenset({ACTIVE, CLOSING, CLOSED}),
    ACTIVE: frozenset({IDLE, PIPELINE_PAUSED, UPGRADE_PENDING, CLOSING, CLOSED}),
    PIPELINE_PAUSED: frozenset({ACTIVE, CLOSING, CLOSED}),
    UPGRADE_PENDING: frozenset({TUNNELLED, IDLE, CLOSING, CLOSED}),
    TUNNELLED: frozenset({CLOSED}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
    HTTP2: frozenset(),  # final: http2.relay owns the connection from then on
}
# The same table as one bit mask of allowed targets per state, indexed by the state.
_ALLOWED: Final = bit_masks(TRANSITIONS)
_BUSY: Final = (1 << ACTIVE) | (1 << PIPELINE_PAUSED) | (1 << UPGRADE_PENDING)
# The read-pause reasons the exchange being answered owns: they go when it ends.
EXCHANGE_REASONS: Final = APP_FULL | CONNECTING



class AfterResponse(enum.IntEnum):
    """What the connection does once a response is fully written."""

    CLOSE = 0  # the response said Connection: close
    DISPATCH_NEXT = 1  # forward the next pipelined request
    PARSE_HELD = 2  # the app refused an Upgrade: idle, and the held bytes are HTTP
    KEEP_READING = 3  # the next request is already arriving
    AWAIT_REQUEST = 4  # idle keep-alive


THEN_CLOSE: Final = AfterResponse.CLOSE
THEN_DISPATCH_NEXT: Final = AfterResponse.DISPATCH_NEXT
THEN_PARSE_HELD: Final = AfterResponse.PARSE_HELD
THEN_KEEP_READING: Final = AfterResponse.KEEP_READING
THEN_AWAIT_REQUEST: Final = AfterResponse.AWAIT_REQUEST


class OnDrain(enum.IntEnum):
    """What a connection does when the drain reaches it (the listener stops accepting)."""

    CLOSE_NOW = 0  # idle: nothing is asked on it
    GRACE = 1  # fresh: served if its first request comes within the grace, closed after it
    AFTER_RESPONSE = 2  # busy, closing or tunnelled: what it is doing ends it


DRAIN_CLOSE_NOW: Final = OnDrain.CLOSE_NOW
DRAIN_GRACE: Final = OnDrain.GRACE
DRAIN_AFTER_RESPONSE: Final = OnDrain.AFTER_RESPONSE


class ClientMachine:
    """One client connection's state, its keep-alive budget and its close decision."""

    __slots__ = ("budget", "close_reason", "drain_reached", "expires_at", "input_closed",
                 "paused_by", "served", "state")

    def __init__(self, budget: int, expires_at: float) -> None:
        self.state = FRESH
        self.served = 0  # responses completed
        self.budget = budget  # rotation: responses this connection may carry (0: no limit)
        self.expires_at = expires_at  # rotation: the first response after this closes
        self.close_reason: str | None = None  # decided: the connection ends after this response
        # The client half-closed, or we stopped reading for good (an error answered, the
        # connection closing): nothing more that arrives is parsed.
        self.input_closed = False
        self.paused_by = 0  # why the client is not being read: proxy.flow's reasons
        # The window is over and the drain reached it: it closes after the response in
        # progress, and a quiet close (the fresh connection's grace) is the drain's.
        self.drain_reached = False

    def _move(self, state: ClientState) -> None:
        check_move(_ALLOWED, "client connection", self.state, state)
        self.state = state
        if state is CLOSING or state is CLOSED:
            self.input_closed = True
            self.paused_by = 0  # read and discard: the client must see our last response
        elif state is IDLE:
            self.paused_by = 0
        elif state is ACTIVE:
            self.paused_by &= ~PIPELINE

    # -- read pauses ----------------------------------------------------------------------------
    def pause(self, reason: int, paused: bool) -> None:
        """Stop (or go back to) reading for ``reason``; no effect once input is closed.
        ``PIPELINE`` is not set here: it is the ``PIPELINE_PAUSED`` state's."""
        if paused and not self.input_closed:
            self.paused_by |= reason
        else:
            self.paused_by &= ~reason

    @property
    def busy(self) -> bool:
        """A request is being read, forwarded or answered."""
        return bool((_BUSY >> self.state) & 1)

    @property
    def ending(self) -> bool:
        """Closing or closed: nothing more is answered."""
        return self.state is CLOSING or self.state is CLOSED

    # -- events -------------------------------------------------------------------------------
    def request_begins(self) -> None:
        """The first byte of a request head (a pipelined one leaves the state as it is)."""
        if self.state is FRESH or self.state is IDLE:
            self._move(ACTIVE)

    def request_queued(self) -> None:
        """A complete request waits behind one still being answered: stop reading."""
        if self.state is not PIPELINE_PAUSED:
            self._move(PIPELINE_PAUSED)
        self.paused_by |= PIPELINE

    def upgrade_forwarded(self) -> None:
        """The request being answered asks to switch protocols and went to the app."""
        self._move(UPGRADE_PENDING)

    def http2(self) -> None:
        """The connection began with the HTTP/2 preface: ``http2.relay`` takes it over."""
        self._move(HTTP2)

    def switched(self) -> None:
        """The app answered 101: the connection is a tunnel from now on."""
        self._move(TUNNELLED)

    def response_done(self, *, queued: int, reading: bool) -> AfterResponse:
        """The response being written is complete; ``queued`` complete requests wait,
        ``reading`` says a later request is partly read.  Returns what to do next.

        A response whose head went out before the drain began did not say
        ``Connection: close``; in the propagation window its connection stays open (its
        client may reuse it at once, and its next response will say close).  Only once
        the window is over (``drain``) does it close after the response."""
        self.served += 1
        self.paused_by &= ~EXCHANGE_REASONS  # its app connection is no longer ours
        if self.close_reason is None and not queued and not reading:
            if self.input_closed:
                self.close_reason = "peer"
            elif self.drain_reached:  # the window is over: this was its last response
                self.close_reason = "drain"
        if self.close_reason is not None:
            self._move(CLOSING)
            return THEN_CLOSE
        if queued:
            if queued == 1:  # the last one waiting: reading may resume
                self._move(ACTIVE)
            return THEN_DISPATCH_NEXT
        if self.state is UPGRADE_PENDING:  # refused: whatever followed it is HTTP
            self._move(IDLE)  # the held bytes are parsed now: HELD goes with the move
            return THEN_PARSE_HELD
        if reading:
            return THEN_KEEP_READING
        self._move(IDLE)
        return THEN_AWAIT_REQUEST

    def close(self, reason: str) -> bool:
        """End the connection now (an error answered, idle, the drain): False when it is
        already closing or closed."""
        if self.state is CLOSING or self.state is CLOSED:
            return False
        self.close_reason = self.close_reason or reason
        self._move(CLOSING)
        return True

    def drain(self) -> OnDrain:
        """The propagation window is over and the listener closed: an idle connection closes
        now, a busy one after its response (``response_done``), a fresh one (its client
        connected while we were still routed to) is served if its first request comes
        within the grace."""
        self.drain_reached = True
        if self.state is IDLE:
            self.close("drain")
            return DRAIN_CLOSE_NOW
        if self.state is FRESH:
            return DRAIN_GRACE
        return DRAIN_AFTER_RESPONSE

    def reclaim(self) -> bool:
        """At --max-connections with clients waiting, the least recently used idle
        connection makes room: True when it was idle and now closes."""
        return self.state is IDLE and self.close("max_connections")

    @property
    def quiet_close_reason(self) -> str:
        """Why a connection closes when it has waited too long for a request: the drain's
        grace, or the idle timeout."""
        return "drain" if self.drain_reached else "idle_timeout"

    def lost(self) -> str:
        """The transport is gone; returns the connections_closed reason."""
        if self.state is not CLOSED:
            self._move(CLOSED)
        return self.close_reason or "peer"

    # -- the keep-alive decision ----------------------------------------------------------------
    @property
    def ages(self) -> bool:
        """It has a maximum age: only then does ``close_decision`` need the time (the
        adapter reads the clock for it, a call into the loop, only then)."""
        return self.expires_at != math.inf

    def close_decision(self, *, client_keep_alive: bool, close_delimited: bool,
                       request_complete: bool, pipelined: bool, draining: bool,
                       now: float) -> str | None:
        """Whether the response whose head is going out must carry ``Connection: close``:
        its reason (a connections_closed label), or None to keep the connection.

        Decided once per response, at its head, and remembered: the connection closes
        after that response.  ``now`` matters only when the connection ``ages``.
        """
        reason = self._close_reason(client_keep_alive, close_delimited, request_complete,
                                    pipelined, draining, now)
        if reason is not None:
            self.close_reason = reason
        return reason

    def _close_reason(self, client_keep_alive: bool, close_delimited: bool,
                      request_complete: bool, pipelined: bool, draining: bool,
                      now: float) -> str | None:
        if not client_keep_alive or close_delimited:
            return "peer"
        if not request_complete:
            return "error"  # the app answered early; the rest of the body cannot be resynced
        if pipelined:
            return None  # answer the pipelined requests first; the last response closes
        if self.input_closed:
            return "peer"
        if draining:
            return "drain"
        return rotation_reason(self.served + 1, self.budget, self.expires_at, now)
