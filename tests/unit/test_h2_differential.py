"""Differential test of the HTTP/2 relay state against hyper-h2.

Random client frame sequences, valid and invalid (built with ``hpack`` and
``hyperframe``), go two ways:

- straight to a reference server, an ``h2`` server connection (the *reference*);
- through ``H2Session`` to an identical ``h2`` server behind it (the *app*), whose
  answers go back through the session.

Both servers answer and reset streams at the same points.  The session may end the
connection itself (its own GOAWAY with an error), or the app may, on frames the
session relayed.  They must agree with the reference on whether the sequence is a
connection error, at the same frame:

- the session is never stricter than the reference, except for what RFC 9113 lets a
  server refuse beyond the protocol: ENHANCE_YOUR_CALM for a header block or a reset
  rate it finds excessive (section 10.5);
- where the session is more lenient (it reads no HPACK, keeps no flow-control window,
  and passes frames on streams it does not track), the app behind it must catch what
  the reference catches, because it got the frames.

The session also drains at random points (GOAWAY, its SETTINGS and PINGs, which the
client acknowledges when the test says so, clearing its HPACK table as a real client
does), so streams get refused.  The connection window must balance: every byte of
client DATA either reached the app or was credited back by the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.http2.session import H2Session
from proxy.http2.streams import REFUSED

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "app")]
REFUSED_STREAM = 0x7

# One step of the scenario: (what, a stream choice, a number, a flag).
Step = tuple[str, int, int, bool]
# Valid steps often, invalid ones (the last seven) now and then.
WEIGHTED = (["open"] * 6 + ["split"] * 2 + ["data"] * 6 + ["trailers"] * 2 + ["rst"] * 2
            + ["window"] * 2 + ["ping", "timer"] + ["settings_ack", "ping_ack"] * 2
            + ["ack_all"] * 4
            + ["goaway"] * 3 + ["answer"] * 4 + ["reset"] * 3
            + ["late_data", "late_trailers", "reuse", "even", "data0", "idle_data",
               "idle_rst"])
STEPS = st.lists(st.tuples(st.sampled_from(WEIGHTED), st.integers(0, 7),
                           st.integers(0, 3000), st.booleans()), max_size=40)
# A drain the client answers at once, inserted at a random step (or none): the way to
# FINAL, where streams are refused, is too long for random steps to take often.
DRAIN: list[Step] = [("open", 0, 0, False), ("goaway", 0, 0, False),
                     ("ack_all", 0, 0, False), ("ack_all", 0, 0, False)]
DRAIN_AT = st.none() | st.integers(0, 40)


def parse(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


class Server:
    """An ``h2`` server that answers a stream when the test says so; None once it has
    failed the connection (a protocol error)."""

    def __init__(self) -> None:
        self.conn: h2.connection.H2Connection | None = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False))
        self.conn.initiate_connection()
        self.initial = self.conn.data_to_send()  # its SETTINGS
        self.received_data = 0
        self.error = ""

    def receive(self, data: bytes) -> bytes:
        if self.conn is None or not data:
            return b""
        try:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id:
                    self.received_data += event.flow_controlled_length
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
        except h2.exceptions.ProtocolError as error:
            self.conn = None
            self.error = f"{type(error).__name__}: {str(error)[:40]}"
            return b""
        return self.conn.data_to_send()

    def act(self, what: str, stream: int) -> bytes:
        """Answer, or reset with NO_ERROR (or refuse), ``stream`` if it is open here."""
        if self.conn is None or stream not in self.conn.streams:
            return b""
        try:
            if what == "answer":
                self.conn.send_headers(stream, [(":status", "200")], end_stream=True)
            else:
                self.conn.reset_stream(stream, REFUSED_STREAM if what == "refuse" else 0)
        except h2.exceptions.ProtocolError:
            return b""  # not open for that here (half-closed, say)
        return self.conn.data_to_send()

    @property
    def failed(self) -> bool:
        return self.conn is None


@dataclass
class Client:
    """The client's side: its HPACK encoder, the streams it opened, what it received."""

    encoder: hpack.Encoder = field(default_factory=hpack.Encoder)
    next_stream: int = 1
    opened: list[int] = field(default_factory=list)
    ended: set[int] = field(default_factory=set)  # our half ended (END_STREAM, RST_STREAM)
    sent_data: int = 0
    received: list[Frame] = field(default_factory=list)
    settings_acked: int = 0
    pings_acked: int = 0

    def stream(self, choice: int) -> int:
        """One of the streams opened, live or not."""
        return self.opened[choice % len(self.opened)] if self.opened else 1

    def live(self, choice: int) -> int | None:
        """One of the streams whose request is still being sent."""
        live = [s for s in self.opened if s not in self.ended]
        return live[choice % len(live)] if live else None

    def end(self, stream: int, end_stream: bool) -> None:
        if end_stream:
            self.ended.add(stream)

    def headers(self, stream: int, block: bytes, end_stream: bool, split: bool) -> bytes:
        flags = {"END_STREAM"} if end_stream else set()
        if not split or len(block) < 2:
            return HeadersFrame(stream, data=block, flags=flags | {"END_HEADERS"}).serialize()
        return (HeadersFrame(stream, data=block[:1], flags=flags).serialize()
                + ContinuationFrame(stream, data=block[1:], flags={"END_HEADERS"}).serialize())

    def request(self, stream: int, end_stream: bool, split: bool = False) -> bytes:
        return self.headers(stream, self.encoder.encode(REQUEST), end_stream, split)

    def data(self, stream: int, size: int, end_stream: bool, padded: bool) -> bytes:
        size = min(size, 65_535 // 4 - 300 - self.sent_data // 4)  # within every window
        if size <= 0:
            return b""
        flags = {"END_STREAM"} if end_stream else set()
        if padded:
            frame = DataFrame(stream, data=b"d" * size, pad_length=7, flags=flags | {"PADDED"})
            self.sent_data += size + 8
        else:
            frame = DataFrame(stream, data=b"d" * size, flags=flags)
            self.sent_data += size
        return frame.serialize()

    def settings_ack(self) -> bytes:
        """Acknowledge the next SETTINGS received, applying its HPACK table size first."""
        pending = [f for f in self.received if isinstance(f, SettingsFrame)
                   and "ACK" not in f.flags][self.settings_acked:]
        if not pending:
            return b""
        self.settings_acked += 1
        size = pending[0].settings.get(SettingsFrame.HEADER_TABLE_SIZE)
        if size is not None:
            self.encoder.header_table_size = size
        return SettingsFrame(0, flags={"ACK"}).serialize()

    def ack_all(self) -> bytes:
        """Acknowledge every SETTINGS and PING received, in the order received."""
        acks = b""
        for frame in list(self.received):
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                acks += self.settings_ack()
            elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                acks += self.ping_ack()
        return acks

    def ping_ack(self) -> bytes:
        pending = [f for f in self.received if isinstance(f, PingFrame)
                   and "ACK" not in f.flags][self.pings_acked:]
        if not pending:
            return b""
        self.pings_acked += 1
        return PingFrame(0, opaque_data=pending[0].opaque_data, flags={"ACK"}).serialize()


def client_bytes(client: Client, step: Step) -> bytes:
    """The frames the client sends for ``step`` (b"" for the steps that are not the
    client's)."""
    what, choice, number, flag = step
    live = client.live(choice)
    if what in ("open", "split"):
        stream = client.next_stream
        client.next_stream += 2
        client.opened.append(stream)
        client.end(stream, flag)
        return client.request(stream, end_stream=flag, split=what == "split")
    if what in ("data", "trailers") and live is None:
        return b""  # nothing to send on
    if what in ("data", "late_data"):
        stream = client.stream(choice) if what == "late_data" or live is None else live
        client.end(stream, flag)
        return client.data(stream, number, flag, padded=number % 3 == 0)
    if what in ("trailers", "late_trailers"):
        stream = client.stream(choice) if what == "late_trailers" or live is None else live
        client.end(stream, True)
        block = client.encoder.encode([("x-trailer", str(number))])
        return client.headers(stream, block, end_stream=True, split=flag)
    if what == "rst" and live is not None:
        client.end(live, True)
        return RstStreamFrame(live, error_code=number % 14).serialize()
    if what == "window":
        return WindowUpdateFrame(0, window_increment=number + 1).serialize()
    if what == "ping":
        return PingFrame(0, opaque_data=number.to_bytes(8, "big")).serialize()
    if what == "settings_ack":
        return client.settings_ack()
    if what == "ping_ack":
        return client.ping_ack()
    if what == "ack_all":
        return client.ack_all()
    if what == "reuse" and client.opened:
        return client.request(client.stream(choice), end_stream=True)
    if what == "even":
        return client.request(2 * (choice + 1), end_stream=True)
    if what == "data0":
        return DataFrame(1, data=b"x").serialize()[:5] + bytes(4) + b"x"
    if what == "idle_data":
        return client.data(client.next_stream + 2 * choice, number, flag, padded=False)
    if what == "idle_rst":
        return RstStreamFrame(client.next_stream + 2 * choice, error_code=0).serialize()
    return b""


class Relay:
    """The session between the client and an app, with the bytes moved at once."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.app = Server()
        self.session = H2Session(0, max_header_block=65_536, now=0.0)
        self.to_app_data = 0  # flow-controlled DATA bytes the session relayed
        self.app_credit = 0  # the app's WINDOW_UPDATEs on stream 0
        self.session_credit = 0  # everything on stream 0 the client got
        # The adapter writes the preface to the app; the session sees what follows it.
        self.from_app(self.app.receive(PREFACE) + self.app.initial)

    def from_client(self, data: bytes) -> None:
        self.session.from_client(data, 0.0)
        self.flush()

    def from_app(self, data: bytes) -> None:
        for frame in parse(data):
            if isinstance(frame, WindowUpdateFrame) and frame.stream_id == 0:
                self.app_credit += frame.window_increment
        self.session.from_app(data, 0.0)
        self.flush()

    def flush(self) -> None:
        while self.session.to_app or self.session.to_client:
            to_app = b"".join(self.session.to_app)
            self.session.to_app.clear()
            for frame in parse(to_app):
                if isinstance(frame, DataFrame):
                    self.to_app_data += frame.flow_controlled_length
            to_client = b"".join(self.session.to_client)
            self.session.to_client.clear()
            for frame in parse(to_client):
                self.client.received.append(frame)
                if isinstance(frame, WindowUpdateFrame) and frame.stream_id == 0:
                    self.session_credit += frame.window_increment
            answer = self.app.receive(to_app)
            if answer:
                self.from_app(answer)

    def act(self, step: Step) -> None:
        what, choice, _, _ = step
        if what == "goaway":
            self.session.goaway("drain")
        elif what == "timer":
            self.session.ping_timed_out()
        elif what in ("answer", "reset"):
            self.from_app(self.app.act(what, self.client.stream(choice)))
        self.flush()


def outcome(reference: Server, relay: Relay) -> str:
    """How an example ended, for ``--hypothesis-show-statistics``."""
    if relay.session.failed and relay.session.close_reason != "app_error":
        return f"the session failed it ({relay.session.close_reason})"
    if reference.failed:
        return f"hyper-h2 failed it ({reference.error}), and so did the app"
    return f"no connection error (session {relay.session.state.name})"


def run_scenario(steps: list[Step], drain_at: int | None) -> None:
    if drain_at is not None:
        steps = steps[:drain_at] + DRAIN + steps[drain_at:]
    client = Client()
    reference = Server()
    relay = Relay(client)
    reference.receive(PREFACE + SettingsFrame(0).serialize())
    relay.from_client(SettingsFrame(0).serialize())
    first_ack = client.settings_ack()  # of the app's SETTINGS, at once, as clients do
    reference.receive(first_ack)
    relay.from_client(first_ack)
    for step in steps:
        data = client_bytes(client, step)
        if data:
            reference.receive(data)
            relay.from_client(data)
        if step[0] in ("answer", "reset"):
            reference.act(step[0], client.stream(step[1]))
        elif step[0] in ("open", "split") and relay.session.table.kind(
                client.opened[-1]) == REFUSED:
            # The session refused it: so does the reference, whose frames on it are
            # then ignored as the session's are (RFC 9113 section 5.1, "closed").
            reference.act("refuse", client.opened[-1])
        relay.act(step)
        session = relay.session
        if session.failed and session.close_reason not in ("abuse", "app_error"):
            assert reference.failed, f"stricter than hyper-h2 at {step}"
        assert reference.failed <= (session.failed or relay.app.failed), \
            f"hyper-h2 fails the connection at {step}; neither the session nor its app did"
        if reference.failed or session.closed or relay.app.failed:
            break
    event(outcome(reference, relay))
    if relay.session.table.highest > relay.session.table.admitted:
        event("a stream was refused")
    if not relay.session.closed and not relay.app.failed:
        credited_here = relay.session_credit - relay.app_credit
        if credited_here:
            event("DATA credited back by the session")
        assert client.sent_data == relay.to_app_data + credited_here, \
            "the client's connection window does not balance"


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, DRAIN_AT)
def test_the_session_and_hyper_h2_agree_on_connection_errors(
        steps: list[Step], drain_at: int | None) -> None:
    run_scenario(steps, drain_at)


@pytest.mark.slow
@pytest.mark.timeout(900)
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, DRAIN_AT)
def test_the_session_and_hyper_h2_agree_on_connection_errors_at_length(
        steps: list[Step], drain_at: int | None) -> None:
    run_scenario(steps, drain_at)
