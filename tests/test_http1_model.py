"""A model-based test of one HTTP/1.1 client connection and the app connections it uses.

Hypothesis drives the real ``ClientConnection`` and ``UpstreamConnection`` through fake
transports (``support.fake_transports``) on a virtual-clock loop
(``support.virtual_clock``): a client that sends scripted requests split at any points,
pipelines, half-closes, stops reading and goes away; an app that answers whole, early,
in parts, close-delimited, with 100 Continue or 101, or resets; time that passes past
every timeout; the drain.  After every step the model checks what must always hold
(``Http1Model``'s invariants), from the outside only: the bytes each side got, parsed
with h11, and the connections' public state.  A shrunk failing sequence is a defect to
keep as a plain test.

asyncio's loop only: uvloop's clock cannot be made virtual, and a real clock would make
the timeouts either slow or flaky.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from prometheus_client import Counter

from proxy.http1.client import ClientConnection
from proxy.http1.client_state import ClientState
from proxy.http1.upstream import UpstreamConnection
from proxy.http1.upstream_state import UpstreamState
from proxy.http2.frames import PREFACE

from support.fake_transports import FakeTransport, Harness
from support.virtual_clock import VirtualClockLoop

C, U = ClientState, UpstreamState
FLAGS = ("--header-timeout", "1", "--idle-timeout", "2", "--body-timeout", "1",
         "--upstream-timeout", "1")
# No app listens here: a connect the proxy tries fails at once, and is counted.
NO_APP = str(Path(tempfile.gettempdir()) / "drain-proxy-model-no-app" / "app.sock")

# What the client sends; {n} is the connection's and the request's number, its target,
# so that what the app got can be matched with what the client got back.
REQUESTS: dict[str, bytes] = {
    "get": b"GET /{n} HTTP/1.1\r\nHost: a\r\n\r\n",
    "get_close": b"GET /{n} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "post": b"POST /{n} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "post_continue": b"POST /{n} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\nhello",
    "chunked": b"POST /{n} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n",
    "chunked_trailers": b"POST /{n} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
    "chunked_bad_trailer": b"POST /{n} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                           b"\r\n5\r\nhello\r\n0\r\nContent_Length: 5\r\n\r\n",
    "upgrade": b"GET /{n} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\n\r\n",
    "malformed": b"GET /{n} HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                 b"Content-Length: 2\r\n\r\n",
}
# After these the client sends nothing more on the connection.
LAST_REQUESTS = frozenset({"get_close", "malformed", "chunked_bad_trailer"})

# What the app answers (the busy app connection, to the request it has).
ANSWERS: dict[str, bytes] = {
    "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "ok_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "ok_close": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    "close_delimited": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    "continue_then_ok": b"HTTP/1.1 100 Continue\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "switch": b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\n\r\nfrom the app",
    "refused": b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno",
}
TURNS = 4  # loop turns after each step: deep enough for a close's connection_lost to follow
BUSY_APP = frozenset({U.SENDING, U.AWAITING, U.EARLY, U.RECEIVING})
SERVING = frozenset({C.FRESH, C.IDLE, C.ACTIVE, C.PIPELINE_PAUSED, C.UPGRADE_PENDING})


# How much of what it has to send a peer sends in one step: all, up to the end of the
# next head, or a number of bytes.
Part = str | int
PART = st.one_of(st.sampled_from(["all", "head"]), st.integers(1, 120))
CUTS = st.lists(st.integers(1, 119), max_size=3)  # where the step's bytes split into reads


def amount(part: Part, left: int, head: int | None) -> int:
    """How many of the ``left`` bytes to send for ``part`` (``head``: to a head's end)."""
    if isinstance(part, int):
        return min(left, part)
    if part == "head" and head is not None:
        return min(left, head)
    return left


@dataclass
class Request:
    """One request in the client's byte stream: where it starts, ends its head, ends."""

    kind: str
    target: str
    start: int
    head_end: int
    end: int
    held: bool = False  # sent after an Upgrade request the app has not answered yet
    void: bool = False  # sent after an Upgrade the app accepted: tunnel bytes, not a request


@dataclass
class Response:
    status: int
    close: bool
    complete: bool = False


@dataclass
class AppSide:
    """One app connection and what the model read of the requests it got."""

    protocol: UpstreamConnection
    transport: FakeTransport
    parser: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER))
    read: int = 0  # bytes of transport.written fed to the parser
    targets: list[str] = field(default_factory=list)  # requests begun, in order
    whole: list[str] = field(default_factory=list)  # requests received whole
    tunnel: bool = False  # switched protocols: the rest is not HTTP
    out: bytes = b""  # the rest of an answer the app is sending in parts
    answers: int = 0  # answers the app began

    @property
    def live(self) -> bool:
        return not self.transport.closed

    @property
    def partial(self) -> bool:
        """It holds part of a request: a head begun, or a body not ended."""
        if self.tunnel:
            return False
        state = self.parser.their_state
        return state is h11.SEND_BODY or (state is h11.IDLE and bool(self.parser.trailing_data[0]))


class LogErrors(logging.Handler):
    """Keeps what the proxy or asyncio logged as an error or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(f"{record.name}: {record.getMessage()}")


class Http1Model(RuleBasedStateMachine):
    """The client, the app and time act in any order; the invariants hold after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualClockLoop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(self.loop_error)
        self.logged = LogErrors()
        for name in ("drain_proxy", "asyncio"):
            logging.getLogger(name).addHandler(self.logged)

        async def make() -> Harness:
            return Harness(set(), *FLAGS, "--upstream", f"unix:{NO_APP}")

        self.h = self.loop.run_until_complete(make())
        self.apps: list[AppSide] = []
        self.adopt_apps()
        self.drain_begun = self.window_over = self.cut_done = False  # once a run
        self.may_close = False  # this step may close the client connection without a word
        self.closed_before = False
        self.clients = 1
        self.prompt_answer: str | None = None  # an answer the app gives every request at once
        self.client_starts()

    @initialize(prompt=st.sampled_from([None, None, "ok", "ok_chunked"]))
    def app_kind(self, prompt: str | None) -> None:
        """A slow app answers only when the model says so (``app_answers``); a prompt one
        also answers every whole request at once, so that keep-alive goes on."""
        self.prompt_answer = prompt

    def client_starts(self) -> None:
        """What the model knows of the client connection, from its start."""
        self.stream = bytearray()  # everything the client means to send, in order
        self.sent = 0  # how much of it the proxy was handed
        self.requests: list[Request] = []
        self.client_done = False  # sent its last request, or half-closed
        self.client_eof = False
        self.client_full = False
        self.dropped = 0  # requests with half a head when the client half-closed
        self.responses: list[Response] = []
        self.client_parser = h11.Connection(h11.CLIENT)
        self.client_read = 0
        self.client_switched = False

    def loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        """What reached the loop's handler, with where it was raised."""
        error = context.get("exception")
        where = ""
        if isinstance(error, BaseException):
            where = "".join(traceback.format_exception(error)[-4:])
        self.loop_errors.append(f"{context['message']}: {where}")

    # -- plumbing ---------------------------------------------------------------------------
    def act(self, action: Callable[[], object], may_close: bool = False,
            top_up: bool = True) -> None:
        """Do ``action`` on the loop, then let the loop run what it scheduled."""
        self.closed_before = self.client_side.closed or self.client_side.eof_written
        self.may_close = may_close

        async def step() -> None:
            action()
            for _ in range(TURNS):  # what the action scheduled (connection_lost after a close)
                await asyncio.sleep(0)

        self.loop.run_until_complete(step())
        if top_up:
            self.top_up_pool()
        self.observe()
        if top_up:
            self.prompt_app_answers()
            if self.state is C.CLOSED:
                self.next_client_connects()

    def prompt_app_answers(self) -> None:
        """A prompt app answers a whole request at once, in the same step."""
        app = self.busy_app()
        if (self.prompt_answer is None or app is None or app.out or app.answers >= len(app.whole)
                or not self.app_can_send(app)):
            return
        app.answers += 1
        app.out = ANSWERS[self.prompt_answer]
        self.app_sends(app, len(app.out), [])

    def observe(self) -> None:
        """Read what both sides got (before the invariants look)."""
        self.read_client_side()
        for app in self.apps:
            self.read_app_side(app)

    def top_up_pool(self) -> None:
        """Keep one idle app connection in the pool, so the proxy never has to connect."""
        if not any(a.live and a.protocol.machine.state is U.IDLE for a in self.apps):
            async def pool_one() -> None:
                self.h.pool_app()

            self.loop.run_until_complete(pool_one())
        self.adopt_apps()

    def adopt_apps(self) -> None:
        for protocol, transport in self.h.apps[len(self.apps):]:
            self.apps.append(AppSide(protocol, transport))

    def teardown(self) -> None:
        """End every connection, and close the loop whatever happened."""
        for name in ("drain_proxy", "asyncio"):
            logging.getLogger(name).removeHandler(self.logged)

        async def close_all() -> None:
            if not self.client_side.closed:
                self.client_side.peer_lost(None)
            for app in self.apps:
                if app.live:
                    app.transport.close()

        try:
            self.loop.run_until_complete(close_all())
            self.loop.turn()
        finally:
            self.loop.close()

    @property
    def client(self) -> object:
        return self.h.client

    @property
    def client_side(self) -> FakeTransport:
        return self.h.client_side

    @property
    def state(self) -> ClientState:
        return self.h.client.machine.state

    def busy_app(self) -> AppSide | None:
        """The app connection with an exchange in progress, if any (one at a time)."""
        busy = [a for a in self.apps if a.live and a.protocol.machine.state in BUSY_APP]
        assert len(busy) <= 1, f"{len(busy)} app connections busy for one client"
        return busy[0] if busy else None

    @property
    def client_can_send(self) -> bool:
        return (not self.client_side.closed and self.client_side.reading
                and not self.client_eof and not self.client_switched)

    # -- the client -------------------------------------------------------------------------
    def next_client_connects(self) -> None:
        """The connection is over: check it once more as it was, then a new one comes (to
        the same proxy and app pool), so that no step of a run is spent on a dead one."""
        for check in (self.requests_in_flight_are_counted,
                      self.every_request_at_the_app_is_answered_once, self.no_silent_close):
            check()
        self.clients += 1
        self.client_starts()

        async def connect() -> None:
            self.h.client = ClientConnection(self.h.ctx)
            self.h.client_side = FakeTransport(self.h.client)
            self.h.client.connection_made(self.h.client_side)  # type: ignore[arg-type]

        self.loop.run_until_complete(connect())
        self.closed_before = False

    @precondition(lambda self: not self.client_done and not self.client_side.closed)
    @rule(kinds=st.lists(st.sampled_from(sorted(REQUESTS)), min_size=1, max_size=3),
          part=PART, cuts=CUTS)
    def client_requests(self, kinds: list[str], part: Part, cuts: list[int]) -> None:
        """The client sends these requests (pipelined when more than one): all of what it
        has to send, up to the end of a head, or some bytes, in several reads."""
        for kind in kinds:
            if self.client_done:
                break
            number = f"{self.clients}-{len(self.requests)}"
            data = REQUESTS[kind].replace(b"{n}", number.encode())
            start = len(self.stream)
            self.stream += data
            head_end = start + data.index(b"\r\n\r\n") + 4
            self.requests.append(Request(kind, f"/{number}", start, head_end, len(self.stream)))
            self.client_done = kind in LAST_REQUESTS
        self.client_sends(part, cuts)

    @precondition(lambda self: self.sent < len(self.stream) and self.client_can_send)
    @rule(part=PART, cuts=CUTS)
    def client_sends_more(self, part: Part, cuts: list[int]) -> None:
        """More of what the client has to send arrives."""
        self.client_sends(part, cuts)

    def client_sends(self, part: Part, cuts: list[int]) -> None:
        heads = [r.head_end for r in self.requests if r.head_end > self.sent]
        end = self.sent + amount(part, len(self.stream) - self.sent,
                                 heads[0] - self.sent if heads else None)
        points = sorted({self.sent, end, *(self.sent + c for c in cuts if self.sent + c < end)})
        for begin, stop in itertools.pairwise(points):
            if not self.client_can_send:
                break  # the proxy stopped reading: the rest waits in the socket
            piece = bytes(self.stream[begin:stop])
            self.note_held(begin, stop)
            self.sent = stop
            self.act(lambda piece=piece: self.h.client.data_received(piece))  # type: ignore[misc]

    def note_held(self, begin: int, stop: int) -> None:
        """Bytes past an Upgrade request the app has not answered are held, not parsed."""
        pending_upgrade = False
        for index, request in enumerate(self.requests):
            if request.start >= stop:
                break
            if pending_upgrade and request.start >= begin:
                request.held = True
            if request.kind == "upgrade" and not self.answered(index):
                pending_upgrade = True

    def answered(self, index: int) -> bool:
        """Whether the request numbered ``index`` got its (final or 101) response."""
        live = [i for i, r in enumerate(self.requests) if not r.void]
        done = [r for r in self.responses if r.complete]
        return index in live[:len(done)]

    @precondition(lambda self: not self.client_side.closed)
    @rule(how=st.sampled_from(["half-close", "close", "reset"]))
    def client_ends(self, how: str) -> None:
        """The client half-closes (as soon as the proxy reads), closes or resets."""
        if how != "half-close":
            error = ConnectionResetError() if how == "reset" else None
            self.act(lambda: self.client_side.peer_lost(error), may_close=True)
        elif self.client_side.reading and not self.client_eof:
            tail = self.started_requests()
            if tail and self.sent < tail[-1].head_end and not tail[-1].held:
                self.dropped += 1  # half a head: nothing to answer
            self.client_eof = self.client_done = True
            self.act(self.client_side.peer_eof, may_close=True)

    @precondition(lambda self: not self.client_side.closed and bool(self.client_side.written))
    @rule()
    def client_socket_fills_or_drains(self) -> None:
        """The client stops reading what we write (its socket fills), or reads it all."""
        self.client_full = not self.client_full
        self.client_side.buffered = 65536 if self.client_full else 0
        # The transport's protocol: after a 101 it is the tunnel's end, not the connection.
        protocol = self.client_side.protocol
        assert isinstance(protocol, asyncio.BaseProtocol)
        self.act(protocol.pause_writing if self.client_full else protocol.resume_writing)

    # -- the app ----------------------------------------------------------------------------
    def app_can_send(self, app: AppSide | None) -> bool:
        return app is not None and app.live and app.transport.reading

    @precondition(lambda self: self.app_can_send(self.busy_app()))
    @rule(answer=st.sampled_from(sorted(ANSWERS)), part=PART, cuts=CUTS)
    def app_answers(self, answer: str, part: Part, cuts: list[int]) -> None:
        """The app answers the request it has (maybe before it has all of it): all of the
        answer, up to the end of its head, or some bytes, in several reads."""
        app = self.busy_app()
        assert app is not None
        if not app.out:
            app.answers += 1
            app.out = ANSWERS[answer]
        status = app.out.rfind(b"HTTP/1.1 ")
        head = app.out.find(b"\r\n\r\n", status) + 4 if status >= 0 else None
        self.app_sends(app, amount(part, len(app.out), head), cuts)

    def app_sends(self, app: AppSide, size: int, cuts: list[int]) -> None:
        data = app.out[:size]
        points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        for begin, stop in itertools.pairwise(points):
            if not self.app_can_send(app):
                return  # the proxy stopped reading: the rest waits
            piece, app.out = app.out[:stop - begin], app.out[stop - begin:]
            self.act(lambda piece=piece: app.protocol.data_received(piece))  # type: ignore[misc]

    def closable_apps(self) -> list[AppSide]:
        """The busy app connection, and pooled ones that served before (the stale
        keep-alive race): those whose close matters."""
        return [a for a in self.apps if a.live and not a.tunnel and a.targets]

    @precondition(lambda self: bool(self.closable_apps()))
    @rule(data=st.data(), reset=st.booleans())
    def app_closes(self, data: st.DataObject, reset: bool) -> None:
        """The app closes or resets a connection."""
        app = data.draw(st.sampled_from(self.closable_apps()))
        if reset:
            self.act(lambda: app.transport.peer_lost(ConnectionResetError("reset")))
        else:
            self.act(app.transport.peer_eof)

    @precondition(lambda self: self.busy_app() is not None)
    @rule(full=st.booleans())
    def app_socket_fills_or_drains(self, full: bool) -> None:
        app = self.busy_app()
        assert app is not None
        self.act(app.protocol.pause_writing if full else app.protocol.resume_writing)

    # -- time and the drain -----------------------------------------------------------------
    @rule(seconds=st.sampled_from([0.3, 0.3, 0.3, 0.3, 0.6, 1.05, 2.05, 4.0]))
    def time_passes(self, seconds: float) -> None:
        """Time passes: less than any timeout, or past the body, header and upstream
        timeouts (1 s), the idle one (2 s), all of them."""
        self.closed_before = self.client_side.closed or self.client_side.eof_written
        self.may_close = True
        self.loop.pass_time(seconds)
        self.top_up_pool()
        self.observe()
        if self.state is C.CLOSED:
            self.next_client_connects()

    @precondition(lambda self: not self.cut_done)
    @rule()
    def drain_moves_on(self) -> None:
        """The drain's next step: it begins (responses from now on say close); the
        propagation window ends (``drain``); the drain deadline cuts what is left."""
        if not self.drain_begun:
            self.drain_begun = True
            self.act(lambda: self.h.ctx.begin_drain(self.loop.time()))
        elif not self.window_over:
            self.window_over = True
            self.act(self.h.client.drain, may_close=True)
        else:
            self.cut_done = True
            self.act(self.h.client.cut, may_close=True)

    # -- reading what each side got ---------------------------------------------------------
    def read_client_side(self) -> None:
        """Parse the new bytes the client got into responses, one per request in order."""
        if self.client_switched:
            return
        parser = self.client_parser
        if len(self.client_side.written) > self.client_read:  # (no bytes: EOF to h11)
            parser.receive_data(bytes(self.client_side.written[self.client_read:]))
            self.client_read = len(self.client_side.written)
        while True:
            if parser.our_state is h11.IDLE and parser.their_state is h11.IDLE:
                self.send_next_request()
            event = parser.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                assert parser.our_state is not h11.IDLE or not parser.trailing_data[0], (
                    f"the client got {bytes(parser.trailing_data[0][:40])!r} with no request "
                    "outstanding")
                return
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                self.switched()
                return
            if isinstance(event, h11.Response):
                assert parser.our_state is not h11.IDLE, \
                    f"a {event.status_code} response to no request"
                close = any(n == b"connection" and b"close" in v.lower()
                            for n, v in event.headers)
                self.responses.append(Response(event.status_code, close))
            elif isinstance(event, h11.EndOfMessage):
                self.responses[-1].complete = True
                self.upgrade_refused()
                if parser.our_state is h11.DONE and parser.their_state is h11.DONE:
                    parser.start_next_cycle()

    def upgrade_refused(self) -> None:
        """An Upgrade answered with a final response: the bytes held behind it are HTTP
        and are parsed now, up to the next Upgrade among them, behind which the rest is
        held again."""
        live = [r for r in self.requests if not r.void]
        if live[len(self.responses) - 1].kind == "upgrade":
            for request in self.requests:
                if request.held:
                    request.held = False
                    if request.kind == "upgrade":
                        break

    def send_next_request(self) -> None:
        """Tell the client-side parser of the next request the client began, so it reads
        the next response as that request's."""
        index = len(self.responses)
        live = [r for r in self.requests if not r.void]
        if index >= len(live) or live[index].start >= self.sent:
            return
        request = live[index]
        headers = [("Host", "a")]
        if request.kind == "upgrade":
            headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
        self.client_parser.send(h11.Request(method="GET", target=request.target,
                                            headers=headers))
        self.client_parser.send(h11.EndOfMessage())

    def switched(self) -> None:
        """A 101: the request is answered; what the client sent after it is tunnel data."""
        self.client_switched = True
        self.responses.append(Response(101, close=False, complete=True))
        for request in self.requests:
            if request.held:
                request.void = True
        self.requests = [r for r in self.requests if not r.void]
        self.client_done = True

    def read_app_side(self, app: AppSide) -> None:
        """Parse the new bytes an app connection got into requests."""
        parser = app.parser
        if app.tunnel:
            return
        if len(app.transport.written) > app.read:  # (no bytes would mean EOF to h11)
            parser.receive_data(bytes(app.transport.written[app.read:]))
            app.read = len(app.transport.written)
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:  # an Upgrade request: switched, refused, or waiting
                if app.protocol.machine.state is U.SWITCHED:
                    app.tunnel = True
                    return
                if app.protocol.machine.state in BUSY_APP:
                    return
                self.answer_in_parser(parser)
                continue
            if isinstance(event, h11.Request):
                app.targets.append(event.target.decode())
            elif isinstance(event, h11.EndOfMessage):
                app.whole.append(app.targets[-1])
                if parser.their_state is h11.DONE:
                    self.answer_in_parser(parser)

    @staticmethod
    def answer_in_parser(parser: h11.Connection) -> None:
        """Move the app-side parser on to the next request (what the app really answered
        does not matter to it)."""
        parser.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        parser.send(h11.EndOfMessage())
        if parser.our_state is h11.DONE and parser.their_state is h11.DONE:
            parser.start_next_cycle()

    def started_requests(self) -> list[Request]:
        """The requests of which the proxy has parsed a byte (the first bytes wait while
        they may still be the HTTP/2 preface)."""
        if self.sent < len(PREFACE) and PREFACE.startswith(bytes(self.stream[:self.sent])):
            return []
        return [r for r in self.requests if r.start < self.sent and not r.held and not r.void]

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def nothing_went_wrong_on_the_loop(self) -> None:
        assert not self.loop_errors, f"exceptions reached the loop: {self.loop_errors}"
        assert not self.logged.records, f"logged: {self.logged.records}"

    @invariant()
    def requests_in_flight_are_counted(self) -> None:
        in_flight = self.h.ctx.requests_in_flight
        if self.state in SERVING:
            answered = sum(r.complete for r in self.responses)
            expected = len(self.started_requests()) - answered - self.dropped
            assert in_flight == expected, (
                f"{in_flight} requests in flight in {self.state.name}, the client began "
                f"{len(self.started_requests())}, got {answered} answers, dropped {self.dropped}")
        else:
            assert in_flight == 0, f"{in_flight} requests in flight in {self.state.name}"
        registered = len(self.h.ctx.connections)
        assert registered == (0 if self.state is C.CLOSED else 1), \
            f"{registered} connections registered in {self.state.name}"

    @invariant()
    def every_request_at_the_app_is_answered_once(self) -> None:
        answered = {r.target for i, r in enumerate(self.requests) if self.answered(i)}
        in_progress = {a.targets[-1] for a in self.apps
                       if a.live and a.protocol.machine.state in BUSY_APP and a.targets}
        mine = {r.target for r in self.requests}  # earlier clients' connections are over
        whole = [t for a in self.apps for t in a.whole if t in mine]
        for target in set(whole) - answered - in_progress:
            assert self.client_side.closed, (
                f"the app got request {target} whole, the client no answer, and its "
                f"connection is open ({self.state.name})")

    @invariant()
    def no_request_left_truncated_at_the_app(self) -> None:
        for app in self.apps:
            if app.partial and app.live:
                assert app.protocol.machine.state in BUSY_APP, (
                    f"an app connection in {app.protocol.machine.state.name} holds part of "
                    f"request {app.targets[-1:]}")

    @invariant()
    def the_tunnel_passes_the_clients_eof_on(self) -> None:
        for app in self.apps:
            if app.tunnel and app.live and self.client_eof:
                assert app.transport.eof_written, "the client half-closed, the app never knew"

    @invariant()
    def idle_connections_read(self) -> None:
        if self.state is C.IDLE:
            machine = self.h.client.machine
            assert machine.paused_by == 0, f"idle, paused by {machine.paused_by}"
            assert self.client_side.reading or self.client_side.closed, "idle, not reading"
        for app in self.apps:
            if app.live and app.protocol.machine.state is U.IDLE:
                assert app.transport.reading, "an idle app connection is not read"

    @invariant()
    def no_silent_close(self) -> None:
        """The proxy ends a connection on its own only after a response that said so,
        whatever the drain's phase; a timeout, the client (its EOF: after the response in
        progress) and the drain's steps may."""
        closed = self.client_side.closed or self.client_side.eof_written
        if (not closed or self.closed_before or self.may_close or self.client_side.aborted
                or self.client_switched or self.client_eof):
            return
        last = self.responses[-1] if self.responses else None
        assert last is not None and last.close, (
            f"the client connection was closed after {last} without Connection: close")

    @invariant()
    def connects_only_to_retry(self) -> None:
        """Pooled fake connections are always there: a connect is only ever a retry."""
        metrics = self.h.ctx.metrics
        connects = total(metrics.upstream_errors, {"reason": "connect"})
        retries = total(metrics.upstream_retries, {})
        assert connects <= retries, f"{connects} connects to the app for {retries} retries"


def total(counter: Counter, labels: dict[str, str]) -> float:
    """A counter's value for ``labels`` (reading the one counter: a registry scrape after
    every step would cost more than the rest of the test)."""
    return sum(sample.value for family in counter.collect() for sample in family.samples
               if sample.name.endswith("_total") and sample.labels == labels)


FAST = settings(max_examples=150, stateful_step_count=30, deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow])


def test_http1_model() -> None:
    run_state_machine_as_test(Http1Model, settings=FAST)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_http1_model_long() -> None:
    run_state_machine_as_test(Http1Model, settings=settings(FAST, max_examples=3000))


def test_the_virtual_clock_fires_the_header_and_idle_timeouts() -> None:
    """The timers run on the virtual clock: half a head is refused after
    --header-timeout, an idle keep-alive connection closed after --idle-timeout."""
    model = Http1Model()
    try:
        model.client_requests(["get"], part=16, cuts=[])
        model.time_passes(0.6)
        assert model.client_side.written == b"", "before the header timeout"
        model.time_passes(0.6)
        assert model.client_side.written.startswith(b"HTTP/1.1 408 ")
    finally:
        model.teardown()
    model = Http1Model()
    try:
        model.app_kind("ok")
        model.client_requests(["get"], part="all", cuts=[])
        assert model.state is C.IDLE and model.responses[0].status == 200
        first = model.client_side
        model.time_passes(0.6)
        model.time_passes(1.05)
        assert not first.closed, "before the idle timeout"
        model.time_passes(0.6)
        assert first.closed and model.clients == 2, "closed; the next client connected"
    finally:
        model.teardown()


# Defects the model found, kept as the sequences Hypothesis shrank them to.
def test_the_apps_timeout_after_the_clients_reset() -> None:
    """The client stops reading (its socket full) and its next request goes to the app:
    at --body-timeout the client connection is reset; the exchange's app connection is
    was left running, and its --upstream-timeout (here due in the same loop turn; both
    are 60 s by default) answered 504 on the transport just reset: a write after close.
    The reset now resets the app connections of the unfinished requests too."""
    model = Http1Model()
    try:
        model.app_kind("ok")
        model.time_passes(0.3)
        model.client_requests(["chunked", "chunked"], part=74, cuts=[])  # the first, answered
        assert model.state is C.IDLE
        model.client_socket_fills_or_drains()  # full
        model.client_sends_more(part="all", cuts=[])  # the second goes to the app
        model.time_passes(1.05)
        model.nothing_went_wrong_on_the_loop()
    finally:
        model.teardown()


def test_an_app_we_stopped_reading_is_not_timed_out() -> None:
    """A request dispatched while the client's socket is full: we do not read the app
    (its answer could not go anywhere), so its --upstream-timeout must not run ("a paused
    app is not a slow app", proxy.http1.upstream).  _attach paused the app connection, then
    request_sent armed the timer anyway: 504 after --upstream-timeout, though the client
    had --body-timeout (here 5 s) to read on."""
    loop = VirtualClockLoop()

    async def make() -> Harness:
        return Harness(set(), "--upstream-timeout", "1", "--body-timeout", "5")

    try:
        h = loop.run_until_complete(make())
        h.client.pause_writing()  # a response before this one filled its socket
        loop.run_until_complete(asyncio.sleep(0))  # (run the call in the loop's context)
        h.client.data_received(REQUESTS["get"].replace(b"{n}", b"0"))
        assert h.app.machine.state is U.AWAITING and not h.app_side.reading
        loop.pass_time(1.5)
        assert h.client_side.written == b"", "the app was timed out while we did not read it"
    finally:
        loop.close()


def test_the_clients_timer_after_the_apps_timeout_reset_it() -> None:
    """A chunked upload is being read when the app answers with a close-delimited body
    and stalls: its --upstream-timeout resets the client (the response had begun), and the
    client's --body-timeout, due in the same loop turn, refused the upload with a 408 on
    the transport just reset.  A reset now stops the client connection's own timers."""
    model = Http1Model()
    try:
        model.app_kind(None)
        model.client_requests(cuts=[], kinds=["chunked"], part="head")
        model.app_answers(answer="close_delimited", cuts=[], part="all")
        model.time_passes(seconds=1.05)
        model.nothing_went_wrong_on_the_loop()
    finally:
        model.teardown()
