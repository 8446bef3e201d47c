"""The state of one connection to the app, and when a failed request may be retried.
Sans-IO.

A connection to the app carries one exchange at a time, and an exchange has two
directions that end independently: the request we send and the response the app
sends.  An app may answer before it has read the whole request (401 or 413 on an
upload, a refused ``Expect: 100-continue``); the connection then still owes the app
the rest of that body, and if it went back to the pool the app would read the next
client's request as that body.  So the connection is reusable only when **both**
directions are complete, the app agreed to keep it, and nothing unexpected arrived:

    IDLE --bind--> SENDING --request out--> AWAITING --head--> RECEIVING --end--> IDLE
                      |                                           ^
                      +--head (early answer)--> EARLY --request out-+
                                                  |
                                                  +--end--> CLOSED (never pooled)

``SWITCHED`` is a 101: the connection leaves HTTP and becomes one end of a tunnel
(final, like ``CLOSED``: the tunnel owns the socket from then on).
Every state change goes through ``TRANSITIONS``; anything else raises
``IllegalTransition``.

Retrying: a request may be sent again on a fresh connection only when nothing of it
can have been acted on by the app, and the client cannot tell.  That is the stale
keep-alive race (RFC 9112 section 9.3.1): a pooled connection the app closed (EOF or
RST) before any byte of a response, for an idempotent request whose whole body we
still hold.  A timeout is never retried: the app may be working on the request, and
the client would wait twice ``--upstream-timeout``.
"""

from __future__ import annotations

import enum
from typing import Final

from proxy.app_connect import Failure
from proxy.transitions import bit_masks, check_move


class UpstreamState(enum.IntEnum):
    """Where one connection to the app is (an IntEnum for speed, as ``ClientState``)."""

    IDLE = 0  # connected, no exchange (new, or in the pool)
    SENDING = 1  # the request is going out; no response head yet
    AWAITING = 2  # the whole request is out; waiting for the response head
    EARLY = 3  # the response began before the whole request went out
    RECEIVING = 4  # the whole request is out; the response is arriving
    SWITCHED = 5  # 101: handed over to a tunnel
    CLOSED = 6


# Module constants for the per-request code (see client_state).
IDLE: Final = UpstreamState.IDLE
SENDING: Final = UpstreamState.SENDING
AWAITING: Final = UpstreamState.AWAITING
EARLY: Final = UpstreamState.EARLY
RECEIVING: Final = UpstreamState.RECEIVING
SWITCHED: Final = UpstreamState.SWITCHED
CLOSED: Final = UpstreamState.CLOSED

TRANSITIONS: Final[dict[UpstreamState, frozenset[UpstreamState]]] = {
    IDLE: frozenset({SENDING, CLOSED}),
    SENDING: frozenset({AWAITING, EARLY, CLOSED}),
    AWAITING: frozenset({RECEIVING, SWITCHED, CLOSED}),
    EARLY: frozenset({RECEIVING, CLOSED}),
    RECEIVING: frozenset({IDLE, CLOSED}),
    SWITCHED: frozenset(),  # final: the tunnel owns the socket now
    CLOSED: frozenset(),
}
_ALLOWED: Final = bit_masks(TRANSITIONS)



RETRYABLE: Final = frozenset({Failure.CLOSED, Failure.RESET})


def may_retry(failure: Failure, *, reused: bool, response_bytes: bool,
              replayable: bool) -> bool:
    """The stale keep-alive race and nothing else: EOF or RST on a pooled connection
    before any response byte, for a request we can send again unchanged."""
    return failure in RETRYABLE and reused and not response_bytes and replayable


class UpstreamMachine:
    """One app connection's state: which directions of the exchange are complete."""

    __slots__ = ("reused", "state")

    def __init__(self) -> None:
        self.state = IDLE
        self.reused = False  # it carried an exchange before (the stale-race candidate)

    def _move(self, state: UpstreamState) -> None:
        check_move(_ALLOWED, "app connection", self.state, state)
        self.state = state

    @property
    def awaiting_head(self) -> bool:
        """No final response head yet: what the app sends is a head (or a 1xx)."""
        return self.state is SENDING or self.state is AWAITING

    @property
    def responding(self) -> bool:
        """A response head arrived and its body is arriving."""
        return self.state is RECEIVING or self.state is EARLY

    def bind(self) -> None:
        """An exchange starts on this connection."""
        self._move(SENDING)

    def request_sent(self) -> bool:
        """The whole request went out; True when the response is still awaited."""
        if self.state is SENDING:
            self._move(AWAITING)
            return True
        if self.state is EARLY:
            self._move(RECEIVING)
        return False

    def response_begins(self) -> None:
        """A final (non-1xx) response head arrived."""
        self._move(RECEIVING if self.state is AWAITING else EARLY)

    def response_done(self, keep_alive: bool) -> bool:
        """The response is complete; True when the connection may go back to the pool:
        the request went out whole and the app agreed to keep the connection."""
        if self.state is RECEIVING and keep_alive:
            self._move(IDLE)
            self.reused = True
            return True
        self._move(CLOSED)
        return False

    def switched(self) -> None:
        self._move(SWITCHED)

    def closed(self) -> None:
        if self.state is not CLOSED and self.state is not SWITCHED:
            self._move(CLOSED)
