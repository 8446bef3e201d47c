"""The request and response policy on top of llhttp: sans-IO, no sockets, no asyncio.

llhttp (through httptools) already rejects most ambiguous framing: Content-Length
together with Transfer-Encoding, duplicate or non-decimal Content-Length,
obs-fold, bare LF, control bytes in names and values, chunk-size overflow.  This
module adds what a *proxy* must decide on top of a parser, because a proxy that
forwards a message its upstream reads differently is a request-smuggling hole:

* only HTTP/1.0 and HTTP/1.1; Transfer-Encoding must be exactly ``chunked`` and is
  refused on HTTP/1.0; ``Content_Length``-style names that an app framework may
  normalise into a framing header are refused; HTTP/1.1 needs exactly one Host;
* the forwarded head is rebuilt from validated fields: hop-by-hop headers and
  those named in ``Connection`` are removed, framing is re-declared canonically
  (``Content-Length: <int>`` or ``Transfer-Encoding: chunked``), the target is
  turned into origin form, and ``X-Forwarded-*`` are added;
* responses get the same treatment in ``http_response``, which also chooses their
  framing towards the client (length, chunked, close-delimited or none).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, TypeVar

Headers = list[tuple[bytes, bytes]]
Value = TypeVar("Value")


class HttpError(Exception):
    """A message we refuse; ``status`` is what the client is told."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Framing(enum.Enum):
    """How a message body is delimited on the wire."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # the body ends when the connection does (responses only)


# Removed when forwarding either way: they describe one hop, not the message.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"transfer-encoding", b"content-length",
})
# Connection may not strip these: doing so would change the message's meaning.
NEVER_STRIPPED: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
# Names an app framework (CGI-style) may map onto a framing header.
FRAMING_ALIASES: Final = frozenset({b"content_length", b"transfer_encoding"})
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class HeadCollector:
    """Accumulates a request head from parser callbacks and enforces its limits.

    The limits are checked on every callback, so they hold however the bytes
    are split across reads (a whole oversized head in one read included).
    """

    __slots__ = ("_max_bytes", "_max_count", "_max_line", "field_bytes", "head_bytes", "headers",
                 "url")

    def __init__(self, max_line_bytes: int, max_header_bytes: int, max_count: int) -> None:
        self._max_line = max_line_bytes
        self._max_bytes = max_header_bytes
        self._max_count = max_count
        self.url = b""
        self.headers: Headers = []
        self.field_bytes = 0  # name + value + ": " + CRLF, per complete field
        self.head_bytes = 0  # raw bytes read while the head was incomplete

    def add_url(self, piece: bytes) -> None:
        self.url += piece
        if len(self.url) > self._max_line:
            raise HttpError(414, "request target too long")

    def add_raw(self, size: int) -> None:
        """Bytes read while this head is still incomplete: bounds a trickled long line."""
        self.head_bytes += size
        # The raw count includes the request line (method and version: < 64 bytes).
        if self.head_bytes > self._max_bytes + len(self.url) + 64:
            raise HttpError(431, "request header fields too large")

    def add_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.field_bytes += len(name) + len(value) + 4
        if len(self.headers) > self._max_count or self.field_bytes > self._max_bytes:
            raise HttpError(431, "request header fields too large")


class ForwardRequest:
    """A validated request and the head to send upstream.

    A plain class rather than a dataclass: mypyc compiles a dataclass's fields but leaves
    the ``__init__`` that ``dataclasses`` generates to the interpreter, and one of these is
    built for every request."""

    __slots__ = ("client_keep_alive", "expects_continue", "framing", "head", "http_10",
                 "idempotent", "method", "target", "upgrade")

    def __init__(self, method: bytes, head: bytes, framing: Framing, http_10: bool,
                 client_keep_alive: bool, expects_continue: bool, idempotent: bool,
                 upgrade: bool = False, target: bytes = b"") -> None:
        self.method = method
        self.head = head
        self.framing = framing
        self.http_10 = http_10
        self.client_keep_alive = client_keep_alive
        self.expects_continue = expects_continue
        self.idempotent = idempotent
        self.upgrade = upgrade  # forwarded with its Upgrade: a 101 turns it into a tunnel
        self.target = target  # as forwarded, in origin form (the access log shows it)


def _origin_form(method: bytes, url: bytes) -> tuple[bytes, bytes | None]:
    """Return the origin-form target and, for absolute-form, its authority.  A fragment
    is the client's business (RFC 9110 section 4.2.5): it is not sent on."""
    fragment = url.find(b"#")
    if fragment >= 0:
        url = url[:fragment]
    if url.startswith(b"/"):
        return url, None
    if url == b"*" and method == b"OPTIONS":
        return url, None
    lowered = url[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme):
            rest = url[len(scheme):]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
            authority = rest if cut < 0 else rest[:cut]
            # No path and no query: "/" (RFC 9112 section 3.2.1), except that the last
            # proxy sends an OPTIONS for the server itself as "*" (section 3.2.4).
            path = rest[cut:] if cut >= 0 else b"*" if method == b"OPTIONS" else b"/"
            if path.startswith(b"?"):
                path = b"/" + path
            if not authority or not valid_host(authority):
                break
            return path, authority
    raise HttpError(400, "invalid request target")


# What a request header name means to the proxy; unlisted names pass through as sent.
# One dict lookup per header keeps the common case to a single pass (measured:
# the set-building version cost 13 us per request, this one about 4).
# Final, so that the compiled build inlines them instead of looking each one up per header.
_HOP: Final = 0
_LENGTH: Final = 1
_ENCODING: Final = 2
_HOST: Final = 3
_CONNECTION: Final = 4
_XFF: Final = 5
_XFP: Final = 6
_XFH: Final = 7
_EXPECT: Final = 8
_ALIAS: Final = 9
_UPGRADE: Final = 10
_CLAIM: Final = 11
# Fields by which a client claims where a request came from: kept (and X-Forwarded-For
# appended to) from a trusted proxy, dropped from anyone else (--trusted-proxies).
_CLAIMS: Final = frozenset({b"forwarded", b"x-real-ip", b"x-forwarded-port",
                            b"x-forwarded-prefix", b"x-forwarded-server", b"x-forwarded-ssl"})
_REQUEST_ROLES: Final = {
    **dict.fromkeys(HOP_BY_HOP, _HOP), b"upgrade": _UPGRADE,
    b"content-length": _LENGTH, b"transfer-encoding": _ENCODING, b"host": _HOST,
    b"connection": _CONNECTION, b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH, b"expect": _EXPECT,
    **dict.fromkeys(FRAMING_ALIASES, _ALIAS), **dict.fromkeys(_CLAIMS, _CLAIM),
}
# RFC 3986 authority as a Host value: a bracketed IPv6 literal or reg-name characters
# (unreserved, pct-encoded, sub-delims), then an optional port.  No space, '/', '@'.
_HOST_VALUE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?\Z")


def _has_underscore(name: bytes) -> bool:
    """Most names are letters, digits and '-': one replace and isalnum answer for them
    (measured at a quarter of ``name.find``, whose argument parsing dominates; ``in`` is
    worse still: bytes.__contains__ first tries its operand as an int and raises)."""
    return not name.replace(b"-", b"").isalnum() and name.find(b"_") >= 0


# Unlisted names get a kind above the roles: pass, plus a bit for each reason a peer's
# policy may drop them.
_UNLISTED: Final = 16
_UNDERSCORED: Final = 1  # a CGI-style alias of another name (X_Forwarded_For)
_ORIGIN_CLAIM: Final = 2  # another X-Forwarded-* field: who sent the request
# Names as sent, with their kind: clients send the same few names on every request, and
# one lookup replaces a lower(), a role lookup and the checks below (counted: a tenth of a
# proxied request's instructions).  Bounded in entries and in name length.
_MEMO_ENTRIES: Final = 4096
NAME_MEMO_BYTES: Final = 64
_name_kinds: Final[dict[bytes, int]] = {}


def _name_kind(name: bytes) -> int:
    """A header name's role, or ``_UNLISTED`` with the bits of its drop reasons."""
    kind = _name_kinds.get(name)
    if kind is not None:
        return kind
    lowered = name.lower()
    role = _REQUEST_ROLES.get(lowered)
    if role is not None:
        kind = role
    else:
        kind = _UNLISTED
        if _has_underscore(lowered):
            kind |= _UNDERSCORED
        if lowered.startswith(b"x-forwarded-"):
            kind |= _ORIGIN_CLAIM
    remember(_name_kinds, name, kind, NAME_MEMO_BYTES)
    return kind


def remember(memo: dict[bytes, Value], key: bytes, value: Value, max_key_bytes: int) -> None:
    """Keep what was found for ``key``, bounded: keys of at most ``max_key_bytes`` and at
    most _MEMO_ENTRIES of them (a client sending new ones empties the memo, never grows it).
    The memos here hold what a pure function found for a client's bytes."""
    if len(key) <= max_key_bytes:
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[key] = value


# Host values already found valid, for the same reason (most connections send one Host).
_valid_hosts: Final[dict[bytes, bool]] = {}


def valid_host(value: bytes) -> bool:
    """A Host value that is a valid authority (RFC 9110 section 7.2).  The common case, a
    DNS name or IPv4 address and maybe a port, takes a few C calls; the regular expression
    costs several times as much (measured) and decides the rest."""
    if value in _valid_hosts:
        return True
    name, colon, port = value.partition(b":")
    if name.replace(b".", b"").replace(b"-", b"").isalnum() and (
            not colon or not port or port.isdigit()):
        valid = True
    else:
        valid = _HOST_VALUE.match(value) is not None
    if valid:  # up to a DNS name's length; longer ones are checked each time
        remember(_valid_hosts, value, True, 255)
    return valid


# Connection tokens that name nothing we would forward anyway.
PLAIN_CONNECTION_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"te", b""})
NO_TOKENS: Final[frozenset[bytes]] = frozenset()
_PLAIN_TOKEN_SETS: Final = {token: frozenset({token}) for token in PLAIN_CONNECTION_TOKENS}


class _RequestScan:
    """What one pass over the request headers found."""

    __slots__ = ("expects", "forwarded_host", "forwarded_proto", "framing", "host", "hosts",
                 "length", "lines", "tokens", "upgrade", "xff")

    def __init__(self) -> None:
        self.framing, self.length, self.hosts = Framing.NONE, 0, 0
        self.host: bytes | None = None
        self.xff = b""
        self.forwarded_proto = self.forwarded_host = self.expects = False
        self.tokens = NO_TOKENS  # replaced, not updated: most requests have no Connection
        self.upgrade = b""
        self.lines: list[bytes] = []


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lowercased tokens of one Connection field value (most are one plain token)."""
    plain = _PLAIN_TOKEN_SETS.get(value.lower())
    if plain is not None:
        return plain
    return frozenset(token.strip().lower() for token in value.split(b","))


def _scan_request_headers(headers: Headers, http_10: bool, authority: bytes | None,
                          strip: frozenset[bytes], peer: Peer) -> _RequestScan:
    scan = _RequestScan()
    lines = scan.lines
    for name, value in headers:
        if value and (value[-1] == 32 or value[-1] == 9):
            value = value.rstrip(b" \t")  # llhttp keeps trailing OWS; other parsers drop it
        role = _name_kind(name)
        if strip and name.lower() in strip:
            continue  # named in Connection (rare: the second pass)
        if role >= _UNLISTED:
            if role & _UNDERSCORED and not peer.underscores:
                continue  # an alias of another field for CGI-style apps (X_Forwarded_For)
            if role & _ORIGIN_CLAIM and not peer.trusted:
                continue  # a claim about the request's origin from an untrusted peer
            lines += (name, b": ", value, b"\r\n")
        elif role == _CLAIM:
            if peer.trusted:
                lines += (name, b": ", value, b"\r\n")
        elif role == _XFF:
            if peer.trusted:  # otherwise the proxy's own replaces it below
                scan.xff = scan.xff + b", " + value if scan.xff else value
        elif role == _XFP:
            if peer.trusted:
                scan.forwarded_proto = True
                lines += (name, b": ", value, b"\r\n")
        elif role == _XFH:
            if peer.trusted:
                scan.forwarded_host = True
                lines += (name, b": ", value, b"\r\n")
        elif role == _EXPECT:
            scan.expects = value.strip().lower() == b"100-continue"
            lines += (name, b": ", value, b"\r\n")
        elif role == _LENGTH:
            scan.framing, scan.length = Framing.LENGTH, int(value)  # llhttp: digits, single
        elif role == _ENCODING:
            if http_10 or value.strip().lower() != b"chunked":
                raise HttpError(400, "unsupported transfer-encoding")
            scan.framing = Framing.CHUNKED
        elif role == _HOST:
            if not valid_host(value):
                raise HttpError(400, "invalid Host header")
            scan.hosts += 1
            scan.host = value
            lines += (name, b": ", authority or value, b"\r\n")
        elif role == _CONNECTION:
            scan.tokens = scan.tokens | connection_tokens(value)
        elif role == _ALIAS:
            raise HttpError(400, "ambiguous framing header name")
        elif role == _UPGRADE:
            scan.upgrade = value
    return scan


def _tunnel_upgrade(scan: _RequestScan, http_10: bool) -> bytes | None:
    """The Upgrade to forward, or None.  h2c is never forwarded: an h2c tunnel
    through a proxy bypasses every rule the proxy applies (h2c smuggling)."""
    if not scan.upgrade or b"upgrade" not in scan.tokens or http_10:
        return None
    protocols = [p.strip().lower() for p in scan.upgrade.split(b",")]
    if any(p.startswith(b"h2c") for p in protocols):
        return None
    return scan.upgrade


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request, as the header policy needs to know: its address, whether it is
    a trusted proxy (--trusted-proxies), and whether names with '_' pass."""

    ip: bytes
    trusted: bool = False
    underscores: bool = False


def check_request(
    method: bytes, url: bytes, version: str, headers: Headers, keep_alive: bool,
    peer: Peer, default_host: bytes, upgrade_requested: bool = False,
) -> ForwardRequest:
    """Validate a parsed request head and build the head to forward, or raise HttpError.

    From a trusted proxy, ``X-Forwarded-For`` is appended to and the other forwarding
    fields pass; from anyone else they are all replaced by the proxy's own, so a client
    cannot claim another address, scheme or host to the app."""
    if version != "1.1" and version != "1.0":
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    http_10 = version == "1.0"
    target, authority = _origin_form(method, url)
    scan = _scan_request_headers(headers, http_10, authority, NO_TOKENS, peer)
    extra_tokens = scan.tokens and scan.tokens - PLAIN_CONNECTION_TOKENS - NEVER_STRIPPED
    if extra_tokens:  # rare: Connection names end-to-end-looking headers to drop
        scan = _scan_request_headers(headers, http_10, authority, extra_tokens, peer)
    if scan.hosts > 1 or (scan.hosts == 0 and not http_10):
        raise HttpError(400, "HTTP/1.1 requests need exactly one Host header")
    upgrade = None
    if upgrade_requested:
        # llhttp reads no body for an Upgrade request; one that declares a body
        # would have it parsed as the next request.
        if scan.framing is not Framing.NONE:
            raise HttpError(400, "an Upgrade request must not have a body")
        upgrade = _tunnel_upgrade(scan, http_10)
    lines = [method, b" ", target, b" HTTP/1.1\r\n", *scan.lines]
    if upgrade is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    if scan.host is None:
        lines += (b"Host: ", authority or default_host, b"\r\n")
    client_ip = peer.ip
    lines += (b"X-Forwarded-For: ", scan.xff + b", " + client_ip if scan.xff else client_ip,
              b"\r\n")
    if not scan.forwarded_proto:
        lines.append(b"X-Forwarded-Proto: http\r\n")
    forwarded_host = authority or scan.host  # absolute form: the target's authority wins
    if not scan.forwarded_host and forwarded_host is not None:
        lines += (b"X-Forwarded-Host: ", forwarded_host, b"\r\n")
    lines.append(_framing_line(scan.framing, scan.length))
    return ForwardRequest(
        method=method, head=b"".join(lines), framing=scan.framing, http_10=http_10,
        client_keep_alive=keep_alive, expects_continue=scan.expects and not http_10,
        idempotent=method in _IDEMPOTENT, upgrade=upgrade is not None, target=target,
    )


def _framing_line(framing: Framing, length: int) -> bytes:
    if framing is Framing.LENGTH:
        return b"Content-Length: %d\r\n\r\n" % length
    if framing is Framing.CHUNKED:
        return b"Transfer-Encoding: chunked\r\n\r\n"
    return b"\r\n"
