"""Where responses begin and end in an app connection's bytes.  Sans-IO.

The request parser's design (``request_parser``) for the app's side of an exchange: it
replaces llhttp, whose per-field callbacks built objects for every field of every
response, and whose head the proxy then rebuilt field by field for the client.  Read as
h11 is: ``start`` an exchange, ``feed`` each read, then call ``next_event`` until it
answers ``NEED_DATA``.  The events, in order: ``INTERIM`` for each 1xx head
(``response`` holds it), then ``HEAD_READ`` for the final head (``response``: read and
spliced by ``response_head``), ``BODY_READ`` for each piece of its body (``body``), and
``END`` (``trailers`` holds a chunked body's trailer fields; ``reusable`` says whether
the connection may carry another exchange).  A 101 to a request that asked to switch
is ``SWITCH``: ``tail`` holds what followed its head in the read, and nothing more is
parsed.  A body the app delimits by closing the connection ends at ``app_closed``.

A response is refused with ``BadResponse`` (a malformed or ambiguous head or chunked
body, a 101 nobody asked for, a head or trailer section over ``max_head_bytes``); bytes
from the app when no response is expected (after the end of one, in the same read) are
``STRAY``.  Either way the parser is ``FAILED``, and the connection is never reused: the
app and the proxy no longer agree on where a response begins.

A head counts against ``max_head_bytes`` from its status line to its final CRLF
inclusive, each head on its own (a 1xx, then the final one); one that cannot fit is
refused as soon as that is known, and so is one holding a byte no head may hold (a bare
LF would never end it) or one that does not begin as a response does: not at the
upstream timeout.  A response to HEAD ends with its head, and its connection is not
reused: a body the app sends anyway would be read as the next response.
"""

from __future__ import annotations

import enum
from typing import Final

from proxy.app_connect import Failure
from proxy.http1.bytes_calls import PARTITION
from proxy.http1.chunked import DONE, ChunkedBody
from proxy.http1.http_policy import Framing, Headers, HttpError
from proxy.http1.request_head import NEVER_IN_A_HEAD
from proxy.http1.response_head import (
    AppResponse,
    BadResponse,
    LastResponse,
    protocol_error,
    read_response,
)
from proxy.transitions import bit_masks, check_move

_HEAD_END: Final = b"\r\n\r\n"
_HTTP: Final = b"HTTP/"  # how every response begins

# The events (plain ints, as the request parser's).
NEED_DATA: Final = 0
INTERIM: Final = 1
HEAD_READ: Final = 2
BODY_READ: Final = 3
END: Final = 4
SWITCH: Final = 5
STRAY: Final = 6


class Receiving(enum.IntEnum):
    """What the parser expects from the app."""

    IDLE = 0  # no response: between exchanges (a byte now is stray)
    HEAD = 1  # a response head (a 1xx, then the final one), its bytes held until whole
    BODY = 2  # a body of known length (or none: its END is next)
    CHUNKED = 3  # a chunked body
    UNTIL_CLOSE = 4  # a body that ends when the app closes the connection
    SWITCHED = 5  # a 101: what follows belongs to a tunnel
    FAILED = 6  # refused, or stray bytes: nothing more is read


IDLE: Final = Receiving.IDLE
HEAD: Final = Receiving.HEAD
BODY: Final = Receiving.BODY
CHUNKED: Final = Receiving.CHUNKED
UNTIL_CLOSE: Final = Receiving.UNTIL_CLOSE
SWITCHED: Final = Receiving.SWITCHED
FAILED: Final = Receiving.FAILED

TRANSITIONS: Final[dict[Receiving, frozenset[Receiving]]] = {
    IDLE: frozenset({HEAD, FAILED}),
    HEAD: frozenset({BODY, CHUNKED, UNTIL_CLOSE, SWITCHED, FAILED}),
    BODY: frozenset({IDLE, FAILED}),
    CHUNKED: frozenset({IDLE, FAILED}),
    UNTIL_CLOSE: frozenset({IDLE, FAILED}),
    SWITCHED: frozenset(),
    FAILED: frozenset(),
}
_ALLOWED: Final = bit_masks(TRANSITIONS)
_NO_RESPONSE: Final = AppResponse(0, b"", Framing.NONE, 0, False, b"", b"", [])
_NO_TRAILERS: Final[Headers] = []


class ResponseParser:
    """The response side of one connection to the app."""

    __slots__ = ("_at", "_chunked", "_data", "_head_request", "_held", "_last", "_max_bytes",
                 "_remaining", "_upgrade", "body", "receiving", "response", "reusable", "tail",
                 "trailers")

    def __init__(self, max_head_bytes: int) -> None:
        self.receiving = IDLE
        self.response = _NO_RESPONSE  # with INTERIM, HEAD_READ
        self.body = b""  # with BODY_READ
        self.trailers: Headers = _NO_TRAILERS  # with END
        self.reusable = False  # with END
        self.tail = b""  # with SWITCH
        self._max_bytes = max_head_bytes
        self._data = b""
        self._at = 0
        self._held = bytearray()  # a head that began in an earlier read
        self._remaining = 0  # of a body of known length
        self._head_request = False
        self._upgrade = False  # the request asked to switch protocols
        self._chunked: ChunkedBody | None = None
        self._last = LastResponse()  # the connection's previous head, reused line by line

    def start(self, head_request: bool, upgrade: bool) -> None:
        """An exchange begins: its response is expected (``head_request``: it answers a
        HEAD; ``upgrade``: the request asked to switch protocols, so a 101 may come)."""
        self._move(HEAD)
        self._head_request, self._upgrade = head_request, upgrade
        self.reusable = False

    def feed(self, data: bytes) -> None:
        """The next read; ``next_event`` parses it (and lets go of it by ``NEED_DATA``)."""
        self._data, self._at = data, 0

    def next_event(self) -> int:
        """The next event in what was fed.  Raises BadResponse."""
        try:
            event = self._next()
        except BadResponse:
            self._data = b""
            self._held.clear()
            self._move(FAILED)
            raise
        if event == NEED_DATA:
            # A pooled connection must not keep its last read alive (64 KiB each, at most).
            self._data = self.body = b""
        return event

    def app_closed(self) -> bool:
        """The app closed the connection: True when that ended the response (a body
        delimited by the close), which is then complete."""
        if self.receiving is UNTIL_CLOSE:
            self._end(_NO_TRAILERS)
            return True
        return False

    def _next(self) -> int:
        data, at = self._data, self._at
        size = len(data)
        receiving = self.receiving
        if receiving is BODY:
            remaining = self._remaining
            if not remaining:
                return self._end(_NO_TRAILERS)
            if at >= size:
                return NEED_DATA
            take = min(remaining, size - at)
            self.body = data if take == size else data[at:at + take]  # a whole read: no copy
            self._at, self._remaining = at + take, remaining - take
            return BODY_READ
        if at >= size:
            return END if receiving is CHUNKED and self._body_done() else NEED_DATA
        if receiving is HEAD:
            return self._head(data, at)
        if receiving is CHUNKED:
            return self._chunks(data, at)
        if receiving is UNTIL_CLOSE:
            self.body = data[at:] if at else data
            self._at = size
            return BODY_READ
        if receiving is IDLE:
            self._at, self.reusable = size, False
            self._move(FAILED)
            return STRAY
        return NEED_DATA  # switched or failed: nothing more is read

    def _head(self, data: bytes, at: int) -> int:
        held = self._held
        if at:
            data = data[at:]  # a head after a 1xx head in the same read (rare)
        if held:
            searched_from = max(0, len(held) - 3)
            old = len(held)
            held += data
            end = held.find(_HEAD_END, searched_from)
            if end < 0:
                self._refuse_early(searched_from)
                return NEED_DATA
            rest = data[end + 4 - old:]
            head = bytes(held[:end])
            held.clear()
        else:
            # One call that also gives the rest of the read: a small response's body.
            head, found, rest = PARTITION(data, _HEAD_END)
            if not found:
                held += data
                self._refuse_early(0)
                return NEED_DATA
        if len(head) + 4 > self._max_bytes:
            raise self._too_large("a response head")
        self._data, self._at = rest, 0
        response = self.response = read_response(head, self._head_request, self._last)
        status = response.status
        if status < 200:
            if status != 101:
                return INTERIM  # the final head follows, counted on its own
            if not self._upgrade:
                raise protocol_error("a protocol switch nobody asked for")
            self.tail, self._data = rest, b""
            self._move(SWITCHED)
            return SWITCH
        framing = response.framing
        if framing is Framing.CHUNKED:
            max_bytes = self._max_bytes
            self._chunked = ChunkedBody(max_bytes, max_bytes)
            self._move(CHUNKED)
        elif framing is Framing.CLOSE:
            self._move(UNTIL_CLOSE)
        else:
            self._remaining = response.length if framing is Framing.LENGTH else 0
            self._move(BODY)
        return HEAD_READ

    def _refuse_early(self, checked: int) -> None:
        """Raise BadResponse for a head that cannot become valid, before its end."""
        held = self._held
        if len(held) >= self._max_bytes:  # its end would make it longer still
            raise self._too_large("a response head")
        if NEVER_IN_A_HEAD.search(held, max(0, checked - 1)) is not None:
            raise protocol_error("invalid bytes in the response head")
        if not _HTTP.startswith(bytes(held[:len(_HTTP)])):
            raise protocol_error("not an HTTP response")

    def _chunks(self, data: bytes, at: int) -> int:
        body = self._chunked
        assert body is not None
        pieces: list[bytes] = []
        try:
            self._at = body.feed(data, at, pieces)
        except HttpError as refused:
            if refused.status == 431:
                raise self._too_large("trailers") from None
            raise protocol_error(refused.reason) from None
        if pieces:
            self.body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            return BODY_READ
        return END if self._body_done() else NEED_DATA

    def _body_done(self) -> bool:
        """The chunked body ended (its END is due, once its last data went out)."""
        body = self._chunked
        if body is None or body.part is not DONE:
            return False
        self._chunked = None
        self._end(body.trailers)
        return True

    def _end(self, trailers: Headers) -> int:
        response = self.response
        self.trailers = trailers
        self.reusable = (response.keep_alive and response.framing is not Framing.CLOSE
                         and not self._head_request)
        self._move(IDLE)
        return END

    def _too_large(self, what: str) -> BadResponse:
        return BadResponse(Failure.TOO_LARGE,
                           f"the app sent {what} over {self._max_bytes} bytes")

    def _move(self, target: Receiving) -> None:
        check_move(_ALLOWED, "response parser", self.receiving, target)
        self.receiving = target
