"""Where requests begin and end in a client connection's bytes.  Sans-IO.

The parser finds each request's head (``request_head`` reads and checks it), then its
body: a known length, or chunked (``chunked``).  It replaces llhttp on the request side
and is read as h11 is: ``feed`` a read, then call ``next_event`` until it answers
``NEED_DATA``.  The events, in order for each request: ``BEGIN`` (its first byte: it is
in flight), ``HEAD`` (``request`` holds it, checked and ready to forward), ``BODY``
(``body`` holds a piece, as many times as pieces come), ``END`` (``trailers`` holds a
chunked body's trailer fields).  After the ``END`` of an Upgrade request nothing more is
parsed: ``upgrade_at`` is where its head ended in the read, and what follows is not
HTTP until the app decides (the next ``feed`` parses again).  A refused request raises
``HttpError``; nothing more is parsed after it.  Requests pipelined behind one that ends
the connection (``Connection: close``) are parsed, and dropped by the connection.

Empty lines before a request line are skipped, as llhttp and RFC 9112 section 2.2 do.
"""

from __future__ import annotations

import enum
from typing import Final

from proxy.http1.bytes_calls import PARTITION
from proxy.http1.chunked import DONE, ChunkedBody
from proxy.http1.http_policy import ForwardRequest, Framing, Headers, HttpError, Peer
from proxy.http1.request_head import LastRequest, check_request, refuse_early
from proxy.limits import RequestLimits
from proxy.transitions import bit_masks, check_move

_HEAD_END: Final = b"\r\n\r\n"
# How much of a read is searched for a head's end: a small read in place (``partition``
# copies the rest of it, small too); of a large one (a body arriving with its head) a
# copy of this much, so the body is not copied with it.
HEAD_PROBE_BYTES: Final = 4096
NO_UPGRADE: Final = -1

# The events (plain ints: compiled, they are compared with no object in between).
NEED_DATA: Final = 0
BEGIN: Final = 1
HEAD_READ: Final = 2
BODY_READ: Final = 3
END: Final = 4


class Reading(enum.IntEnum):
    """What the parser is reading on its connection."""

    IDLE = 0  # between requests: nothing of the next one yet
    HEAD = 1  # a head that began (its bytes held while it is incomplete)
    BODY = 2  # a body of known length (or none: its END is next)
    CHUNKED = 3  # a chunked body
    FAILED = 4  # a request was refused: nothing more is read


IDLE: Final = Reading.IDLE
HEAD: Final = Reading.HEAD
BODY: Final = Reading.BODY
CHUNKED: Final = Reading.CHUNKED
FAILED: Final = Reading.FAILED

TRANSITIONS: Final[dict[Reading, frozenset[Reading]]] = {
    IDLE: frozenset({HEAD, FAILED}),
    HEAD: frozenset({BODY, CHUNKED, FAILED}),
    BODY: frozenset({IDLE, FAILED}),
    CHUNKED: frozenset({IDLE, FAILED}),
    FAILED: frozenset(),
}
_ALLOWED: Final = bit_masks(TRANSITIONS)
_NO_REQUEST: Final = ForwardRequest(b"", b"", Framing.NONE, False, False, False, False)


class RequestParser:
    """The request side of one HTTP/1.1 connection."""

    __slots__ = ("_at", "_chunked", "_data", "_held", "_last", "_remaining", "_upgrade", "body",
                 "default_host", "limits", "peer", "reading", "request", "trailers",
                 "upgrade_at")

    def __init__(self, limits: RequestLimits, peer: Peer, default_host: bytes) -> None:
        self.limits = limits
        self.peer = peer
        self.default_host = default_host
        self.reading = IDLE
        self.request = _NO_REQUEST  # with HEAD_READ
        self.body = b""  # with BODY_READ
        self.trailers: Headers = []  # with END
        self.upgrade_at = NO_UPGRADE
        self._data = b""
        self._at = 0
        self._held = bytearray()  # a head that began in an earlier read
        self._remaining = 0  # of a body of known length
        self._upgrade = False  # the request being read asks to switch protocols
        self._chunked: ChunkedBody | None = None
        self._last = LastRequest()  # the connection's previous head, reused line by line

    def feed(self, data: bytes) -> None:
        """The next read; ``next_event`` parses it (and lets go of it by ``NEED_DATA``)."""
        self._data, self._at, self.upgrade_at = data, 0, NO_UPGRADE

    def next_event(self) -> int:
        """The next event in what was fed.  Raises HttpError for a refused request."""
        try:
            event = self._next()
        except HttpError:
            self._data = b""
            self._move(FAILED)
            raise
        if event == NEED_DATA:
            # An idle keep-alive connection must not keep its last read or body piece
            # alive (64 KiB each, at most).
            self._data = self.body = b""
        return event

    def _next(self) -> int:
        data, at = self._data, self._at
        size = len(data)
        reading = self.reading
        if reading is BODY:
            remaining = self._remaining
            if not remaining:
                return self._end([])
            if at >= size:
                return NEED_DATA
            take = min(remaining, size - at)
            self.body = bytes(data[at:at + take])
            self._at, self._remaining = at + take, remaining - take
            return BODY_READ
        if reading is IDLE:
            if self.upgrade_at != NO_UPGRADE:
                return NEED_DATA  # what follows an Upgrade request waits for the app
            while at < size and (data[at] == 13 or data[at] == 10):
                at += 1  # empty lines before a request line
            self._at = at
            if at >= size:
                return NEED_DATA
            self._move(HEAD)
            return BEGIN
        if reading is HEAD:
            return self._head(data, at, size)
        if reading is CHUNKED:
            return self._chunks(data, at, size)
        return NEED_DATA  # refused: nothing more is read

    def _head(self, data: bytes, at: int, size: int) -> int:
        held = self._held
        if held:
            searched_from = max(0, len(held) - 3)
            held += data[at:]
            end = held.find(_HEAD_END, searched_from)
            if end < 0:
                refuse_early(held, searched_from, self.limits)
                return NEED_DATA
            taken = end + 4 - (len(held) - (size - at))  # of this read
            head = bytes(held[:end])
            held.clear()
        else:
            probe = data if not at and size <= HEAD_PROBE_BYTES else data[
                at:at + HEAD_PROBE_BYTES]
            head, found, _ = PARTITION(probe, _HEAD_END)
            if not found and len(probe) == HEAD_PROBE_BYTES:
                probe = data[at:]  # a large head: look further
                head, found, _ = PARTITION(probe, _HEAD_END)
            if not found:
                held += probe
                refuse_early(held, 0, self.limits)
                return NEED_DATA
            taken = len(head) + 4
        self.request, self._upgrade = check_request(head, self.peer, self.default_host,
                                                    self.limits, self._last)
        self._at = at + taken
        if self.request.framing is Framing.CHUNKED:
            limits = self.limits
            self._chunked = ChunkedBody(limits.max_header_bytes, limits.max_header_count)
            self._move(CHUNKED)
        else:
            self._remaining = self.request.length
            self._move(BODY)
        return HEAD_READ

    def _chunks(self, data: bytes, at: int, size: int) -> int:
        body = self._chunked
        assert body is not None
        if body.part is DONE:
            self._chunked = None
            return self._end(body.trailers)
        if at >= size:
            return NEED_DATA
        pieces: list[bytes] = []
        self._at = body.feed(data, at, pieces)
        if not pieces:
            return self._chunks(data, self._at, size)
        self.body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return BODY_READ

    def _end(self, trailers: Headers) -> int:
        self._move(IDLE)
        self.trailers = trailers
        if self._upgrade:
            self.upgrade_at = self._at
        return END

    def _move(self, target: Reading) -> None:
        check_move(_ALLOWED, "request parser", self.reading, target)
        self.reading = target
