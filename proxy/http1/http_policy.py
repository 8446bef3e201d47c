"""What the request and response policies share, and what a request's fields mean to the
proxy.  Sans-IO, no sockets, no asyncio.

A proxy that forwards a message its upstream reads differently is a request-smuggling
hole, so on top of a strict parser (``request_parser`` for requests, ``response_parser``
for responses) it decides:

* only HTTP/1.0 and HTTP/1.1; Transfer-Encoding must be exactly ``chunked`` and is
  refused on HTTP/1.0; ``Content_Length``-style names that an app framework may
  normalise into a framing header are refused; HTTP/1.1 needs exactly one Host;
* hop-by-hop headers and those named in ``Connection`` are removed, framing is
  re-declared canonically (``Content-Length: <int>`` or ``Transfer-Encoding: chunked``),
  the target is turned into origin form, and ``X-Forwarded-*`` are added
  (``request_head`` splices the forwarded head; ``name_kind`` says what each name means);
* responses get the same treatment in ``response_head``, and ``http_response`` chooses
  their framing towards the client (length, chunked, close-delimited or none).
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


class ForwardRequest:
    """A validated request and the head to send upstream.

    A plain class rather than a dataclass: mypyc compiles a dataclass's fields but leaves
    the ``__init__`` that ``dataclasses`` generates to the interpreter, and one of these is
    built for every request."""

    __slots__ = ("client_keep_alive", "expects_continue", "framing", "head", "http_10",
                 "idempotent", "length", "method", "target", "upgrade")

    def __init__(self, method: bytes, head: bytes, framing: Framing, http_10: bool,
                 client_keep_alive: bool, expects_continue: bool, idempotent: bool,
                 upgrade: bool = False, target: bytes = b"", length: int = 0) -> None:
        self.method = method
        self.head = head
        self.framing = framing
        self.http_10 = http_10
        self.client_keep_alive = client_keep_alive
        self.expects_continue = expects_continue
        self.idempotent = idempotent
        self.upgrade = upgrade  # forwarded with its Upgrade: a 101 turns it into a tunnel
        self.target = target  # as forwarded, in origin form (the access log shows it)
        self.length = length  # the body's, with Framing.LENGTH


def origin_form(method: bytes, url: bytes) -> tuple[bytes, bytes | None]:
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
HOP: Final = 0
LENGTH: Final = 1
ENCODING: Final = 2
HOST: Final = 3
CONNECTION: Final = 4
XFF: Final = 5
XFP: Final = 6
XFH: Final = 7
EXPECT: Final = 8
ALIAS: Final = 9
UPGRADE: Final = 10
CLAIM: Final = 11
# Fields by which a client claims where a request came from: kept (and X-Forwarded-For
# appended to) from a trusted proxy, dropped from anyone else (--trusted-proxies).
_CLAIMS: Final = frozenset({b"forwarded", b"x-real-ip", b"x-forwarded-port",
                            b"x-forwarded-prefix", b"x-forwarded-server", b"x-forwarded-ssl"})
_REQUEST_ROLES: Final = {
    **dict.fromkeys(HOP_BY_HOP, HOP), b"upgrade": UPGRADE,
    b"content-length": LENGTH, b"transfer-encoding": ENCODING, b"host": HOST,
    b"connection": CONNECTION, b"x-forwarded-for": XFF, b"x-forwarded-proto": XFP,
    b"x-forwarded-host": XFH, b"expect": EXPECT,
    **dict.fromkeys(FRAMING_ALIASES, ALIAS), **dict.fromkeys(_CLAIMS, CLAIM),
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
UNLISTED: Final = 16
UNDERSCORED: Final = 1  # a CGI-style alias of another name (X_Forwarded_For)
ORIGIN_CLAIM: Final = 2  # another X-Forwarded-* field: who sent the request
# Names as sent, with their kind: clients send the same few names on every request, and
# one lookup replaces a lower(), a role lookup and the checks below (counted: a tenth of a
# proxied request's instructions).  Bounded in entries and in name length.
_MEMO_ENTRIES: Final = 4096
NAME_MEMO_BYTES: Final = 64
_name_kinds: Final[dict[bytes, int]] = {}


# The bytes of a token (RFC 9110 section 5.6.2): a field name is made of them only.
TOKEN_BYTES: Final = (b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      b"abcdefghijklmnopqrstuvwxyz")


def name_kind(name: bytes) -> int:
    """A field name's role, or ``UNLISTED`` with the bits of its drop reasons.  A name that
    is not a token (empty, whitespace before the colon, a line folded onto the one
    before) is refused: HttpError 400.  Only valid names are remembered."""
    kind = _name_kinds.get(name)
    if kind is not None:
        return kind
    if not name or name.translate(None, TOKEN_BYTES):
        raise HttpError(400, "invalid header field name")
    lowered = name.lower()
    role = _REQUEST_ROLES.get(lowered)
    if role is not None:
        kind = role
    else:
        kind = UNLISTED
        if _has_underscore(lowered):
            kind |= UNDERSCORED
        if lowered.startswith(b"x-forwarded-"):
            kind |= ORIGIN_CLAIM
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


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lowercased tokens of one Connection field value (most are one plain token)."""
    plain = _PLAIN_TOKEN_SETS.get(value.lower())
    if plain is not None:
        return plain
    return frozenset(token.strip().lower() for token in value.split(b","))


def tunnel_upgrade(upgrade: bytes, tokens: frozenset[bytes], http_10: bool) -> bytes | None:
    """The Upgrade to forward, or None.  h2c is never forwarded: an h2c tunnel
    through a proxy bypasses every rule the proxy applies (h2c smuggling)."""
    if not upgrade or b"upgrade" not in tokens or http_10:
        return None
    protocols = [p.strip().lower() for p in upgrade.split(b",")]
    if any(p.startswith(b"h2c") for p in protocols):
        return None
    return upgrade


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request, as the header policy needs to know: its address, whether it is
    a trusted proxy (--trusted-proxies), and whether names with '_' pass."""

    ip: bytes
    trusted: bool = False
    underscores: bool = False
