"""A request head read from the bytes as received, and forwarded spliced.  Sans-IO.

llhttp's per-field callbacks built a name, a value, a tuple and a list entry for every
field of every request, and the head was then rebuilt from those pieces: most of a proxied
request's user-space cost.  Here the head stays the bytes the client sent: it is split
into lines once, and each line is checked (its bytes, its colon, its name a token) and
classified the first time it is seen.  Clients send the same request line and the same
field lines request after request (Host, User-Agent, Accept...), so what a line means is
remembered, bounded, like the names and hosts in ``http_policy``: a line seen before costs
one dictionary lookup, and a line at the same place as in the connection's previous head
one comparison (``LastHead``).  The forwarded head is the received one with the lines the
proxy acts on cut out or replaced, and the proxy's own lines added at its end.

Measured before this design (callgrind, instructions per call from compiled code): any C
call costs about a thousand instructions, a ``translate`` over a small head three
thousand, and Python's regular expressions about 70 a byte on a field-line pattern.  So
the common path makes as few calls as it can, and no regular expression.

What is refused, with the status the client gets (``HttpError``), is what llhttp and h11
both refuse or read differently, so that what reaches the app parses one way only:

* the request line: ``method SP target SP HTTP/d.d`` with single spaces; a method
  llhttp knows (501 for another upper-case token, 400 for anything else); a target of
  visible ASCII (414 past ``--max-request-line-bytes``); HTTP/1.0 or 1.1 (505 for another
  version);
* each field line: ``token ":" OWS value``, the value HTAB, SP, visible ASCII and
  obs-text: whitespace before the colon, obs-fold, a CR or LF outside a CRLF, control
  bytes and an empty name are refused (400); more than ``--max-header-count`` fields or
  ``--max-header-bytes`` of them is 431;
* framing: Content-Length is one field of at most 18 digits; Transfer-Encoding is one
  field, exactly ``chunked``, never on HTTP/1.0 and never with Content-Length; names an
  app framework may map onto either (``Content_Length``) are refused; HTTP/1.1 needs
  exactly one valid Host.

The policy over the fields (hop-by-hop and Connection-named fields dropped, forwarding
claims kept only from trusted proxies, X-Forwarded-* added, framing re-declared) is
unchanged.  Trailing whitespace in a kept field's value is cut (llhttp keeps it, other
parsers drop it), so every parser reads the forwarded head alike.
"""

from __future__ import annotations

import re
from typing import Final

from proxy.http1.bytes_calls import SPLIT
from proxy.http1.http_policy import (
    ALIAS,
    CLAIM,
    CONNECTION,
    ENCODING,
    EXPECT,
    HOST,
    LENGTH,
    NEVER_STRIPPED,
    NO_TOKENS,
    ORIGIN_CLAIM,
    PLAIN_CONNECTION_TOKENS,
    UNDERSCORED,
    UNLISTED,
    UPGRADE,
    XFF,
    XFH,
    XFP,
    ForwardRequest,
    Framing,
    HttpError,
    Peer,
    connection_tokens,
    name_kind,
    origin_form,
    remember,
    tunnel_upgrade,
    valid_host,
)
from proxy.limits import RequestLimits

_CRLF: Final = b"\r\n"
_VISIBLE: Final = bytes(range(0x21, 0x7F))
# Deleted from a head by ``translate``: every byte a head may hold but CR and LF.
_HEAD_BYTES: Final = _VISIBLE + b" \t" + bytes(range(0x80, 0x100))  # all a field line holds
_VERSION: Final = re.compile(rb"HTTP/[0-9]\.[0-9]")
# A head still arriving holds nothing a complete one may not: no control byte, no CR or
# LF outside a CRLF (a CR may end the read).  Found, the head is refused before its end.
NEVER_IN_A_HEAD: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n|\Z)|(?<!\r)\n")
_METHOD_LIKE: Final = re.compile(rb"[A-Z][A-Z0-9_-]*")
# The methods llhttp knows: another one is 501, as it was when llhttp read the heads.
KNOWN_METHODS: Final = frozenset({
    b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"TRACE", b"COPY",
    b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND",
    b"REBIND", b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH",
    b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PATCH", b"PURGE", b"MKCALENDAR", b"LINK",
    b"UNLINK", b"SOURCE", b"QUERY",
})
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_MAX_LENGTH_DIGITS: Final = 18
# Method, spaces and version around the target: what a request line adds to it.
REQUEST_LINE_EXTRA: Final = 32


def refuse_early(held: bytearray, checked: int, limits: RequestLimits) -> None:
    """Raise HttpError for a head that cannot become valid, before its end arrives: a
    bare LF would never end it, an oversized one must not be held.  ``checked``: how much
    of ``held`` an earlier call looked at."""
    if NEVER_IN_A_HEAD.search(held, max(0, checked - 1)) is not None:
        raise HttpError(400, "invalid bytes in the request head")
    line_end = held.find(b"\r\n")
    if line_end < 0:
        if len(held) > limits.max_request_line_bytes + REQUEST_LINE_EXTRA:
            raise HttpError(414, "request target too long")
    elif len(held) - line_end > limits.max_header_bytes + 3:  # + 3: CR LF CR of the end
        raise HttpError(431, "request header fields too large")


# What a field line means, remembered: most are passed on as they are.
PASS: Final = 64  # a kind above every role and UNLISTED bit: forward the line untouched
_MEMO_LINE_BYTES: Final = 256  # longer lines (cookies, tokens) are read every time


class FieldLine:
    """One field line, read: its kind (a role, UNLISTED with drop bits, or PASS), its
    name, its value with OWS trimmed, and the line as forwarded when it is kept."""

    __slots__ = ("kept", "kind", "length", "name", "trimmed", "value")

    def __init__(self, kind: int, name: bytes, value: bytes, kept: bytes, trimmed: bool) -> None:
        self.kind = kind
        self.name = name
        self.value = value
        self.kept = kept
        # A Content-Length's value, or -1 if it is not one: at most 18 digits (below
        # 2**63: llhttp refused longer ones as overflowing), nothing else.
        self.length = -1
        if kind == LENGTH and value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
            self.length = int(value)
        # Forwarded other than as received (its trailing whitespace cut).  A flag, not
        # ``kept is not line``: a remembered reading was made from another bytes object.
        self.trimmed = trimmed


_field_lines: Final[dict[bytes, FieldLine]] = {}


def field_line(line: bytes) -> FieldLine:
    """A field line without its CRLF, checked and classified (remembered when short);
    HttpError 400 for one that is not a field line."""
    known = _field_lines.get(line)
    if known is not None:
        return known
    name, colon, value = line.partition(b":")
    if not colon or line.translate(None, _HEAD_BYTES):
        raise HttpError(400, "invalid header field")
    kind = name_kind(name)  # a token, or refused
    trimmed = value.strip(b" \t")
    kept = line
    cut = bool(value) and (value[-1] == 32 or value[-1] == 9)
    if cut:  # trailing OWS: llhttp would keep it
        kept = name + b": " + trimmed
    if kind == UNLISTED and not cut:
        kind = PASS
    read = FieldLine(kind, name, trimmed, kept, cut)
    remember(_field_lines, line, read, _MEMO_LINE_BYTES)
    return read


# A connection keeps its previous head for reuse only up to this size: an idle keep-alive
# connection holds at most about twice this more (the lines, and readings of long ones).
LAST_HEAD_BYTES: Final = 4096
_NO_LINES: Final[list[bytes]] = []
_UNREAD: Final = FieldLine(PASS, b"", b"", b"", False)  # index 0: the first line's place


class LastHead:
    """A connection's previous head: its lines and what each field line was read as.

    A client sends the same field lines request after request on a connection, and an
    app the same lines response after response.  Comparing a line with the one at its
    place in the previous head is one ``memcmp``; the memo (``field_line``) hashes the new
    bytes and then compares them, about 250 instructions a line.  Lines longer than the
    memo keeps (cookies, tokens) are reused this way too."""

    __slots__ = ("lines", "reads")

    def __init__(self) -> None:
        self.lines: list[bytes] = []  # empty: nothing to reuse
        self.reads: list[FieldLine] = []


def read_lines(lines: list[bytes], last: LastHead, head_bytes: int) -> list[FieldLine]:
    """What each field line of a head (``lines``, from its first line) means, by index;
    taken from ``last`` where the line is the one at the same place, and left there for
    the next head.  HttpError 400 for a line that is not a field line."""
    before, old_reads = last.lines, last.reads
    last.lines = _NO_LINES  # a head refused on the way leaves nothing to misread
    reads = old_reads if len(old_reads) == len(lines) else [_UNREAD] * len(lines)
    same_up_to = min(len(before), len(lines))
    for index in range(1, len(lines)):
        line = lines[index]
        if index < same_up_to and line == before[index]:
            if reads is not old_reads:
                reads[index] = old_reads[index]
        else:
            reads[index] = field_line(line)
    if head_bytes <= LAST_HEAD_BYTES:
        last.lines, last.reads = lines, reads
    else:
        last.reads = []
    return reads


class _Fields:
    """What the pass over the field lines found, and the edits to splice."""

    __slots__ = ("edits", "expects", "forwarded_host", "forwarded_proto", "framing", "host",
                 "hosts", "length", "lengths", "tokens", "upgrade", "xff")

    def __init__(self) -> None:
        self.framing, self.length, self.lengths, self.hosts = Framing.NONE, 0, 0, 0
        self.host: bytes | None = None
        self.xff = b""
        self.forwarded_proto = self.forwarded_host = self.expects = False
        self.tokens = NO_TOKENS
        self.upgrade = b""
        # (start, end, replacement) over the head, in order: lines cut or rewritten.
        self.edits: list[tuple[int, int, bytes]] = []


def _read_fields(lines: list[bytes], reads: list[FieldLine], http_10: bool,
                 authority: bytes | None, peer: Peer, strip: frozenset[bytes]) -> _Fields:
    """One pass over the head's lines (the request line first, skipped) and what each
    means (``read_lines``)."""
    found = _Fields()
    edits = found.edits
    line_end = len(lines[0])
    for index in range(1, len(lines)):
        line = lines[index]
        read = reads[index]
        line_start, line_end = line_end, line_end + 2 + len(line)  # from its CRLF before
        kind = read.kind
        if kind == PASS and not strip:
            continue
        if strip and read.name.lower() in strip:
            edits.append((line_start, line_end, b""))  # named in Connection (rare)
            continue
        keep = False
        if kind >= UNLISTED:
            keep = not ((kind & UNDERSCORED and not peer.underscores) or (
                kind & ORIGIN_CLAIM and not peer.trusted))
        elif kind == CLAIM:
            keep = peer.trusted
        elif kind == XFP:
            keep = found.forwarded_proto = found.forwarded_proto or peer.trusted
        elif kind == XFH:
            keep = found.forwarded_host = found.forwarded_host or peer.trusted
        elif kind == XFF:
            if peer.trusted:  # otherwise the proxy's own replaces it
                found.xff = found.xff + b", " + read.value if found.xff else read.value
        elif kind == EXPECT:
            found.expects = read.value.lower() == b"100-continue"
            keep = True
        elif kind == LENGTH:
            if found.lengths or read.length < 0:
                raise HttpError(400, "invalid Content-Length")
            found.lengths += 1
            found.framing, found.length = Framing.LENGTH, read.length
        elif kind == ENCODING:
            # A tab after the value: llhttp refuses it, h11 reads "chunked".
            if (http_10 or found.framing is Framing.CHUNKED
                    or read.value.lower() != b"chunked" or line.rstrip(b" ")[-1] == 9):
                raise HttpError(400, "unsupported transfer-encoding")
            found.framing = Framing.CHUNKED
        elif kind == HOST:
            if not valid_host(read.value):
                raise HttpError(400, "invalid Host header")
            found.hosts += 1
            found.host = read.value
            if authority is not None:  # absolute form: the target's authority is the host
                edits.append((line_start, line_end, b"\r\n" + read.name + b": " + authority))
                continue
            keep = True
        elif kind == CONNECTION:
            found.tokens = found.tokens | connection_tokens(read.value)
        elif kind == ALIAS:
            raise HttpError(400, "ambiguous framing header name")
        elif kind == UPGRADE:
            found.upgrade = read.value
        if not keep:
            edits.append((line_start, line_end, b""))
        elif read.trimmed:
            edits.append((line_start, line_end, b"\r\n" + read.kept))
    if found.lengths and found.framing is Framing.CHUNKED:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    return found


class RequestLine:
    """A request line, read: what the head to forward starts with, and what the policy
    needs of it."""

    __slots__ = ("authority", "forwarded", "http_10", "idempotent", "method", "rewritten",
                 "target")

    def __init__(self, line: bytes, limits: RequestLimits) -> None:
        parts = line.split(b" ")
        if len(parts) != 3:
            raise HttpError(400, "invalid request line")
        method, url, version = parts
        if version != b"HTTP/1.1" and version != b"HTTP/1.0":
            if _VERSION.fullmatch(version) is None:
                raise HttpError(400, "invalid request line")
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if len(url) > limits.max_request_line_bytes:
            raise HttpError(414, "request target too long")
        if not url or url.translate(None, _VISIBLE):
            raise HttpError(400, "invalid request target")
        if method not in KNOWN_METHODS:
            if _METHOD_LIKE.fullmatch(method) is not None:
                raise HttpError(501, "method not implemented")
            raise HttpError(400, "invalid method")
        if method == b"CONNECT":
            raise HttpError(405, "CONNECT is not supported")
        self.method = method
        self.idempotent = method in _IDEMPOTENT
        self.http_10 = version == b"HTTP/1.0"
        self.target, self.authority = origin_form(method, url)
        self.rewritten = not (self.target is url and not self.http_10)
        self.forwarded = b"%s %s HTTP/1.1" % (method, self.target) if self.rewritten else line


_request_lines: Final[dict[bytes, RequestLine]] = {}


def request_line(line: bytes, limits: RequestLimits) -> RequestLine:
    """The request line read (remembered when short, as field lines are)."""
    known = _request_lines.get(line)
    if known is not None and len(line) <= limits.max_request_line_bytes:
        return known
    read = RequestLine(line, limits)
    remember(_request_lines, line, read, _MEMO_LINE_BYTES)
    return read


def check_request(head: bytes, peer: Peer, default_host: bytes, limits: RequestLimits,
                  last: LastRequest | None = None) -> tuple[ForwardRequest, bool]:
    """Validate one complete request head (from its request line up to, not including,
    the CRLF CRLF that ends it) and build the head to forward; also whether the request
    asks to switch protocols (llhttp's ``should_upgrade``: an Upgrade field and the
    ``upgrade`` token).  ``last``: the connection's previous request, whose readings and
    added lines are reused where they apply.  Raises HttpError."""
    lines = SPLIT(head, _CRLF)
    if last is None:
        last = LastRequest()
    first = last.first
    if first is None or not last.lines or lines[0] != last.lines[0]:
        first = request_line(lines[0], limits)
    if len(head) - len(lines[0]) > limits.max_header_bytes or len(lines) > (
            limits.max_header_count + 1):
        raise HttpError(431, "request header fields too large")
    reads = read_lines(lines, last, len(head))
    last.first = first  # the reading of the first of ``last.lines``, when kept
    http_10, authority = first.http_10, first.authority
    found = _read_fields(lines, reads, http_10, authority, peer, NO_TOKENS)
    extra_tokens = found.tokens and found.tokens - PLAIN_CONNECTION_TOKENS - NEVER_STRIPPED
    if extra_tokens:  # rare: Connection names end-to-end-looking fields to drop
        found = _read_fields(lines, reads, http_10, authority, peer, extra_tokens)
    if found.hosts > 1 or (found.hosts == 0 and not http_10):
        raise HttpError(400, "HTTP/1.1 requests need exactly one Host header")
    tokens = found.tokens
    upgrade_requested = bool(found.upgrade) and bool(tokens) and b"upgrade" in tokens
    upgrade = None
    if upgrade_requested:
        # No body is read for an Upgrade request; one that declares a body would have
        # it read as the next request.
        if found.framing is not Framing.NONE:
            raise HttpError(400, "an Upgrade request must not have a body")
        upgrade = tunnel_upgrade(found.upgrade, tokens, http_10)
    if not tokens:
        keep_alive = not http_10
    else:
        keep_alive = b"keep-alive" in tokens if http_10 else b"close" not in tokens
    added = _added_lines(found, peer, authority, default_host, last)
    end = framing_line(found.framing, found.length)
    if not found.edits and upgrade is None and not first.rewritten:
        forwarded = b"".join((head, added, end))  # the usual request: its head as received
    else:
        pieces = spliced(head, len(lines[0]), first.forwarded, found.edits)
        if upgrade is not None:
            pieces += (b"\r\nConnection: upgrade\r\nUpgrade: ", upgrade)
        pieces += (added, end)
        forwarded = b"".join(pieces)
    request = ForwardRequest(
        method=first.method, head=forwarded, framing=found.framing, http_10=http_10,
        client_keep_alive=keep_alive, expects_continue=found.expects and not http_10,
        idempotent=first.idempotent, upgrade=upgrade is not None,
        target=first.target, length=found.length,
    )
    return request, upgrade_requested


def spliced(head: bytes, first_bytes: int, first_line: bytes,
            edits: list[tuple[int, int, bytes]]) -> list[bytes]:
    """The pieces of ``head`` as forwarded: ``first_line`` in place of its first
    ``first_bytes``, then the rest with the ``edits`` ((start, end, replacement), in order)
    made.  For requests and responses alike; the caller adds its own lines and joins."""
    at = first_bytes
    pieces = [first_line]
    for cut_from, cut_to, replacement in edits:
        if cut_from > at:
            pieces.append(head[at:cut_from])
        if replacement:
            pieces.append(replacement)
        at = cut_to
    if at < len(head):
        pieces.append(head[at:])
    return pieces


class LastRequest(LastHead):
    """A client connection's previous request: its lines and their readings
    (``LastHead``), its request line's reading, and the lines the proxy added to the last
    usual request (one with a Host and no forwarding claims kept), for that Host: a
    connection sends the same Host every time (the same bytes object, from the field-line
    readings), so they are joined once."""

    __slots__ = ("added", "added_for", "first")

    def __init__(self) -> None:
        super().__init__()
        self.first: RequestLine | None = None
        self.added_for = b""
        self.added = b""


def _added_lines(found: _Fields, peer: Peer, authority: bytes | None, default_host: bytes,
                 last: LastRequest | None) -> bytes:
    """Host when the request had none, and X-Forwarded-For, -Proto and -Host."""
    host = found.host
    if last is not None and (authority is not None or found.xff or found.forwarded_proto
                             or found.forwarded_host):
        last = None  # not the usual request: its lines are neither reused nor remembered
    if last is not None and host is last.added_for:
        return last.added
    pieces = []
    if host is None:
        pieces.append(b"\r\nHost: ")
        pieces.append(authority or default_host)
    pieces.append(b"\r\nX-Forwarded-For: ")
    pieces.append(found.xff + b", " + peer.ip if found.xff else peer.ip)
    if not found.forwarded_proto:
        pieces.append(b"\r\nX-Forwarded-Proto: http")
    forwarded_host = authority or host  # absolute form: the target's authority wins
    if not found.forwarded_host and forwarded_host is not None:
        pieces.append(b"\r\nX-Forwarded-Host: ")
        pieces.append(forwarded_host)
    lines = b"".join(pieces)
    if last is not None and host is not None:
        last.added_for, last.added = host, lines
    return lines


def framing_line(framing: Framing, length: int) -> bytes:
    """The end of the forwarded head: its framing, declared canonically."""
    if framing is Framing.LENGTH:
        return b"\r\nContent-Length: %d\r\n\r\n" % length
    if framing is Framing.CHUNKED:
        return b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    return b"\r\n\r\n"
