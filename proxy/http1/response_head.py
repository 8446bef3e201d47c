"""A response head read from the app's bytes, and forwarded spliced.  Sans-IO.

The request side's design (``request_head``), for the other direction: the head stays
the bytes the app sent, split into lines once; the status line and each field line are
checked and classified the first time they are seen and remembered (``field_line``'s
memo is shared with the request side: a line means the same either way), and the head
the client gets is the app's with the lines the proxy acts on cut out.  The proxy's own
lines (framing, Connection) are added at its end by ``client_head``.

What is refused (``BadResponse``, a 502 for the client), so that the client reads the
body where the app meant it to end:

* the status line: ``HTTP/1.1`` or ``HTTP/1.0``, SP, three digits from 100, then
  nothing or SP and a reason of HTAB, SP, visible ASCII and obs-text;
* each field line as on the request side (a token name directly before the colon, no
  obs-fold, no control bytes);
* framing: Content-Length is one field of at most 18 digits; Transfer-Encoding is one
  field, exactly ``chunked``, never with Content-Length and never on HTTP/1.0 (RFC 9112
  section 6.1 calls both faulty framing); another transfer coding is refused too, since
  the proxy would have to read it until the app closes and could not tell a truncation.

Hop-by-hop fields, Connection and the fields it names, and the framing fields are cut;
a Content-Length in canonical form (digits, no leading zero) stays where the app put it,
so that the common response is forwarded with no line added or moved.  A 1xx or 101
head is read the same way and handed on as fields (``headers``): they are rare.
"""

from __future__ import annotations

from typing import Final

from proxy.app_connect import Failure
from proxy.http1.bytes_calls import SPLIT
from proxy.http1.http_policy import (
    CONNECTION,
    ENCODING,
    HOP,
    LENGTH,
    NEVER_STRIPPED,
    NO_TOKENS,
    PLAIN_CONNECTION_TOKENS,
    UPGRADE,
    Framing,
    Headers,
    HttpError,
    connection_tokens,
    remember,
)
from proxy.http1.request_head import PASS, FieldLine, LastHead, read_lines, spliced

_CRLF: Final = b"\r\n"
# Deleted from a reason phrase by ``translate``: every byte it may hold.
_REASON_BYTES: Final = bytes(range(0x20, 0x7F)) + b"\t" + bytes(range(0x80, 0x100))
_MEMO_LINE_BYTES: Final = 256
_NO_HEADERS: Final[Headers] = []


class BadResponse(Exception):
    """A response the proxy refuses to relay; ``failure`` says why (its metric label and
    the status the client gets), ``detail`` is for the log."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


def protocol_error(detail: str) -> BadResponse:
    return BadResponse(Failure.PROTOCOL, f"invalid response from the app: {detail}")


class StatusLine:
    """A status line, read: the code, the reason, and the line the client gets."""

    __slots__ = ("forwarded", "http_10", "reason", "rewritten", "status")

    def __init__(self, line: bytes) -> None:
        size = len(line)
        if size < 12 or line[8] != 32 or (size > 12 and line[12] != 32):
            raise protocol_error("invalid status line")
        version = line[:8]
        if version != b"HTTP/1.1" and version != b"HTTP/1.0":
            raise protocol_error("not HTTP/1.0 or HTTP/1.1")
        code = line[9:12]
        reason = line[13:]
        if not code.isdigit() or code[0] == 48 or reason.translate(None, _REASON_BYTES):
            raise protocol_error("invalid status line")
        self.status = int(code)
        self.http_10 = version == b"HTTP/1.0"
        self.reason = reason
        # The proxy speaks HTTP/1.1 to its client whatever the app speaks (RFC 9110
        # section 6.2), and a status line always has the SP before its reason.
        self.rewritten = self.http_10 or size == 12
        self.forwarded = b"HTTP/1.1 " + code + b" " + reason if self.rewritten else line


_status_lines: Final[dict[bytes, StatusLine]] = {}


def status_line(line: bytes) -> StatusLine:
    """The status line read (remembered when short, as field lines are)."""
    known = _status_lines.get(line)
    if known is not None:
        return known
    read = StatusLine(line)
    remember(_status_lines, line, read, _MEMO_LINE_BYTES)
    return read


class AppResponse:
    """One response head from the app, read: what the proxy acts on, and ``head``, the
    head for the client without its framing, Connection and final CRLF."""

    __slots__ = ("framing", "head", "headers", "keep_alive", "length", "length_line",
                 "reason", "status")

    def __init__(self, status: int, reason: bytes, framing: Framing, length: int,
                 keep_alive: bool, head: bytes, length_line: bytes, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.framing = framing  # how the app delimits the body
        self.length = length  # with Framing.LENGTH
        self.keep_alive = keep_alive  # the app's version and Connection allow another
        self.head = head
        # A Content-Length the client must be told that ``head`` does not hold (the app's
        # was not canonical): "\r\nContent-Length: N", else empty.
        self.length_line = length_line
        self.headers = headers  # the fields of a 1xx or 101 head, for the client


class _Fields:
    """What the pass over a head's field lines found, and the lines to cut."""

    __slots__ = ("chunked", "cuts", "length", "length_kept", "lengths", "tokens")

    def __init__(self) -> None:
        self.length, self.lengths, self.chunked, self.length_kept = 0, 0, False, False
        self.tokens = NO_TOKENS
        self.cuts: list[tuple[int, int, bytes]] = []  # (start, end, replacement)


def _read_fields(lines: list[bytes], reads: list[FieldLine], strip: frozenset[bytes],
                 status: int) -> _Fields:
    """One pass over the head's lines (the status line first, skipped) and what each
    means (``read_lines``)."""
    found = _Fields()
    cuts = found.cuts
    line_end = len(lines[0])
    for index in range(1, len(lines)):
        line = lines[index]
        read = reads[index]
        line_start, line_end = line_end, line_end + 2 + len(line)  # from its CRLF before
        kind = read.kind
        if kind == PASS and not strip:
            continue
        if strip and read.name.lower() in strip:
            cuts.append((line_start, line_end, b""))  # named in Connection (rare)
            continue
        if kind == LENGTH:
            if found.lengths or read.length < 0:
                raise protocol_error("invalid Content-Length")
            found.lengths += 1
            found.length = read.length
            # Canonical and as sent: it stays where it is (a 204 has none).
            found.length_kept = (not read.trimmed and status != 204
                                 and (read.value[0] != 48 or len(read.value) == 1))
            if found.length_kept:
                continue
        elif kind == ENCODING:
            # A tab after the value: llhttp refuses it, h11 reads "chunked".
            if (found.chunked or read.value.lower() != b"chunked"
                    or line.rstrip(b" ")[-1] == 9):
                raise protocol_error("unsupported transfer-encoding")
            found.chunked = True
        elif kind == CONNECTION:
            found.tokens = found.tokens | connection_tokens(read.value)
        elif kind != HOP and kind != UPGRADE:  # a request role: a plain field here
            if read.trimmed:
                cuts.append((line_start, line_end, b"\r\n" + read.kept))
            continue
        cuts.append((line_start, line_end, b""))
    if found.lengths and found.chunked:
        raise protocol_error("both Content-Length and Transfer-Encoding")
    return found


class LastResponse(LastHead):
    """An app connection's previous response: its lines and their readings
    (``LastHead``), and its status line's reading."""

    __slots__ = ("first",)

    def __init__(self) -> None:
        super().__init__()
        self.first: StatusLine | None = None


def read_response(head: bytes, head_request: bool,
                  last: LastResponse | None = None) -> AppResponse:
    """Read one complete response head (from its status line up to, not including, the
    CRLF CRLF that ends it); ``head_request``: it answers a HEAD; ``last``: the
    connection's previous response, whose readings are reused where the lines are the
    same.  Raises BadResponse."""
    lines = SPLIT(head, _CRLF)
    if last is None:
        last = LastResponse()
    first = last.first
    if first is None or not last.lines or lines[0] != last.lines[0]:
        first = status_line(lines[0])
    try:
        reads = read_lines(lines, last, len(head))
    except HttpError as refused:
        raise protocol_error(refused.reason) from None
    last.first = first  # the reading of the first of ``last.lines``, when kept
    status = first.status
    found = _read_fields(lines, reads, NO_TOKENS, status)
    extra_tokens = found.tokens and found.tokens - PLAIN_CONNECTION_TOKENS - NEVER_STRIPPED
    if extra_tokens:  # rare: Connection names fields to drop
        found = _read_fields(lines, reads, extra_tokens, status)
    if found.chunked and first.http_10:
        raise protocol_error("Transfer-Encoding in an HTTP/1.0 response")
    tokens = found.tokens
    keep_alive = b"keep-alive" in tokens if first.http_10 else b"close" not in tokens
    if status < 200:
        return AppResponse(status, first.reason, Framing.NONE, 0, keep_alive, b"", b"",
                           _headers(reads))
    if head_request or status == 204 or status == 304:
        framing = Framing.NONE
    elif found.lengths:
        framing = Framing.LENGTH
    elif found.chunked:
        framing = Framing.CHUNKED
    else:
        framing = Framing.CLOSE
    length_line = b""
    if found.lengths and not found.length_kept and status != 204:  # HEAD, 304 keep theirs
        length_line = b"\r\nContent-Length: %d" % found.length
    return AppResponse(status, first.reason, framing, found.length, keep_alive,
                       _splice(head, len(lines[0]), first, found.cuts), length_line,
                       _NO_HEADERS)


def _splice(head: bytes, first_bytes: int, first: StatusLine,
            cuts: list[tuple[int, int, bytes]]) -> bytes:
    """``head`` with its status line (``first_bytes`` long) as forwarded and the cuts made."""
    if not cuts and not first.rewritten:
        return head  # the common case: the app's head as it is
    return b"".join(spliced(head, first_bytes, first.forwarded, cuts))


def _headers(reads: list[FieldLine]) -> Headers:
    """The fields of a 1xx or 101 head (``read_lines``), for the client's head."""
    headers: Headers = []
    for index in range(1, len(reads)):
        read = reads[index]
        headers.append((read.name, read.value))
    return headers


# The end of a head for the client: (close, client_http_10) -> bytes.
_CLOSE: Final = b"\r\nConnection: close\r\n\r\n"
_KEEP_ALIVE_10: Final = b"\r\nConnection: keep-alive\r\n\r\n"
_END: Final = b"\r\n\r\n"
_CHUNKED_LINE: Final = b"\r\nTransfer-Encoding: chunked"


def head_end(response: AppResponse, framing: Framing, close: bool,
             client_http_10: bool) -> bytes:
    """What follows ``response.head`` for the client: the framing it is sent with
    (``framing``, chosen by ``http_response.client_response_framing``), Connection, and
    the empty line."""
    end = _CLOSE if close else _KEEP_ALIVE_10 if client_http_10 else _END
    if framing is Framing.CHUNKED:
        return _CHUNKED_LINE + end
    if response.length_line and framing is not Framing.CLOSE:
        return response.length_line + end
    return end
