"""A chunked request body, decoded.  Sans-IO.

The proxy forwards a chunked body re-framed (each piece as one canonical chunk, no
extensions), so what it must get right is where the body ends, with llhttp's
strictness: a chunk-size line is 1 to 16 hex digits and extensions without whitespace
(``;name`` or ``;name=token`` or ``;name="quoted"``), chunk data is followed by exactly
CRLF, and the trailer section is field lines as in a head, held to the head's limits
(431 beyond them).  Anything else is a 400: the body's end would be ambiguous.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from proxy.http1.http_policy import TOKEN_BYTES, Headers, HttpError
from proxy.http1.request_head import field_line
from proxy.transitions import bit_masks, check_move

_TOKEN: Final = b"[" + re.escape(TOKEN_BYTES) + b"]+"  # the token of field names
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")
MAX_CHUNK_LINE_BYTES: Final = 4096  # a size and its extensions: more is not a chunk line
_CRLF: Final = b"\r\n"


class Part(enum.IntEnum):
    """Which part of the chunked body comes next."""

    SIZE = 0  # a chunk-size line
    DATA = 1  # chunk data
    DATA_END = 2  # the CRLF after chunk data
    TRAILERS = 3  # trailer field lines, up to an empty line
    DONE = 4  # the body ended


SIZE: Final = Part.SIZE
DATA: Final = Part.DATA
DATA_END: Final = Part.DATA_END
TRAILERS: Final = Part.TRAILERS
DONE: Final = Part.DONE

TRANSITIONS: Final[dict[Part, frozenset[Part]]] = {
    SIZE: frozenset({DATA, TRAILERS}),
    DATA: frozenset({DATA_END}),
    DATA_END: frozenset({SIZE}),
    TRAILERS: frozenset({DONE}),
    DONE: frozenset(),
}
_ALLOWED: Final = bit_masks(TRANSITIONS)


class ChunkedBody:
    """One chunked body: ``feed`` the bytes after the head until ``part`` is DONE."""

    __slots__ = ("_held", "_max_count", "_max_trailer_bytes", "_trailer_bytes", "part",
                 "remaining", "trailers")

    def __init__(self, max_trailer_bytes: int, max_trailer_count: int) -> None:
        self.part = SIZE
        self.remaining = 0  # of the current chunk's data
        self.trailers: Headers = []
        self._held = b""  # a line (or the CRLF after data) cut by the end of a read
        self._trailer_bytes = 0
        self._max_trailer_bytes = max_trailer_bytes
        self._max_count = max_trailer_count

    def feed(self, data: bytes, at: int, out: list[bytes]) -> int:
        """Decode ``data`` from ``at``: chunk data goes to ``out``.  Returns where the body
        ended in ``data``, or ``len(data)`` when it goes on.  Raises HttpError."""
        size = len(data)
        while at < size:
            part = self.part
            if part is DATA:
                take = min(self.remaining, size - at)
                out.append(data[at:at + take])
                at += take
                self.remaining -= take
                if not self.remaining:
                    self._move(DATA_END)
                continue
            if part is DONE:
                return at
            if part is DATA_END:
                wanted = 2 - len(self._held)
                self._held += data[at:at + wanted]
                at += min(wanted, size - at)
                if len(self._held) == 2:
                    if self._held != _CRLF:
                        raise HttpError(400, "chunk data not followed by CRLF")
                    self._held = b""
                    self._move(SIZE)
                continue
            held = self._held
            if held.endswith(b"\r") and data[at] == 10:  # a CRLF cut between two reads
                line, at = held[:-1], at + 1
            else:
                line_end = data.find(_CRLF, at)
                if line_end < 0:
                    self._hold(data[at:])
                    return size
                line, at = held + data[at:line_end], line_end + 2
            self._held = b""
            if part is SIZE:
                self._size_line(line)
            else:
                self._trailer_line(line)
        return at if self.part is DONE else size

    def _hold(self, piece: bytes) -> None:
        """Keep the start of a line the read cut short, refusing one that cannot be."""
        held = self._held + piece
        if held.find(b"\n") >= 0:
            raise HttpError(400, "bare LF in a chunked body")
        if self.part is SIZE:
            if len(held) > MAX_CHUNK_LINE_BYTES + 1:  # + 1: the CR that may end it
                raise HttpError(400, "chunk extensions too long")
        elif held != b"\r" and self._trailer_bytes + len(held) > self._max_trailer_bytes:
            # A lone CR may begin the empty line that ends the trailers: it counts nothing.
            raise HttpError(431, "request header fields too large")
        self._held = held

    def _size_line(self, line: bytes) -> None:
        if len(line) > MAX_CHUNK_LINE_BYTES:  # however the reads split it
            raise HttpError(400, "chunk extensions too long")
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise HttpError(400, "invalid chunk size")
        self.remaining = int(match[1], 16)
        self._move(DATA if self.remaining else TRAILERS)

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._move(DONE)
            return
        read = field_line(line)
        self.trailers.append((read.name, read.value))
        self._trailer_bytes += len(line) + 2
        if (len(self.trailers) > self._max_count
                or self._trailer_bytes > self._max_trailer_bytes):
            raise HttpError(431, "request header fields too large")

    def _move(self, target: Part) -> None:
        check_move(_ALLOWED, "chunked body", self.part, target)
        self.part = target
