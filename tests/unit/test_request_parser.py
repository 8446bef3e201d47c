"""The request parser: where requests begin and end in a connection's bytes.

The parser decides what reaches the app, so its reading must not depend on how the
client's bytes were cut into reads, must stop for good at a refusal, and must never accept
a request that llhttp (which it replaced) or h11 (which apps use) would read otherwise.
A stateful test drives one parser with a stream of valid and invalid requests fed in
drawn reads, against a model of what was sent; differential tests compare what it
accepts with llhttp and h11; examples pin the limits and the edges of a head.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import h11
import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from proxy.http1 import http_response, request_head
from proxy.http1.http_policy import Framing, Headers, HttpError, Peer
from proxy.http1.request_parser import (
    BEGIN,
    BODY,
    BODY_READ,
    CHUNKED,
    END,
    FAILED,
    HEAD,
    HEAD_PROBE_BYTES,
    HEAD_READ,
    IDLE,
    NEED_DATA,
    NO_UPGRADE,
    Reading,
    RequestParser,
)
from proxy.limits import RequestLimits
from proxy.settings import parse_settings

from helpers import chunked_bodies, mutated
from test_bad_requests import BAD_REQUESTS

LIMITS = RequestLimits(parse_settings(["--upstream", "app:8080"], {}))
PEER = Peer(b"10.0.0.1")
FAST = settings(max_examples=200, deadline=None)
STATEFUL = settings(max_examples=100, stateful_step_count=30, deadline=None)
NAMES = {BEGIN: "begin", HEAD_READ: "head", BODY_READ: "body", END: "end"}
# What may follow each event within one connection (None: nothing yet).
NEXT_EVENTS: dict[int | None, frozenset[int]] = {
    None: frozenset({BEGIN}),
    BEGIN: frozenset({HEAD_READ}),
    HEAD_READ: frozenset({BODY_READ, END}),
    BODY_READ: frozenset({BODY_READ, END}),
    END: frozenset({BEGIN}),
}


def new_parser() -> RequestParser:
    return RequestParser(LIMITS, PEER, b"app:8080")


@dataclass
class Completed:
    """One request the parser read to its END: what would be forwarded."""

    method: bytes
    target: bytes
    head: bytes
    body: bytes
    trailers: Headers
    keep_alive: bool


@dataclass
class Log:
    """Everything one parser reported, checked event by event as it comes."""

    kinds: list[str] = field(default_factory=list)  # consecutive body events merged
    completed: list[Completed] = field(default_factory=list)
    begins: int = 0
    status: int | None = None
    last: int | None = None
    body: bytes = b""

    def take(self, parser: RequestParser, event: int) -> None:
        """Record one event, asserting it may come after the one before."""
        assert self.status is None, "an event after a refusal"
        assert event in NEXT_EVENTS[self.last], (NAMES.get(self.last or 0), NAMES[event])
        self.last = event
        if not self.kinds or self.kinds[-1] != NAMES[event] or event != BODY_READ:
            self.kinds.append(NAMES[event])
        if event == BEGIN:
            self.begins += 1
        elif event == HEAD_READ:
            self.body = b""
        elif event == BODY_READ:
            assert parser.body, "an empty body piece"
            self.body += parser.body
        elif event == END:
            request = parser.request
            self.completed.append(Completed(request.method, request.target, request.head,
                                            self.body, list(parser.trailers),
                                            request.client_keep_alive))

    def read(self, parser: RequestParser, data: bytes) -> None:
        """Feed one read and take its events; a refusal is recorded, and after it the
        parser reports nothing more, whatever it is fed."""
        parser.feed(data)
        if self.status is not None:
            assert parser.next_event() == NEED_DATA
            return
        try:
            while (event := parser.next_event()) != NEED_DATA:
                self.take(parser, event)
        except HttpError as error:
            self.status = error.status
            assert parser.reading is FAILED
            assert parser.next_event() == NEED_DATA, "parsed on after a refusal"


def replay(raw: bytes, cuts: list[int] | None = None) -> tuple[Log, Reading]:
    """Feed ``raw`` to a new parser in reads split at ``cuts``."""
    parser = new_parser()
    log = Log()
    bounds = [0, *sorted(set(cuts or [])), len(raw)]
    for start, end in itertools.pairwise(bounds):
        log.read(parser, raw[start:end])
    return log, parser.reading


# -- requests, as sent and as they must be read -------------------------------------------
@dataclass(frozen=True)
class Sent:
    """A valid request's bytes and what the parser must read in them."""

    raw: bytes
    method: bytes
    target: bytes
    body: bytes = b""
    trailers: tuple[tuple[bytes, bytes], ...] = ()


TARGETS = st.sampled_from([b"/", b"/a?b=1", b"/p/q.html", b"/%20x;y", b"/s?x=%00&y"])
BODIES = st.binary(max_size=40)


@st.composite
def gets(draw: st.DrawFn) -> Sent:
    target = draw(TARGETS)
    extra = draw(st.sampled_from([b"", b"Accept: */*\r\n", b"Connection: close\r\n"]))
    return Sent(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n", b"GET",
                target)


@st.composite
def posts_with_length(draw: st.DrawFn) -> Sent:
    target, body = draw(TARGETS), draw(BODIES)
    head = b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (target, len(body))
    return Sent(head + body, b"POST", target, body)


@st.composite
def chunked_posts(draw: st.DrawFn) -> Sent:
    target = draw(TARGETS)
    wire, data, trailers = draw(chunked_bodies())
    head = b"POST " + target + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    return Sent(head + wire, b"POST", target, data, trailers)


@st.composite
def http_10_requests(draw: st.DrawFn) -> Sent:
    target, body = draw(TARGETS), draw(BODIES)
    keep = draw(st.sampled_from([b"", b"Connection: keep-alive\r\n"]))
    if not body:
        return Sent(b"GET " + target + b" HTTP/1.0\r\n" + keep + b"\r\n", b"GET", target)
    head = b"PUT %s HTTP/1.0\r\n%sContent-Length: %d\r\n\r\n" % (target, keep, len(body))
    return Sent(head + body, b"PUT", target, body)


VALID = st.one_of(gets(), posts_with_length(), chunked_posts(), http_10_requests())
CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
# Complete malformed requests, each refused once all of it is read, with its status.
INVALID = [
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (CHUNKED_HEAD + b"zz\r\n", 400),
    (CHUNKED_HEAD + b"1\r\nab\r\n0\r\n\r\n", 400),
    (CHUNKED_HEAD + b"1 ;a\r\na\r\n0\r\n\r\n", 400),
    (CHUNKED_HEAD + b"0\r\nX : y\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-\x01: 1\r\n\r\n", 400),
]
EMPTY_LINES = [b"\r\n", b"\r\n\r\n", b"\n"]


# -- the stateful test ----------------------------------------------------------------------
class ParserModel(RuleBasedStateMachine):
    """One connection's parser, fed a stream of requests in drawn reads."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = new_parser()
        self.log = Log()
        self.stream = b""
        self.fed = 0
        # The valid requests before the first invalid one, with where they lie.
        self.sent: list[tuple[int, int, Sent]] = []
        self.invalid: tuple[int, int, int] | None = None  # start, end, status

    def _append_valid(self, *requests: Sent) -> None:
        for request in requests:
            start = len(self.stream)
            self.stream += request.raw
            if self.invalid is None:
                self.sent.append((start, len(self.stream), request))

    @rule(request=gets())
    def get(self, request: Sent) -> None:
        self._append_valid(request)

    @rule(request=posts_with_length())
    def post_with_length(self, request: Sent) -> None:
        self._append_valid(request)

    @rule(request=chunked_posts())
    def chunked_post(self, request: Sent) -> None:
        self._append_valid(request)

    @rule(request=http_10_requests())
    def http_10(self, request: Sent) -> None:
        self._append_valid(request)

    @rule(requests=st.lists(VALID, min_size=2, max_size=4))
    def pipelined(self, requests: list[Sent]) -> None:
        self._append_valid(*requests)

    @rule(lines=st.sampled_from(EMPTY_LINES))
    def empty_lines(self, lines: bytes) -> None:
        self.stream += lines

    @rule(bad=st.sampled_from(INVALID))
    def invalid_request(self, bad: tuple[bytes, int]) -> None:
        start = len(self.stream)
        self.stream += bad[0]
        if self.invalid is None:
            self.invalid = (start, len(self.stream), bad[1])

    @precondition(lambda self: self.fed < len(self.stream))
    @rule(size=st.integers(1, 80))
    def read(self, size: int) -> None:
        end = min(len(self.stream), self.fed + size)
        self.log.read(self.parser, self.stream[self.fed:end])
        self.fed = end

    @precondition(lambda self: self.fed < len(self.stream))
    @rule()
    def read_the_rest(self) -> None:
        self.log.read(self.parser, self.stream[self.fed:])
        self.fed = len(self.stream)

    @invariant()
    def every_complete_valid_request_fed_was_read_as_sent(self) -> None:
        fed_whole = [sent for start, end, sent in self.sent if end <= self.fed]
        assert len(self.log.completed) == len(fed_whole)
        for read, sent in zip(self.log.completed, fed_whole, strict=True):
            assert (read.method, read.target, read.body) == (sent.method, sent.target, sent.body)
            assert tuple(read.trailers) == sent.trailers

    @invariant()
    def refused_at_the_first_invalid_request(self) -> None:
        if self.invalid is None or self.fed <= self.invalid[0]:
            assert self.log.status is None
            return
        _, end, status = self.invalid
        if self.fed >= end:
            assert self.log.status == status
        else:  # refused early or not yet, but never with another status
            assert self.log.status in (None, status)

    @invariant()
    def reading_state_matches_the_stream(self) -> None:
        if self.log.status is not None:
            assert self.parser.reading is FAILED
            return
        inside = any(start < self.fed < end for start, end, _ in self.sent) or (
            self.invalid is not None and self.invalid[0] < self.fed)
        if inside:
            assert self.parser.reading in (HEAD, BODY, CHUNKED)
            assert self.log.begins == len(self.log.completed) + 1
        else:
            assert self.parser.reading is IDLE
            assert self.log.begins == len(self.log.completed)


def test_parser_model() -> None:
    run_state_machine_as_test(ParserModel, settings=STATEFUL)


@pytest.mark.slow
@pytest.mark.timeout(900)  # about two minutes here; the default 60 s is for the quick run
def test_parser_model_long() -> None:
    run_state_machine_as_test(ParserModel, settings=settings(STATEFUL, max_examples=5000))


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Valid requests pipelined, between empty lines, perhaps with an invalid one."""
    pieces = [request.raw for request in draw(st.lists(VALID, min_size=1, max_size=4))]
    if draw(st.booleans()):
        pieces.insert(draw(st.integers(0, len(pieces))), draw(st.sampled_from(INVALID))[0])
    for _ in range(draw(st.integers(0, 2))):
        pieces.insert(draw(st.integers(0, len(pieces))), draw(st.sampled_from(EMPTY_LINES)))
    return b"".join(pieces)


@FAST
@given(st.data())
def test_the_reading_does_not_depend_on_the_reads(data: st.DataObject) -> None:
    raw = data.draw(streams())
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    whole, whole_state = replay(raw)
    split, split_state = replay(raw, cuts)
    assert split.completed == whole.completed
    assert (split.status, split_state) == (whole.status, whole_state)
    # Of a request refused after its head, the pieces of body before the refusal are
    # reported as they arrive: only those events may differ.
    assert settled(split.kinds) == settled(whole.kinds)


def settled(kinds: list[str]) -> tuple[list[str], list[str]]:
    """The events up to the last END, and the others without body events."""
    ended = len(kinds) - kinds[::-1].index("end") if "end" in kinds else 0
    return kinds[:ended], [kind for kind in kinds[ended:] if kind != "body"]


# -- differential: what the parser accepts, llhttp and h11 read alike ------------------------
def read_by_llhttp(raw: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(method, target, body) of each request llhttp completes before an error."""

    class Collector:
        def __init__(self) -> None:
            self.read: list[tuple[bytes, bytes, bytes]] = []
            self.url = self.body = b""

        def on_message_begin(self) -> None:
            self.url = self.body = b""

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.read.append((parser.get_method(), self.url, self.body))

    collector = Collector()
    parser = httptools.HttpRequestParser(collector)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        parser.feed_data(raw)
    return collector.read


def read_by_h11(raw: bytes) -> list[tuple[bytes, bytes, bytes, Headers]]:
    """(method, target, body, trailers) of each request h11 completes before an error.

    Each request is read by a new connection, from what the one before left, with empty
    lines before it removed: h11 refuses them ("no request line received") where RFC 9112
    section 2.2 and llhttp skip them, and the proxy forwards no such line."""
    read: list[tuple[bytes, bytes, bytes, Headers]] = []
    rest = raw
    while rest := rest.lstrip(b"\r\n"):
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(rest)
        try:
            request = connection.next_event()
            if not isinstance(request, h11.Request):
                return read
            body = b""
            while isinstance(event := connection.next_event(), h11.Data):
                body += event.data
        except h11.ProtocolError:
            return read
        if not isinstance(event, h11.EndOfMessage):
            return read
        read.append((request.method, request.target, body, list(event.headers)))
        rest = connection.trailing_data[0]
    return read


SEEDS = [
    b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    CHUNKED_HEAD + b"3;e=1\r\nabc\r\n0\r\n\r\n",
    CHUNKED_HEAD + b"1;a=\"q\\\"s\"\r\nz\r\n0\r\nX-T: 1\r\nY: a b\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /u HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
    b"\r\nDELETE /d HTTP/1.1\r\nHost: x\r\nX-A:b\r\n\r\n",
]
MEANINGFUL = b"\r\n :;,\t\"\\=\x00\x7f-+0123456789aAfFxX_"


@FAST
@given(st.data())
def test_mutated_streams_are_accepted_or_refused_however_split(data: st.DataObject) -> None:
    """Requests with mutations, split anywhere: the same requests read, the same refusal
    or none.  (A request with two faults may be refused with either's status: the
    bytes seen so far are checked before the request line is read whole.)"""
    raw = b"".join(data.draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3)))
    raw = mutated(data, raw, MEANINGFUL)
    whole, whole_state = replay(raw)
    split, split_state = replay(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    assert split.completed == whole.completed
    assert (split.status is None, split_state) == (whole.status is None, whole_state)


def assert_accepted_alike(raw: bytes, cuts: list[int]) -> None:
    """Each request the parser completes, up to one that ends the connection, is read
    with the same method, target and body by llhttp and h11 (and trailers by h11)."""
    log, _ = replay(raw, cuts)
    accepted = list(itertools.takewhile(lambda read: read.keep_alive, log.completed))
    accepted += log.completed[len(accepted):len(accepted) + 1]
    by_llhttp, by_h11 = read_by_llhttp(raw), read_by_h11(raw)
    assert len(by_llhttp) >= len(accepted), (raw, by_llhttp)
    assert len(by_h11) >= len(accepted), (raw, by_h11)
    for ours, theirs, h11s in zip(accepted, by_llhttp, by_h11, strict=False):
        assert (ours.method, ours.target, ours.body) == theirs, raw
        trailers = [(name.lower(), value) for name, value in ours.trailers]
        assert (ours.method, ours.target, ours.body, trailers) == h11s, raw


def test_the_seeds_are_accepted_by_all_three() -> None:
    for seed in SEEDS:
        log, _ = replay(seed)
        assert len(log.completed) == 1 and log.status is None, seed
        assert_accepted_alike(seed, [])


@FAST
@given(st.data())
def test_what_the_parser_accepts_llhttp_and_h11_read_alike(data: st.DataObject) -> None:
    raw = b"".join(data.draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3)))
    raw = mutated(data, raw, MEANINGFUL)
    assert_accepted_alike(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=4)))


@FAST
@given(st.lists(VALID, min_size=1, max_size=3), st.data())
def test_drawn_valid_requests_are_read_alike(requests: list[Sent], data: st.DataObject) -> None:
    raw = b"".join(request.raw for request in requests)
    log, _ = replay(raw)
    assert log.status is None and len(log.completed) == len(requests)
    assert_accepted_alike(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=4)))


# Requests at the edges of what the three parsers read: each is refused, or read alike.
EDGES = {
    "length-leading-zeros": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0005\r\n\r\nhello",
    "length-no-ows": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length:5 \r\n\r\nhello",
    "te-capitalised": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
                      b"2\r\nhi\r\n0\r\n\r\n",
    "te-trailing-space": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n"
                         b"2\r\nhi\r\n0\r\n\r\n",
    "te-trailing-tab": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n"
                       b"2\r\nhi\r\n0\r\n\r\n",
    "te-leading-tab": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n"
                      b"2\r\nhi\r\n0\r\n\r\n",
    "obs-text-value": b"GET /x HTTP/1.1\r\nHost: a\r\nX: \x80\xff\t y \r\n\r\n",
    "ipv6-host": b"HEAD /h HTTP/1.1\r\nHost: [::1]:8\r\nContent-Length: 1\r\n\r\nz",
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_edge_requests_are_refused_or_read_alike(name: str) -> None:
    assert_accepted_alike(EDGES[name], [])


def refusal(raw: bytes, cuts: list[int]) -> int | None:
    """The status a connection refuses ``raw`` with, read in reads split at ``cuts``: the
    parser's, or at a chunked request's END the trailer check the connection makes then
    (``http_response.last_chunk``: framing fields in request trailers are refused)."""
    parser = new_parser()
    bounds = [0, *sorted(set(cuts)), len(raw)]
    try:
        for start, end in itertools.pairwise(bounds):
            parser.feed(raw[start:end])
            while (event := parser.next_event()) != NEED_DATA:
                if event == END and parser.request.framing is Framing.CHUNKED:
                    http_response.last_chunk(parser.trailers, request=True)
    except HttpError as error:
        return error.status
    return None


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_are_refused_with_400(name: str) -> None:
    raw = BAD_REQUESTS[name]
    assert refusal(raw, []) == 400
    assert refusal(raw, list(range(len(raw)))) == 400  # one byte a read


# -- examples ------------------------------------------------------------------------------
def test_a_head_trickled_a_byte_at_a_time_reads_as_whole() -> None:
    raw = SEEDS[3] + SEEDS[1]
    whole, _ = replay(raw)
    trickled, state = replay(raw, list(range(len(raw))))
    assert trickled.completed == whole.completed and len(whole.completed) == 2
    assert trickled.kinds == whole.kinds and state is IDLE
    parser = new_parser()
    parser.feed(b"G")
    assert parser.next_event() == BEGIN and parser.reading is HEAD  # in flight from byte one
    assert parser.next_event() == NEED_DATA


def test_a_bare_lf_head_is_refused_at_its_first_lf() -> None:
    raw = b"GET / HTTP/1.1\nHost: a\n\n"
    parser = new_parser()
    log = Log()
    for at in range(len(raw)):
        log.read(parser, raw[at:at + 1])
        if log.status is not None:
            break
    assert (log.status, at) == (400, raw.index(b"\n"))  # never waits for more


def test_a_request_line_past_its_limit_is_414_before_its_end() -> None:
    longest = LIMITS.max_request_line_bytes + request_head.REQUEST_LINE_EXTRA
    line = b"GET /" + b"a" * (longest - 5)
    parser = new_parser()
    parser.feed(line)
    assert parser.next_event() == BEGIN and parser.next_event() == NEED_DATA
    parser.feed(b"a")
    with pytest.raises(HttpError) as refused:
        parser.next_event()
    assert refused.value.status == 414 and parser.reading is FAILED


def test_fields_past_the_head_limit_are_431_before_the_end() -> None:
    """Past the limit by more than a head's end could add, the head is refused at once."""
    over = b"GET / HTTP/1.1\r\nX: " + b"v" * LIMITS.max_header_bytes
    for cuts in ([], list(range(0, len(over), 1000))):
        log, state = replay(over, cuts)
        assert (log.status, log.begins, state) == (431, 1, FAILED)


def head_at_the_limit() -> bytes:
    """A request whose fields (each with the CRLF before it) are max_header_bytes long."""
    line = b"GET / HTTP/1.1"
    fields = b"\r\nHost: a\r\nX: "
    fields += b"v" * (LIMITS.max_header_bytes - len(fields))
    return line + fields + b"\r\n\r\n"


@pytest.mark.parametrize("from_end", [0, 1, 2, 3, 4])
def test_a_head_at_the_limit_is_accepted_however_split(from_end: int) -> None:
    """Accepted in one read, so in any reads: a cut inside its final CRLF CRLF included."""
    raw = head_at_the_limit()
    log, _ = replay(raw, [len(raw) - from_end])
    assert (log.status, len(log.completed)) == (None, 1)


@pytest.mark.parametrize("end_at", range(HEAD_PROBE_BYTES - 5, HEAD_PROBE_BYTES + 2))
def test_a_head_ending_across_the_probe_is_found(end_at: int) -> None:
    """A large read is searched for the head's end in two steps (a probe, then the rest):
    an end cut by the probe's edge is found, and the body after it is read whole."""
    start = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX: "
    raw = start + b"v" * (end_at - len(start)) + b"\r\n\r\nabc" + SEEDS[0]
    assert raw.index(b"\r\n\r\n") == end_at
    for cuts in ([], [1], [len(raw) - 10]):
        log, state = replay(raw, cuts)
        assert [read.body for read in log.completed] == [b"abc", b""]
        assert (log.status, state) == (None, IDLE)


def test_empty_lines_before_a_request_are_skipped() -> None:
    parser = new_parser()
    log = Log()
    for read in (b"\r\n", b"\r", b"\n\n\r\n"):
        log.read(parser, read)
        assert parser.reading is IDLE and log.begins == 0
    log.read(parser, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n" + SEEDS[1])
    assert [read.target for read in log.completed] == [b"/", b"/p"]
    assert parser.reading is IDLE and log.status is None


def test_an_upgrade_request_stops_parsing_at_its_end() -> None:
    head = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    parser = new_parser()
    parser.feed(head + b"\x81\x05hello" + SEEDS[0])
    assert [parser.next_event() for _ in range(3)] == [BEGIN, HEAD_READ, END]
    assert parser.request.upgrade and parser.upgrade_at == len(head)
    assert parser.next_event() == NEED_DATA and parser.reading is IDLE
    parser.feed(SEEDS[0])  # the app refused the upgrade: HTTP goes on
    assert parser.upgrade_at == NO_UPGRADE
    assert [parser.next_event() for _ in range(4)] == [BEGIN, HEAD_READ, END, NEED_DATA]
    assert parser.request.target == b"/a?b=1"


def test_the_line_memos_stay_bounded_and_lines_are_still_checked() -> None:
    log = Log()
    parser = new_parser()
    for number in range(5000):
        log.read(parser, b"GET /p%d HTTP/1.1\r\nHost: a\r\nX-N: %d\r\n\r\n" % (number, number))
        assert len(request_head._request_lines) <= 4096
        assert len(request_head._field_lines) <= 4096
    assert log.status is None and len(log.completed) == 5000
    for number in (0, 4095, 4999):  # forgotten or remembered, a line reads the same
        read = log.completed[number]
        assert read.target == b"/p%d" % number
        assert b"\r\nX-N: %d\r\n" % number in read.head
    for bad in (b"GET /p0 HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",  # the Host line seen
                b"GET /p0 HTTP/1.1\r\nHost: a\r\nX-N : 0\r\n\r\n"):
        assert replay(bad)[0].status == 400
    again, _ = replay(b"GET /p1 HTTP/1.1\r\nHost: a\r\nX-N: 1\r\n\r\n")
    assert again.completed == log.completed[1:2]


def test_the_parser_lets_go_of_a_read_once_it_is_parsed() -> None:
    """An idle keep-alive connection must not keep its last read or body piece alive (up
    to 64 KiB each): by NEED_DATA the parser holds none of it."""
    parser = new_parser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n" + b"x" * 65536)
    bodies = []
    while (event := parser.next_event()) != NEED_DATA:
        if event == BODY_READ:
            bodies.append(parser.body)
    assert sum(map(len, bodies)) == 65536
    assert parser.body == b"" and parser.reading is IDLE
