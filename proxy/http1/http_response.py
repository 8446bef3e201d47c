"""The response side of the policy, and the heads the proxy writes.  Sans-IO.

How the app delimits its response, how it is framed towards the client (a chunked or
close-delimited body from the app is chunked for HTTP/1.1 clients and close-delimited for
HTTP/1.0 ones), and the heads written: the client's response head with hop-by-hop fields
removed and framing re-declared, 1xx and 101 heads, the proxy's own error responses, and
chunked framing with the trailer fields that may be forwarded (both directions); and
``ResponseHeads``, which bounds the app's heads and trailers and hands them to llhttp whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from proxy.http1.http_policy import (
    FRAMING_ALIASES,
    HOP_BY_HOP,
    NAME_MEMO_BYTES,
    NEVER_STRIPPED,
    NO_TOKENS,
    PLAIN_CONNECTION_TOKENS,
    Framing,
    Headers,
    HttpError,
    connection_tokens,
    remember,
)

# What a response header name means here, remembered per name as the app sends it: an
# app sends the same few names in every response, and one lookup replaces the lower()
# and set lookups of each name in both passes below (bounded as the request side's).
_PASS: Final = 0
_CONTENT_LENGTH: Final = 1
_TRANSFER_ENCODING: Final = 2
_CONNECTION: Final = 3
_OTHER_HOP: Final = 4  # hop-by-hop: never forwarded as the app sent it
_name_kinds: Final[dict[bytes, int]] = {}


def _name_kind(name: bytes) -> int:
    kind = _name_kinds.get(name)
    if kind is not None:
        return kind
    lowered = name.lower()
    if lowered == b"content-length":
        kind = _CONTENT_LENGTH
    elif lowered == b"transfer-encoding":
        kind = _TRANSFER_ENCODING
    elif lowered == b"connection":
        kind = _CONNECTION
    elif lowered in HOP_BY_HOP:
        kind = _OTHER_HOP
    else:
        kind = _PASS
    remember(_name_kinds, name, kind, NAME_MEMO_BYTES)
    return kind


def app_response_framing(status: int, headers: Headers, head_request: bool) -> Framing:
    """How the app delimits this response body (CLOSE: it ends at the app's EOF)."""
    if head_request or status < 200 or status in (204, 304):
        return Framing.NONE
    framing = Framing.CLOSE
    for name, value in headers:
        kind = _name_kind(name)
        if kind == _CONTENT_LENGTH:
            return Framing.LENGTH  # llhttp refuses it together with Transfer-Encoding
        if kind == _TRANSFER_ENCODING:
            if value.strip().lower() != b"chunked":
                raise HttpError(502, "upstream used an unsupported transfer-encoding")
            framing = Framing.CHUNKED
    return framing


def client_response_framing(app_framing: Framing, client_http_10: bool) -> Framing:
    """How the body is delimited towards the client.

    Chunked or close-delimited bodies from the app are chunked for HTTP/1.1
    clients, which keeps their connection alive; an HTTP/1.0 client can only
    get a close-delimited body.
    """
    if app_framing is Framing.CHUNKED or app_framing is Framing.CLOSE:
        return Framing.CLOSE if client_http_10 else Framing.CHUNKED
    return app_framing


def build_response_head(
    status: int, reason: bytes, headers: Headers, framing: Framing, close: bool,
    client_http_10: bool,
) -> bytes:
    """Serialise the response head for the client with our framing and Connection."""
    lines = [_status_line(status, reason)]
    length = b""
    tokens = NO_TOKENS
    for name, value in headers:
        kind = _name_kind(name)
        if kind == _PASS:
            lines += (name, b": ", value, b"\r\n")
        elif kind == _CONTENT_LENGTH:
            length = value
        elif kind == _CONNECTION:
            tokens = tokens | connection_tokens(value)
    extra_tokens = tokens and tokens - PLAIN_CONNECTION_TOKENS - NEVER_STRIPPED
    if extra_tokens:  # rare: drop the fields that Connection names, then start over
        dropped = extra_tokens | {b"connection"}  # its tokens are now dealt with
        kept = [(n, v) for n, v in headers if n.lower() not in dropped]
        return build_response_head(status, reason, kept, framing, close, client_http_10)
    if framing is Framing.LENGTH or (length and framing is Framing.NONE and status != 204):
        lines.append(_length_line(length))  # HEAD, 304 keep theirs
    elif framing is Framing.CHUNKED:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        lines.append(b"Connection: close\r\n\r\n")
    elif client_http_10:
        lines.append(b"Connection: keep-alive\r\n\r\n")
    else:
        lines.append(b"\r\n")
    return b"".join(lines)


# Status lines by code, with the reason they were built with (apps send one per code).
_status_lines: Final[dict[int, tuple[bytes, bytes]]] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    cached = _status_lines.get(status)
    if cached is not None and cached[0] == reason:
        return cached[1]
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    if len(reason) <= 64:  # at most one entry per code: llhttp reads three digits
        _status_lines[status] = (reason, line)
    return line


def _length_line(length: bytes) -> bytes:
    """Content-Length, canonical: the app's value as sent when it is plain digits without
    leading zeros (the usual case), else rewritten (llhttp lets trailing spaces through)."""
    if length.isdigit() and (length[0] != 48 or len(length) == 1):
        return b"Content-Length: " + length + b"\r\n"
    return b"Content-Length: %d\r\n" % int(length)


def switching_head(reason: bytes, headers: Headers) -> bytes:
    """The app's 101 for the client: its Upgrade kept, framing and hop fields dropped."""
    dropped = HOP_BY_HOP - {b"upgrade"}
    lines = [b"HTTP/1.1 101 ", reason, b"\r\n"]
    for name, value in headers:
        if name.lower() not in dropped:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"Connection: upgrade\r\n\r\n")
    return b"".join(lines)


def interim_head(status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A 1xx response relayed to the client, minus hop-by-hop fields."""
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


_REASONS: Final = {
    400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


# Gateway errors are about the proxy's side (an errno, the app's address, a timer): nothing the
# client can act on, and not the client's to see.  Their detail goes to the logs instead.
_GATEWAY: Final = frozenset({502, 503, 504})


def error_response(status: int, detail: str, close: bool = True) -> bytes:
    """A small plain-text response the proxy generates itself: the detail for an error in the
    client's request, the status's phrase alone for a gateway error."""
    if status in _GATEWAY:
        body = _REASONS[status] + b"\n"
    else:
        body = detail.encode("ascii", "replace") + b"\n"
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (
        status, _REASONS.get(status, b"Error"), len(body))
    if status == 405:
        head += b"Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n"
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


# Fields that must not come from a trailer section (RFC 9110 section 6.5.1): framing,
# routing, authentication, request modifiers and response controls are evaluated before
# the content.  They are dropped when forwarding trailers; framing fields in a *request*
# trailer are refused outright, as a smuggling attempt.
_NOT_IN_TRAILERS: Final = HOP_BY_HOP | {
    b"host", b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"expect",
    b"range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"max-forwards", b"cache-control", b"content-encoding", b"content-type",
    b"content-range", b"location", b"retry-after", b"vary", b"www-authenticate",
    b"proxy-authenticate", b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-proto",
}
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"}) | FRAMING_ALIASES


def last_chunk(trailers: Headers, request: bool) -> bytes:
    """The end of a chunked body, with the trailer fields that may be forwarded.

    RFC 9112 section 7.1.2 allows trailers on any chunked message; a proxy forwards or
    drops them, never refuses the message for them (except a request trailer that
    tries to declare framing)."""
    if not trailers:
        return LAST_CHUNK
    lines = [b"0\r\n"]
    for name, value in trailers:
        lowered = name.lower()
        if request and lowered in _FRAMING:
            raise HttpError(400, "framing header in the request trailers")
        if lowered not in _NOT_IN_TRAILERS:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    """Frame one chunk of a chunked body (nothing for no data: that would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


class ResponseTooLarge(Exception):
    """The app's response head or trailer section is over --max-response-header-bytes."""


# An empty line: the end of a head.  llhttp refuses bare LF line ends, but a bare LF
# still ends what is held, so that llhttp sees it and refuses the response at once.
_HEAD_END: Final = re.compile(rb"\n\r?\n")
_HTTP: Final = b"HTTP/"  # how every response begins
_STATUS_DIGIT: Final = 9  # "HTTP/1.1 1xx": where the status code's first digit is
_INTERIM: Final = ord("1")
# Counted with a trailer section's raw bytes: the last-chunk line and the final CRLF.
_TRAILER_FRAMING_BYTES: Final = 64


class ResponseHeads:
    """Bounds the app's response heads and trailers, and gives llhttp each head in whole
    lines.

    Why whole lines: httptools joins the pieces of a field split across reads with
    ``+=``, so a field arriving in n reads cost O(n^2) copying (a 50 MB header took
    6.5 s, and the loop stalled meanwhile).  Here an unfinished line waits in one buffer
    (appended to, amortised linear), only the new bytes of a read are searched, and
    llhttp parses each byte once and sees each field in one piece.  The size of a head
    is known before llhttp sees its end, so a head over the limit is refused exactly
    (a head of the limit passes), however the app split it.  Each head counts on its
    own: an interim 1xx head, then the final one.

    Trailers reach llhttp with the body; two counts bound them: their fields as they
    complete (many small ones in one read), and the bytes of consecutive reads that
    carried no body byte (one field trickled in), so at most one read past the limit is
    ever held in a field.
    """

    __slots__ = ("_head_bytes", "_held", "_max_bytes", "_trailer_bytes", "_unbodied")

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._held = bytearray()  # the unfinished last line of a head, not parsed yet
        self._head_bytes = 0  # of the current head, given to llhttp already
        self._trailer_bytes = 0  # trailer fields as counted by the request side
        self._unbodied = 0  # bytes read since the last read that carried a body byte

    def start(self) -> None:
        """A new exchange: nothing held, nothing counted."""
        if self._held:
            self._held.clear()
        self._head_bytes = self._trailer_bytes = self._unbodied = 0

    def head_done(self) -> None:
        """llhttp completed a head (a 1xx, or the final one): the next one counts anew."""
        self._head_bytes = 0

    def whole_read(self, data: bytes | memoryview) -> bool:
        """The common case, looked for first: nothing held, not a 1xx (the head after it
        counts anew), and the whole read within what the head may still grow by: then
        whatever head it holds is within the limit, and llhttp may parse the read, head and
        body, in one call, with no search for the head's end.  False sends the read
        through ``take_head``.  If the head does not end in it, ``head_continues``."""
        size = len(data)
        return (not self._held and size > _STATUS_DIGIT and data[_STATUS_DIGIT] != _INTERIM
                and self._head_bytes + size <= self._max_bytes)

    def head_continues(self, size: int) -> None:
        """llhttp parsed a whole read and the head did not end in it: all of it was head,
        and the rest of the head goes through ``take_head``."""
        self._head_bytes += size

    def take_head(self, data: bytes | memoryview) -> tuple[bytes | memoryview,
                                                          bytes | memoryview]:
        """A read while a head is incomplete: what llhttp is to parse now, and what in
        ``data`` follows the end of the head (to be taken again: the body, or the next
        head after a 1xx).  Raises ResponseTooLarge."""
        held = self._held
        if not held:  # the common case: a head within one read, parsed in place
            found = _HEAD_END.search(data)
            if found is not None:
                end = found.end()
                self._head_grows(end)
                return data[:end], data[end:]
        old = len(held)
        held += data
        found = _HEAD_END.search(held, max(0, old - 2))  # it may begin in the held bytes
        if found is not None:
            end = found.end()
            self._head_grows(end)
            head = bytes(held[:end])
            held.clear()
            return head, data[end - old:]
        self._head_grows(len(held) + 1, parsed=False)  # it goes on past what is here
        last = held.rfind(b"\n", old)
        if last <= 0 and self._head_bytes == 0 and not _HTTP.startswith(held[:len(_HTTP)]):
            last = len(held)  # not an HTTP response: llhttp is to say so now, not a timeout
        if last <= 0:
            return b"", b""
        self._head_bytes += last
        # Up to the line feed, not through it: the next read may end the head with
        # "\r\n" or "\n", and the search must see the whole empty line.
        lines = bytes(held[:last])
        del held[:last]
        return lines, b""

    def _head_grows(self, size: int, parsed: bool = True) -> None:
        """The current head has ``size`` bytes past those llhttp parsed; llhttp parses
        them now if ``parsed``."""
        if self._head_bytes + size > self._max_bytes:
            raise ResponseTooLarge(
                f"the app sent a response head over {self._max_bytes} bytes")
        if parsed:
            self._head_bytes += size

    def trailer_field(self, name: bytes, value: bytes) -> None:
        """A trailer field arrived (name, value, ": " and CRLF count)."""
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self._max_bytes:
            raise ResponseTooLarge(f"the app sent trailers over {self._max_bytes} bytes")

    def body_read(self, size: int, carried_body: bool) -> None:
        """``size`` bytes of a read after the final head were parsed, and whether any of
        them was body.  Chunk framing and trailers alone for this long: too large."""
        self._unbodied = 0 if carried_body else self._unbodied + size
        if self._unbodied > self._max_bytes + _TRAILER_FRAMING_BYTES:
            raise ResponseTooLarge(f"the app sent trailers over {self._max_bytes} bytes")
