"""The response parser: where the app's responses begin and end in its connection's bytes.

The parser decides what the client gets and whether the app's connection is used again,
so its reading must not depend on how the app's bytes were cut into reads, must stop for
good at a refusal or at a byte nobody asked for, and must never accept a response that
llhttp (which it replaced) or h11 would read otherwise.  A stateful test drives one
parser through exchanges answered with valid and invalid responses fed in drawn reads,
against a model of what was sent; differential tests compare what it accepts with llhttp
and h11, and what the client would get with h11; examples pin the limits.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field

import h11
import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from proxy.app_connect import Failure
from proxy.http1.http_policy import Framing, Headers
from proxy.http1.http_response import chunk, client_response_framing, last_chunk
from proxy.http1.response_head import AppResponse, BadResponse, head_end
from proxy.http1.response_parser import (
    BODY,
    BODY_READ,
    CHUNKED,
    END,
    FAILED,
    HEAD,
    HEAD_READ,
    IDLE,
    INTERIM,
    NEED_DATA,
    STRAY,
    SWITCH,
    SWITCHED,
    UNTIL_CLOSE,
    Receiving,
    ResponseParser,
)

from helpers import chunked_bodies, mutated

MAX_HEAD = 1024  # ample for the drawn heads; the limits have their own examples
FAST = settings(max_examples=200, deadline=None)
STATEFUL = settings(max_examples=200, stateful_step_count=30, deadline=None)
NAMES = {INTERIM: "interim", HEAD_READ: "head", BODY_READ: "body", END: "end",
         SWITCH: "switch", STRAY: "stray"}
# What may follow each event ("started": start() was called, "idle": it was not since the
# last END, or ever).  SWITCH and STRAY end the connection: nothing follows them.
NEXT_EVENTS: dict[str, frozenset[int]] = {
    "idle": frozenset({STRAY}),
    "started": frozenset({INTERIM, HEAD_READ, SWITCH}),
    "interim": frozenset({INTERIM, HEAD_READ, SWITCH}),
    "head": frozenset({BODY_READ, END}),
    "body": frozenset({BODY_READ, END}),
    "end": frozenset({STRAY}),
    "switch": frozenset(),
    "stray": frozenset(),
}
# Fields a proxy must never pass on to the client (besides those Connection names).
HOP_BY_HOP = frozenset({b"keep-alive", b"te", b"trailer", b"upgrade", b"proxy-connection"})


@dataclass
class Completed:
    """One response the parser read to its END."""

    interim: list[int]
    status: int
    body: bytes
    trailers: Headers
    reusable: bool
    # Where the reads that gave its final head and its END ended (one-byte reads: where
    # they end), and its head as read: these depend on the reads, so are not compared.
    head_at: int = field(default=0, compare=False)
    end_at: int = field(default=0, compare=False)
    response: AppResponse | None = field(default=None, compare=False)


@dataclass
class Log:
    """Everything one parser reported, checked event by event as it comes."""

    kinds: list[str] = field(default_factory=list)  # consecutive body events merged
    completed: list[Completed] = field(default_factory=list)
    failure: Failure | None = None
    stray: bool = False
    tunnel: bytes | None = None  # after a SWITCH: its tail and every byte fed after it
    last: str = "idle"
    offset: int = 0  # where the latest read ended in the stream
    interim: list[int] = field(default_factory=list)
    current: Completed | None = None

    def started(self) -> None:
        assert self.last in ("idle", "end"), "an exchange started during another"
        self.last = "started"
        self.interim = []

    def take(self, parser: ResponseParser, event: int) -> None:
        """Record one event, asserting it may come after the one before."""
        assert self.failure is None, "an event after a refusal"
        assert event in NEXT_EVENTS[self.last], (self.last, NAMES.get(event, event))
        name = self.last = NAMES[event]
        if not self.kinds or self.kinds[-1] != name or event != BODY_READ:
            self.kinds.append(name)
        if event == INTERIM:
            assert 100 <= parser.response.status < 200 and parser.response.status != 101
            self.interim.append(parser.response.status)
        elif event == HEAD_READ:
            response = parser.response
            assert response.status >= 200
            self.current = Completed(self.interim, response.status, b"", [], False,
                                     head_at=self.offset, response=response)
        elif event == BODY_READ:
            assert parser.body and self.current is not None, "an empty body piece"
            self.current.body += parser.body
        elif event == END:
            self._end(parser)
        elif event == SWITCH:
            assert parser.response.status == 101 and parser.receiving is SWITCHED
            self.tunnel = parser.tail
        else:
            assert parser.receiving is FAILED
            self.stray = True

    def _end(self, parser: ResponseParser) -> None:
        done = self.current
        assert done is not None
        done.trailers, done.reusable = list(parser.trailers), parser.reusable
        done.end_at = self.offset
        self.completed.append(done)
        self.current = None
        assert parser.receiving is IDLE

    def read(self, parser: ResponseParser, data: bytes) -> None:
        """Feed one read and take its events; a refusal is recorded, and after it (or a
        SWITCH, or STRAY) the parser reports nothing more, whatever it is fed."""
        parser.feed(data)
        self.offset += len(data)
        if self.failure is not None or self.stray or self.tunnel is not None:
            if self.tunnel is not None:
                self.tunnel += data
            assert parser.next_event() == NEED_DATA
            return
        try:
            while (event := parser.next_event()) != NEED_DATA:
                self.take(parser, event)
        except BadResponse as refused:
            assert refused.failure in (Failure.PROTOCOL, Failure.TOO_LARGE), refused.failure
            self.failure = refused.failure
            assert parser.receiving is FAILED
            assert parser.next_event() == NEED_DATA, "parsed on after a refusal"

    def closed(self, parser: ResponseParser) -> bool:
        """The app closed the connection: record the END that may give."""
        ended = parser.app_closed()
        if ended:
            assert self.failure is None and not self.stray
            self.take(parser, END)
        return ended


def replay(raw: bytes, head_request: bool = False, upgrade: bool = False,
           cuts: list[int] | None = None, close: bool = False,
           max_head_bytes: int = MAX_HEAD) -> tuple[Log, Receiving]:
    """One exchange: ``raw`` fed to a new parser in reads split at ``cuts`` (``close``:
    then the app closes the connection)."""
    parser = ResponseParser(max_head_bytes)
    parser.start(head_request, upgrade)
    log = Log()
    log.started()
    bounds = [0, *sorted({cut for cut in cuts or [] if 0 < cut < len(raw)}), len(raw)]
    for start, end in itertools.pairwise(bounds):
        log.read(parser, raw[start:end])
    if close:
        log.closed(parser)
    return log, parser.receiving


def one_byte_reads(raw: bytes) -> list[int]:
    """The cuts that feed ``raw`` a byte at a time."""
    return list(range(1, len(raw)))


# -- responses, as sent and as they must be read ----------------------------------------------
@dataclass(frozen=True)
class Sent:
    """A valid response's bytes and what the parser must read in them."""

    raw: bytes
    status: int
    framing: Framing  # as the app delimits it
    reusable: bool
    head_bytes: int  # where its final head ends in raw
    interim: tuple[int, ...] = ()
    body: bytes = b""
    trailers: tuple[tuple[bytes, bytes], ...] = ()


REASONS = [b" OK", b" ", b"", b" Not Found", b" a\x80\tb"]
EXTRA_FIELDS = [b"", b"Content-Type: text/plain\r\n", b"Server: x\r\nX-A:b\r\n",
                b"X-T: a\tb \r\n", b"Keep-Alive: timeout=5\r\n",
                b"Proxy-Connection: keep-alive\r\n", b"Trailer: X-T\r\n", b"TE: trailers\r\n"]
INTERIM_HEADS = {100: b"HTTP/1.1 100 Continue\r\n\r\n",
                 103: b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"}
BODIES = st.binary(max_size=60)


@st.composite
def responses(draw: st.DrawFn, head_request: bool = False) -> Sent:
    """A valid response to a request (to a HEAD with ``head_request``): perhaps 1xx heads,
    then a final head framed by length, chunked, not at all, or by the app's close."""
    http_10 = draw(st.sampled_from([False, False, True]))
    kinds = ["length", "none", "close"] + ([] if http_10 else ["chunked"])
    kind = draw(st.sampled_from(kinds))
    tokens = draw(st.sampled_from([[], [b"close"], [b"keep-alive"], [b"X-Drop"],
                                   [b"keep-alive", b"X-Drop"], [b"close", b"X-Drop"]]))
    keep_alive = b"keep-alive" in tokens if http_10 else b"close" not in tokens
    interim = () if http_10 else tuple(draw(st.lists(st.sampled_from([100, 103]), max_size=2)))
    status = {"none": draw(st.sampled_from([204, 304]))}.get(
        kind, draw(st.sampled_from([200, 201, 404, 500])))
    body = b"" if kind == "none" else draw(BODIES)
    fields = draw(st.sampled_from(EXTRA_FIELDS))
    if tokens:
        fields += b"Connection: " + b", ".join(tokens) + b"\r\n"
    if b"X-Drop" in tokens:
        fields += b"X-Drop: 1\r\n"
    wire = body
    trailers: tuple[tuple[bytes, bytes], ...] = ()
    if kind == "length":
        form = draw(st.sampled_from([b"Content-Length: %d", b"Content-Length:%d  ",
                                     b"content-length: 0%d"]))
        fields = draw(st.sampled_from([fields + form, form + b"\r\n" + fields]))
        fields = fields if fields.endswith(b"\r\n") else fields + b"\r\n"
        fields = fields.replace(b"%d", b"%d" % len(body))
    elif kind == "chunked":
        wire, body, trailers = draw(chunked_bodies())
        fields += b"Transfer-Encoding: chunked\r\n"
    elif kind == "none" and status == 304 and draw(st.booleans()):
        fields += b"Content-Length: 12\r\n"  # the representation's: no body follows
    head = (b"HTTP/1.%d %d" % (0 if http_10 else 1, status) + draw(st.sampled_from(REASONS))
            + b"\r\n" + fields + b"\r\n")
    framing = {"length": Framing.LENGTH, "chunked": Framing.CHUNKED, "none": Framing.NONE,
               "close": Framing.CLOSE}[kind]
    if head_request:  # the head says what a GET's body would be: none follows
        framing, wire, body, trailers = Framing.NONE, b"", b"", ()
    before = b"".join(INTERIM_HEADS[code] for code in interim)
    return Sent(before + head + wire, status, framing,
                keep_alive and framing is not Framing.CLOSE and not head_request,
                len(before) + len(head), interim, body, trailers)


def head_of(size: int, status: bytes = b"200 OK", end: bytes = b"Content-Length: 0\r\n") -> bytes:
    """A head of exactly ``size`` bytes, its status line to its final CRLF inclusive."""
    start = b"HTTP/1.1 " + status + b"\r\n" + end + b"X: "
    head = start + b"v" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    return head


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# Complete responses refused whatever request they answer (no upgrade asked), each with
# its failure, and refused once all of it is read (perhaps before).
HEAD_FAULTS = [
    (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\nX: y\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"ICY 200 OK\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 0\r\n\r\n", Failure.PROTOCOL),
    (head_of(MAX_HEAD + 1), Failure.TOO_LARGE),
    (INTERIM_HEADS[100] + head_of(MAX_HEAD + 1), Failure.TOO_LARGE),
]
# Faults in the body: refused only when a body is expected (not in answer to HEAD).
BODY_FAULTS = [
    (CHUNKED_HEAD + b"zz\r\n", Failure.PROTOCOL),
    (CHUNKED_HEAD + b"1\r\nab\r\n0\r\n\r\n", Failure.PROTOCOL),
    (CHUNKED_HEAD + b"1 ;a\r\na\r\n0\r\n\r\n", Failure.PROTOCOL),
    (CHUNKED_HEAD + b"0\r\nX : y\r\n\r\n", Failure.PROTOCOL),
    (CHUNKED_HEAD + b"0\r\nX: " + b"v" * MAX_HEAD + b"\r\n\r\n", Failure.TOO_LARGE),
]
SWITCH_HEAD = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: upgrade\r\n\r\n")
STRAY_BYTES = [b"x", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"\r\n"]


# -- the stateful test ------------------------------------------------------------------------
@dataclass
class Exchange:
    """One exchange the model started, and the response appended for it (if yet)."""

    head_request: bool
    upgrade: bool
    start: int = -1  # where its response begins in the stream
    sent: Sent | None = None
    invalid: tuple[int, Failure] | None = None  # its end, its failure
    switch_head: int = -1  # a 101's head's end in the stream


class ResponseModel(RuleBasedStateMachine):
    """One app connection's parser, through exchanges answered in drawn reads."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = ResponseParser(MAX_HEAD)
        self.log = Log()
        self.stream = b""
        self.fed = 0
        self.exchanges: list[Exchange] = []
        self.stray_at: int | None = None  # where bytes after a complete response begin
        self.closed = False

    # -- what the model expects --
    def _awaiting_response(self) -> Exchange | None:
        """The current exchange, when it is waiting for its response to be appended."""
        last = self.exchanges[-1] if self.exchanges else None
        return last if last is not None and last.start < 0 and not self.closed else None

    def _over(self) -> bool:
        """Nothing more may be appended: the connection's bytes mean nothing more."""
        if self.closed or self.stray_at is not None:
            return True
        if not self.exchanges:
            return False
        last = self.exchanges[-1]
        return (last.invalid is not None or last.switch_head >= 0
                or (last.sent is not None and last.sent.framing is Framing.CLOSE))

    def _can_start(self) -> bool:
        """The proxy would send another request: all was read and the app allows reuse."""
        if self._over() or self.fed < len(self.stream):
            return False
        if not self.exchanges:
            return True
        sent = self.exchanges[-1].sent
        return sent is not None and sent.reusable

    def _append(self, raw: bytes) -> int:
        """Append the current exchange's response; where it begins in the stream."""
        exchange = self.exchanges[-1]
        exchange.start = len(self.stream)
        self.stream += raw
        return exchange.start

    # -- rules --
    @initialize(head_request=st.booleans(), upgrade=st.booleans())
    def first_exchange(self, head_request: bool, upgrade: bool) -> None:
        """A connection is opened for an exchange: the first one starts at once."""
        self.start(head_request, upgrade)

    @precondition(lambda self: self._can_start())
    @rule(head_request=st.booleans(), upgrade=st.booleans())
    def start(self, head_request: bool, upgrade: bool) -> None:
        """The proxy sent a request (a HEAD, or one asking to switch, or neither)."""
        self.parser.start(head_request, upgrade)
        self.log.started()
        self.exchanges.append(Exchange(head_request, upgrade))

    @precondition(lambda self: self._awaiting_response() is not None)
    @rule(data=st.data())
    def respond(self, data: st.DataObject) -> None:
        """A valid response to the current request, not yet fed."""
        exchange = self.exchanges[-1]
        exchange.sent = data.draw(responses(exchange.head_request))
        self._append(exchange.sent.raw)

    @precondition(lambda self: self._awaiting_response() is not None)
    @rule(data=st.data(), sizes=st.lists(st.integers(1, 80), max_size=6))
    def respond_in_reads(self, data: st.DataObject, sizes: list[int]) -> None:
        """A response, then all that is pending fed in drawn reads (and the rest in one)."""
        self.respond(data)
        for size in [*sizes, len(self.stream)]:
            if self.fed < len(self.stream):
                self.read(size)

    @precondition(lambda self: self._can_start())
    @rule(head_request=st.booleans(), data=st.data(),
          sizes=st.lists(st.integers(1, 80), max_size=6))
    def another_exchange(self, head_request: bool, data: st.DataObject,
                         sizes: list[int]) -> None:
        """The connection reused: an exchange, answered and read."""
        self.start(head_request, False)
        self.respond_in_reads(data, sizes)

    @precondition(lambda self: self._awaiting_response() is not None)
    @rule(data=st.data())
    def respond_at_the_limit(self, data: st.DataObject) -> None:
        """A final head of exactly the limit, after a 1xx of exactly the limit too."""
        exchange = self.exchanges[-1]
        interim = data.draw(st.sampled_from([(), (100,)]))
        before = head_of(MAX_HEAD, b"100 Continue", b"") if interim else b""
        raw = before + head_of(MAX_HEAD)
        exchange.sent = Sent(raw, 200, Framing.NONE if exchange.head_request else Framing.LENGTH,
                             not exchange.head_request, len(raw), interim)
        self._append(raw)

    @precondition(lambda self: self._awaiting_response() is not None)
    @rule(data=st.data())
    def respond_invalid(self, data: st.DataObject) -> None:
        """A response refused, or a switch: after it the connection carries nothing more."""
        exchange = self.exchanges[-1]
        faults = HEAD_FAULTS + ([] if exchange.head_request else BODY_FAULTS)
        if not exchange.upgrade:
            faults = [*faults, (SWITCH_HEAD, Failure.PROTOCOL)]
        if exchange.upgrade and data.draw(st.booleans()):
            self._switch(data.draw(st.binary(max_size=30)))
            return
        raw, failure = data.draw(st.sampled_from(faults))
        exchange.invalid = (self._append(raw) + len(raw), failure)

    def _switch(self, tunnel: bytes) -> None:
        """A 101 to a request that asked to switch, and the tunnel's first bytes."""
        exchange = self.exchanges[-1]
        exchange.switch_head = self._append(SWITCH_HEAD) + len(SWITCH_HEAD)
        self.stream += tunnel

    @precondition(lambda self: not self._over() and self.exchanges
                  and self.exchanges[-1].sent is not None)
    @rule(junk=st.sampled_from(STRAY_BYTES))
    def stray(self, junk: bytes) -> None:
        """Bytes after a complete response (a body sent anyway after a HEAD, say)."""
        self.stray_at = len(self.stream)
        self.stream += junk

    @precondition(lambda self: self.fed < len(self.stream))
    @rule(size=st.integers(1, 80))
    def read(self, size: int) -> None:
        """The app's next bytes arrive, in a read of a drawn size."""
        end = min(len(self.stream), self.fed + size)
        self.log.read(self.parser, self.stream[self.fed:end])
        self.fed = end

    @precondition(lambda self: self.fed < len(self.stream))
    @rule()
    def read_the_rest(self) -> None:
        self.log.read(self.parser, self.stream[self.fed:])
        self.fed = len(self.stream)

    @precondition(lambda self: self.fed == len(self.stream) and not self.closed
                  and self.exchanges and self.exchanges[-1].start >= 0
                  and not self._can_start())
    @rule()
    def app_closes(self) -> None:
        """The app closes a connection that will not carry another exchange."""
        last = self.exchanges[-1] if self.exchanges else None
        until_close = (self.stray_at is None and last is not None and last.sent is not None
                       and last.sent.framing is Framing.CLOSE and self.log.failure is None)
        assert self.log.closed(self.parser) == until_close
        self.closed = True

    @precondition(lambda self: self._over())
    @rule()
    def nothing_more_without_a_read(self) -> None:
        """Once the connection is done with, asking again finds nothing."""
        assert self.parser.next_event() == NEED_DATA

    # -- invariants --
    def _expected_complete(self) -> list[Sent]:
        done = []
        for exchange in self.exchanges:
            sent = exchange.sent
            if sent is None or self.fed < exchange.start + len(sent.raw):
                break
            if sent.framing is Framing.CLOSE and not self.closed:
                break
            done.append(sent)
        return done

    @invariant()
    def every_complete_response_fed_was_read_as_sent(self) -> None:
        expected = self._expected_complete()
        assert len(self.log.completed) == len(expected)
        for read, sent in zip(self.log.completed, expected, strict=True):
            assert (tuple(read.interim), read.status, read.body) == (
                sent.interim, sent.status, sent.body)
            assert (tuple(read.trailers), read.reusable) == (sent.trailers, sent.reusable)

    @invariant()
    def refused_exactly_the_invalid_response(self) -> None:
        last = self.exchanges[-1] if self.exchanges else None
        if last is None or last.invalid is None or self.fed <= last.start:
            assert self.log.failure is None
            return
        end, failure = last.invalid
        if self.fed >= end:
            assert self.log.failure is failure
        else:  # refused early or not yet, but never for another reason
            assert self.log.failure in (None, failure)

    @invariant()
    def stray_bytes_fail_the_connection(self) -> None:
        stray = self.stray_at is not None and self.fed > self.stray_at
        assert self.log.stray == stray

    @invariant()
    def a_switch_hands_on_every_byte_after_its_head(self) -> None:
        last = self.exchanges[-1] if self.exchanges else None
        if last is None or last.switch_head < 0 or self.fed < last.switch_head:
            assert self.log.tunnel is None
            return
        assert self.log.tunnel == self.stream[last.switch_head:self.fed]

    @invariant()
    def receiving_matches_what_was_fed(self) -> None:
        receiving = self.parser.receiving
        if self.log.failure is not None or self.log.stray:
            assert receiving is FAILED
            return
        last = self.exchanges[-1] if self.exchanges else None
        if last is None:
            assert receiving is IDLE
        elif last.start < 0 or self.fed <= last.start:
            assert receiving is HEAD
        elif last.switch_head >= 0:
            assert receiving is (SWITCHED if self.fed >= last.switch_head else HEAD)
        elif last.invalid is not None:
            assert receiving in (HEAD, BODY, CHUNKED)
        else:
            assert last.sent is not None
            assert receiving is self._receiving_in(last.sent, self.fed - last.start)

    def _receiving_in(self, sent: Sent, fed: int) -> Receiving:
        """What a parser fed ``fed`` bytes of ``sent`` expects."""
        if fed < sent.head_bytes:
            return HEAD
        if sent.framing is Framing.CLOSE:
            return IDLE if self.closed else UNTIL_CLOSE
        if fed >= len(sent.raw):
            return IDLE
        return CHUNKED if sent.framing is Framing.CHUNKED else BODY


def test_response_parser_model() -> None:
    run_state_machine_as_test(ResponseModel, settings=STATEFUL)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the default 60 s is for the quick run
def test_response_parser_model_long() -> None:
    run_state_machine_as_test(ResponseModel, settings=settings(STATEFUL, max_examples=4000))


# -- the reading does not depend on the reads -------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What one exchange's reading came to, whatever the reads."""

    kinds: tuple[tuple[str, ...], tuple[str, ...]]
    completed: list[tuple[list[int], int, bytes, Headers, bool]]
    failure: Failure | None
    stray: bool
    tunnel: bytes | None
    receiving: Receiving


def outcome(raw: bytes, head_request: bool, upgrade: bool, cuts: list[int] | None,
            close: bool) -> Outcome:
    log, receiving = replay(raw, head_request, upgrade, cuts, close)
    # Of a response refused in its body, the pieces before the refusal are reported as
    # they arrive: only those events may differ.
    ended = len(log.kinds) - log.kinds[::-1].index("end") if "end" in log.kinds else 0
    kinds = (tuple(log.kinds[:ended]), tuple(kind for kind in log.kinds[ended:] if kind != "body"))
    completed = [(read.interim, read.status, read.body, read.trailers, read.reusable)
                 for read in log.completed]
    return Outcome(kinds, completed, log.failure, log.stray, log.tunnel, receiving)


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """One exchange's bytes (valid, invalid, a switch, perhaps with stray bytes after),
    whether it answers a HEAD, whether it asked to switch."""
    head_request, upgrade = draw(st.booleans()), draw(st.booleans())
    choice = draw(st.sampled_from(["valid", "valid", "invalid", "switch"]))
    if choice == "valid":
        raw = draw(responses(head_request)).raw
    elif choice == "invalid":
        raw = draw(st.sampled_from(HEAD_FAULTS + BODY_FAULTS))[0]
    else:
        raw = SWITCH_HEAD + draw(st.binary(max_size=20))
    if draw(st.booleans()):
        raw += draw(st.sampled_from(STRAY_BYTES))
    return raw, head_request, upgrade


@FAST
@given(exchanges(), st.booleans(), st.data())
def test_the_reading_does_not_depend_on_the_reads(
        exchange: tuple[bytes, bool, bool], close: bool, data: st.DataObject) -> None:
    raw, head_request, upgrade = exchange
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    whole = outcome(raw, head_request, upgrade, None, close)
    assert outcome(raw, head_request, upgrade, cuts, close) == whole


SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    CHUNKED_HEAD + b"3;e=1\r\nabc\r\n0\r\n\r\n",
    CHUNKED_HEAD + b"1;a=\"q\\\"s\"\r\nz\r\n0\r\nX-T: 1\r\nY: a b\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
    INTERIM_HEADS[103] + b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\r\nuntil the end",
    b"HTTP/1.0 500 Oops\r\n\r\nerror",
]
MEANINGFUL = b"\r\n :;,\t\"\\=\x00\x7f\x80-+0123456789aAfFxX_"


@FAST
@given(st.sampled_from(SEEDS), st.booleans(), st.booleans(), st.data())
def test_mutated_responses_are_read_alike_however_split(
        seed: bytes, head_request: bool, close: bool, data: st.DataObject) -> None:
    raw = mutated(data, seed, MEANINGFUL)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    whole = outcome(raw, head_request, False, None, close)
    assert outcome(raw, head_request, False, cuts, close) == whole


# -- differential: what the parser accepts, llhttp and h11 read alike -------------------------
@dataclass
class Message:
    """One message llhttp read: its status, where its head and itself ended (0: not yet)."""

    status: int
    head_at: int
    body: bytes = b""
    end_at: int = 0


def read_by_llhttp(raw: bytes) -> list[Message]:
    """The messages llhttp reads in ``raw``, fed a byte at a time so that where each
    head and message ends is known, up to an error."""

    class Collector:
        def __init__(self) -> None:
            self.messages: list[Message] = []
            self.at = 0

        def on_headers_complete(self) -> None:
            self.messages.append(Message(parser.get_status_code(), self.at))

        def on_body(self, body: bytes) -> None:
            self.messages[-1].body += body

        def on_message_complete(self) -> None:
            self.messages[-1].end_at = self.at

    collector = Collector()
    parser = httptools.HttpResponseParser(collector)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        for at in range(len(raw)):
            collector.at = at + 1
            parser.feed_data(raw[at:at + 1])
    return collector.messages


@dataclass
class H11Read:
    """A response h11 read to its end."""

    interim: list[int]
    status: int
    headers: Headers
    body: bytes
    trailers: Headers
    end_at: int


def read_by_h11(raw: bytes, head_request: bool, close: bool) -> H11Read | None:
    """The response h11, as a client that sent GET (or HEAD), reads in ``raw`` (then the
    app's close, with ``close``); None when it reads none to its end."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method=b"HEAD" if head_request else b"GET", target=b"/",
                                headers=[(b"Host", b"a")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(raw)
    if close:
        connection.receive_data(b"")
    interim: list[int] = []
    body = b""
    head: h11.Response | None = None
    try:
        while True:
            event = connection.next_event()
            if isinstance(event, h11.InformationalResponse):
                interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                rest = connection.trailing_data[0]
                return H11Read(interim, head.status_code, list(head.headers), body,
                               list(event.headers), len(raw) - len(rest))
            else:
                return None
    except h11.ProtocolError:
        return None


def ours(raw: bytes, head_request: bool) -> Completed | None:
    """The response our parser reads first in ``raw`` fed a byte at a time, then closed."""
    log, _ = replay(raw, head_request, False, one_byte_reads(raw), close=True)
    return log.completed[0] if log.completed else None


def assert_accepted_alike(raw: bytes, head_request: bool) -> Completed | None:
    """What our parser accepts, llhttp and h11 read with the same statuses, body and end.
    (We may refuse more than they do.)"""
    read = ours(raw, head_request)
    if read is None:
        return None
    assert read.response is not None
    until_close = read.response.framing is Framing.CLOSE
    end = len(raw) if until_close else read.end_at
    by_h11 = read_by_h11(raw[:end], head_request, until_close)
    assert by_h11 is not None, (raw, head_request)
    assert (by_h11.interim, by_h11.status, by_h11.body) == (read.interim, read.status,
                                                            read.body), raw
    assert by_h11.end_at == end, raw
    assert by_h11.trailers == [(name.lower(), value) for name, value in read.trailers], raw
    messages = read_by_llhttp(raw[:end])
    assert [message.status for message in messages] == [*read.interim, read.status], raw
    final = messages[-1]
    assert final.head_at == read.head_at, raw
    if head_request:  # llhttp cannot be told a response answers HEAD: its head is enough
        return read
    assert final.body == read.body, raw
    assert final.end_at == (0 if until_close else end), raw  # llhttp ends it at the close
    return read


@FAST
@given(st.booleans(), st.data())
def test_drawn_responses_are_read_alike(head_request: bool, data: st.DataObject) -> None:
    sent = data.draw(responses(head_request))
    read = assert_accepted_alike(sent.raw, head_request)
    assert read is not None and read.status == sent.status


@pytest.mark.parametrize("seed", SEEDS)
def test_the_seeds_are_accepted_by_all_three(seed: bytes) -> None:
    assert assert_accepted_alike(seed, False) is not None
    assert assert_accepted_alike(seed, True) is not None


@settings(FAST, max_examples=300)
@given(st.sampled_from(SEEDS), st.booleans(), st.data())
def test_what_the_parser_accepts_llhttp_and_h11_read_alike(
        seed: bytes, head_request: bool, data: st.DataObject) -> None:
    assert_accepted_alike(mutated(data, seed, MEANINGFUL), head_request)


def for_the_client(read: Completed, client_http_10: bool, close: bool) -> tuple[bytes, Framing]:
    """The response as the proxy sends it on: the spliced head, its end, the body re-framed."""
    response = read.response
    assert response is not None
    framing = client_response_framing(response.framing, client_http_10)
    close = close or framing is Framing.CLOSE
    wire = response.head + head_end(response, framing, close, client_http_10)
    if framing is Framing.CHUNKED:
        wire += chunk(read.body) + last_chunk(read.trailers, request=False)
    else:
        wire += read.body
    return wire, framing


def connection_tokens(headers: Headers) -> set[bytes]:
    """The tokens of a head's Connection fields, lowercased (h11 lowercases names)."""
    return {token.strip() for name, value in headers if name == b"connection"
            for token in value.lower().split(b",")}


def assert_forwarded_cleanly(raw: bytes, read: Completed, head_request: bool,
                             client_http_10: bool, close: bool) -> None:
    """h11 reads what the client gets as the app's status and body, with no hop-by-hop
    field and exactly the one framing declaration the body is sent with."""
    assert read.response is not None
    wire, framing = for_the_client(read, client_http_10, close)
    by_h11 = read_by_h11(wire, head_request, framing is Framing.CLOSE)
    assert by_h11 is not None, (raw, wire)
    assert (by_h11.status, by_h11.body) == (read.status, read.body), (raw, wire)
    names = [name for name, _ in by_h11.headers]
    assert connection_tokens(by_h11.headers) <= {b"close", b"keep-alive"}, wire
    app = read_by_h11(raw, head_request, read.response.framing is Framing.CLOSE)
    assert app is not None  # what the parser accepts, h11 reads (checked above)
    named = connection_tokens(app.headers) - {b"close", b"keep-alive"}
    assert not (HOP_BY_HOP | named) & set(names), wire
    declared = [name for name in names if name in (b"content-length", b"transfer-encoding")]
    if framing is Framing.CHUNKED:
        assert declared == [b"transfer-encoding"], wire
    elif framing is Framing.LENGTH:
        assert declared == [b"content-length"], wire
    else:
        assert len(declared) <= 1 and b"transfer-encoding" not in declared, wire
    assert wire.count(b"\r\n\r\n", 0, wire.index(b"\r\n\r\n") + 4) == 1


@FAST
@given(st.booleans(), st.booleans(), st.booleans(), st.data())
def test_what_the_client_gets_reads_as_the_app_sent_it(
        head_request: bool, client_http_10: bool, close: bool, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        raw = data.draw(responses(head_request)).raw
    else:
        raw = mutated(data, data.draw(st.sampled_from(SEEDS)), MEANINGFUL)
    read = ours(raw, head_request)
    if read is not None:
        assert_forwarded_cleanly(raw, read, head_request, client_http_10, close)


# -- examples ----------------------------------------------------------------------------------
LONG_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Long: " + b"v" * 200
        + b"\r\nContent-Length: 2\r\n\r\n")


def test_a_head_split_anywhere_parses_the_same() -> None:
    raw = LONG_HEAD + b"ok"
    whole, _ = replay(raw, max_head_bytes=len(LONG_HEAD))
    assert [(read.status, read.body) for read in whole.completed] == [(200, b"ok")]
    for cut in range(len(raw) + 1):
        split, state = replay(raw, cuts=[cut], max_head_bytes=len(LONG_HEAD))
        assert (split.completed, state) == (whole.completed, IDLE), cut
    trickled, _ = replay(raw, cuts=one_byte_reads(raw), max_head_bytes=len(LONG_HEAD))
    assert trickled.completed == whole.completed


@pytest.mark.parametrize("size", [1, 2, 3, 5, 50, 1000])
def test_a_head_of_the_limit_passes_and_one_byte_more_is_too_large(size: int) -> None:
    cuts = list(range(size, len(LONG_HEAD), size))
    passed, _ = replay(LONG_HEAD + b"ok", cuts=cuts, max_head_bytes=len(LONG_HEAD))
    assert passed.failure is None and len(passed.completed) == 1
    refused, state = replay(LONG_HEAD + b"ok", cuts=cuts, max_head_bytes=len(LONG_HEAD) - 1)
    assert (refused.failure, refused.kinds, state) == (Failure.TOO_LARGE, [], FAILED)


@pytest.mark.parametrize("size", [1, 10, 1000])
def test_each_head_has_the_whole_limit(size: int) -> None:
    interim = head_of(len(LONG_HEAD), b"103 Early Hints", b"")
    raw = interim + LONG_HEAD + b"ok"
    log, state = replay(raw, cuts=list(range(size, len(raw), size)), max_head_bytes=len(LONG_HEAD))
    assert (log.failure, log.kinds, state) == (None, ["interim", "head", "body", "end"], IDLE)
    assert log.completed[0].body == b"ok"


def trailer_section(max_bytes: int, extra: int) -> bytes:
    """A chunked body whose trailer field lines (each with its CRLF) are ``max_bytes``
    plus ``extra`` long."""
    field_line = b"X-A: " + b"v" * (max_bytes + extra - 7)
    return CHUNKED_HEAD + b"2\r\nok\r\n0\r\n" + field_line + b"\r\n\r\n"


@pytest.mark.parametrize("reads", ["one", "two", "one-byte"])
def test_trailers_at_the_limit_pass_and_one_byte_more_is_too_large(reads: str) -> None:
    for extra, failure in ((0, None), (1, Failure.TOO_LARGE)):
        raw = trailer_section(256, extra)
        cuts = {"one": [], "two": [len(CHUNKED_HEAD) + 12], "one-byte": one_byte_reads(raw)}
        log, _ = replay(raw, cuts=cuts[reads], max_head_bytes=256)
        assert log.failure is failure
        assert len(log.completed) == (failure is None)


def test_a_huge_head_is_refused_at_the_limit_before_its_end_in_linear_time() -> None:
    """4 MiB of head in 64 KiB reads: refused by the read that takes it past the limit,
    however much follows; then the same 4 MiB in 4 KiB reads, under a limit that lets it
    all in, must cost about what one read of it costs, not a rescan per read."""
    limit, read_bytes = 1 << 20, 64 << 10
    line = b"X-Long: " + b"v" * 1000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\n" + line * ((4 << 20) // len(line))
    parser = ResponseParser(limit)
    parser.start(False, False)
    refused_at = None
    for at in range(0, len(head), read_bytes):
        parser.feed(head[at:at + read_bytes])
        try:
            assert parser.next_event() == NEED_DATA
        except BadResponse as refused:
            assert refused.failure is Failure.TOO_LARGE
            refused_at = at + read_bytes
            break
    assert refused_at == limit  # the first read that reaches it: its end cannot fit
    assert parser.receiving is FAILED
    began = time.process_time()
    parser = ResponseParser(8 << 20)
    parser.start(False, False)
    for at in range(0, len(head), 4096):
        parser.feed(head[at:at + 4096])
        assert parser.next_event() == NEED_DATA
    parser.feed(b"\r\n")
    assert parser.next_event() == HEAD_READ
    assert time.process_time() - began < 1.0  # a rescan per read: about a thousand times more


def test_what_is_not_http_is_refused_at_once() -> None:
    for not_http in (b"SSH-2.0-OpenSSH_9.2", b"HTTX", b"\x16\x03\x01"):
        parser = ResponseParser(MAX_HEAD)
        parser.start(False, False)
        parser.feed(not_http)
        with pytest.raises(BadResponse) as refused:
            parser.next_event()
        assert refused.value.failure is Failure.PROTOCOL and parser.receiving is FAILED
    held, state = replay(b"HTTP/1.1 200", cuts=one_byte_reads(b"HTTP/1.1 200"))
    assert (held.failure, state) == (None, HEAD)  # it may be a response: held


def test_bytes_after_a_complete_response_are_stray() -> None:
    for raw, head_request in ((SEEDS[0] + b"HTTP/1.1 200 OK\r\n", False),
                              (SEEDS[0], True)):  # a body sent anyway after a HEAD
        parser = ResponseParser(MAX_HEAD)
        parser.start(head_request, False)
        parser.feed(raw)
        events = []
        while (event := parser.next_event()) != NEED_DATA:
            events.append(event)
        assert events[-2:] == [END, STRAY] and parser.receiving is FAILED
        assert parser.next_event() == NEED_DATA


def test_a_head_response_ends_with_its_head_and_is_not_reused() -> None:
    log, state = replay(SEEDS[0][:SEEDS[0].index(b"hello")], head_request=True)
    assert log.kinds == ["head", "end"] and state is IDLE
    assert log.completed[0].reusable is False


def test_http_10_is_reused_only_with_keep_alive() -> None:
    for raw, reusable in ((b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
                          (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                           b"Content-Length: 0\r\n\r\n", True),
                          (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
                          (b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                           b"Content-Length: 0\r\n\r\n", False)):
        log, _ = replay(raw)
        assert [read.reusable for read in log.completed] == [reusable], raw


def test_a_body_without_framing_ends_at_the_close() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nall of it"
    log, state = replay(raw, cuts=[len(raw) - 3])
    assert (log.completed, state) == ([], UNTIL_CLOSE)
    log, state = replay(raw, cuts=[len(raw) - 3], close=True)
    assert [(read.body, read.reusable) for read in log.completed] == [(b"all of it", False)]
    assert state is IDLE


@pytest.mark.parametrize("cut", [0, 1, len(SWITCH_HEAD) - 1, len(SWITCH_HEAD),
                                 len(SWITCH_HEAD) + 3])
def test_a_requested_switch_hands_on_the_exact_tail(cut: int) -> None:
    after = b"\x81\x05hello" + SEEDS[0]
    raw = SWITCH_HEAD + after
    parser = ResponseParser(MAX_HEAD)
    parser.start(False, True)
    tails = []
    for piece in (raw[:cut], raw[cut:]):
        parser.feed(piece)
        while (event := parser.next_event()) != NEED_DATA:
            assert event == SWITCH
            tails.append(parser.tail)
    # The tail is what followed the head in the read that completed it.
    head_read_end = cut if cut >= len(SWITCH_HEAD) else len(raw)
    assert tails == [raw[len(SWITCH_HEAD):head_read_end]]
    assert parser.receiving is SWITCHED and parser.response.status == 101


def test_a_switch_nobody_asked_for_is_refused() -> None:
    log, state = replay(SWITCH_HEAD + b"\x81\x05hello")
    assert (log.failure, log.kinds, state) == (Failure.PROTOCOL, [], FAILED)


def test_trailers_at_the_limit_pass_with_the_last_crlf_cut_between_reads() -> None:
    """The empty line that ends the trailer section is not a trailer field: held across
    two reads it must not count against the limit when in one read it does not."""
    raw = trailer_section(256, 0)
    whole, _ = replay(raw, max_head_bytes=256)
    cut, _ = replay(raw, cuts=[len(raw) - 1], max_head_bytes=256)  # between its CR and LF
    assert whole.failure is None and len(whole.completed) == 1
    assert (cut.failure, cut.completed) == (whole.failure, whole.completed)


def test_the_parser_lets_go_of_a_read_once_it_is_parsed() -> None:
    """A pooled app connection must not keep its last read alive (up to 64 KiB each, and
    up to 256 pooled): by NEED_DATA the parser holds none of it."""
    parser = ResponseParser(MAX_HEAD)
    parser.start(False, False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + b"x" * 65536)
    bodies = []
    while (event := parser.next_event()) != NEED_DATA:
        if event == BODY_READ:
            bodies.append(parser.body)
    assert sum(map(len, bodies)) == 65536 and parser.reusable
    assert parser.body == b"" and parser.receiving is IDLE
