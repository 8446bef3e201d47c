"""HTTP/2 peers built on the ``h2`` library (python-hyper), the reference the proxy's
frame relay is checked against: an app that records every byte it receives, and a
client that can also send frames no well-behaved client would (``hyperframe``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)

from helpers import eventually

IO_TIMEOUT_S = 5.0
BIG_BODY = b"b" * (10 * 2**20)  # the answer to /big
ANSWER_AND_RESET = b"/answer-and-reset"  # answered at once, then reset with NO_ERROR


@dataclass
class H2App:
    """Answers every request ``200 ok`` once its stream ends; keeps what it received."""

    received: list[bytearray] = field(default_factory=list)  # per connection, raw
    requests: list[list[tuple[bytes, bytes]]] = field(default_factory=list)  # header lists
    resets: int = 0
    delay_s: float = 0.0  # before each answer
    _server: asyncio.Server | None = None
    _serving: set[asyncio.Task[None]] = field(default_factory=set)
    _paths: dict[int, bytes] = field(default_factory=dict)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            await self._converse(reader, writer)
        except asyncio.CancelledError:
            pass  # the test is over: end quietly (a cancelled handler task gets logged)
        finally:
            writer.close()
            self._serving.discard(task)

    async def _converse(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        received = bytearray()
        self.received.append(received)
        with contextlib.suppress(ConnectionError, h2.exceptions.ProtocolError):
            while data := await reader.read(65536):
                received += data
                for event in conn.receive_data(data):
                    await self._on(conn, event)
                writer.write(conn.data_to_send())

    @staticmethod
    def _answer_and_reset(conn: h2.connection.H2Connection, stream: int) -> None:
        """Answer before the request has ended, then RST_STREAM(NO_ERROR): "stop
        sending", as RFC 9113 section 8.1 allows (gRPC servers do it)."""
        conn.send_headers(stream, [(":status", "200"), ("content-length", "0")],
                          end_stream=True)
        conn.reset_stream(stream, h2.errors.ErrorCodes.NO_ERROR)

    async def _on(self, conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = [(bytes(k), bytes(v)) for k, v in event.headers or []]
            self.requests.append(headers)
            if event.stream_id is not None:
                self._paths[event.stream_id] = dict(headers).get(b":path", b"")
                if self._paths[event.stream_id] == ANSWER_AND_RESET:
                    self._answer_and_reset(conn, event.stream_id)
        elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.resets += 1
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            body = BIG_BODY if self._paths.get(event.stream_id) == b"/big" else b"ok"
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                conn.send_headers(event.stream_id, [(":status", "200"),
                                                    ("content-length", str(len(body)))])
                chunk = conn.max_outbound_frame_size  # the client's window must allow it all
                for start in range(0, len(body), chunk):
                    conn.send_data(event.stream_id, body[start:start + chunk],
                                   end_stream=start + chunk >= len(body))


@contextlib.asynccontextmanager
async def h2_app(delay_s: float = 0.0) -> AsyncIterator[H2App]:
    app = H2App(delay_s=delay_s)
    app._server = await asyncio.start_server(app._serve, "127.0.0.1", 0)
    try:
        yield app
    finally:
        app._server.close()
        for task in list(app._serving):
            task.cancel()
        await asyncio.gather(*app._serving, return_exceptions=True)


class H2Client:
    """One client connection: requests encoded by ``h2``, raw frames when a test needs
    them, and everything received kept as parsed frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.answer_pings = True  # False: a client that never acknowledges a PING
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.sent = bytearray()
        self.frames: list[Frame] = []  # everything the proxy sent us, parsed
        self._unparsed = bytearray()

    @classmethod
    async def open(cls, port: int) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        self.sent += data
        self.writer.write(data)

    def request(self, path: str = "/", end_stream: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "GET"), (":path", path),
                                        (":scheme", "http"), (":authority", "app")],
                               end_stream=end_stream)
        self.flush()
        return stream

    async def read_until(self, done: object, timeout_s: float = IO_TIMEOUT_S) -> None:
        """Read until ``done(self)`` is true; EOF before that fails."""
        async with asyncio.timeout(timeout_s):
            while not done(self):  # type: ignore[operator]
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the proxy closed the connection")
                self._parse(data)

    async def read_to_eof(self, timeout_s: float = IO_TIMEOUT_S) -> None:
        """Read until the proxy closes the connection, then close our side."""
        try:
            async with asyncio.timeout(timeout_s):
                while data := await self.reader.read(65536):
                    self._parse(data)
        finally:
            self.close()

    def _parse(self, data: bytes) -> None:
        """Frames are parsed here rather than by h2, whose connection refuses every frame
        once it has received a GOAWAY (a real client still reads its streams' answers
        and acknowledges PINGs then)."""
        self._unparsed += data
        while len(self._unparsed) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._unparsed[:9]))
            if len(self._unparsed) < 9 + length:
                break
            frame.parse_body(memoryview(self._unparsed[9:9 + length]))
            self.frames.append(frame)
            del self._unparsed[:9 + length]
            self._answer(frame)

    def _answer(self, frame: Frame) -> None:
        """Acknowledge SETTINGS and PINGs, as any client does, and apply the server's
        HPACK table size (the only setting this client's requests depend on)."""
        if "ACK" in frame.flags or not self.answer_pings:
            return
        if isinstance(frame, SettingsFrame):
            if SettingsFrame.HEADER_TABLE_SIZE in frame.settings:  # applied, then ACKed
                table_size = frame.settings[SettingsFrame.HEADER_TABLE_SIZE]
                self.conn.encoder.header_table_size = table_size
            ack: Frame = SettingsFrame(0, flags={"ACK"})
        elif isinstance(frame, PingFrame):
            ack = PingFrame(0, opaque_data=frame.opaque_data, flags={"ACK"})
        else:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.send_raw(ack.serialize())

    def raw_headers(self, stream: int, end_stream: bool = True, path: str = "/late") -> bytes:
        """A HEADERS frame for a new stream, encoded with this connection's HPACK
        context but not through h2's state machine (which refuses after a GOAWAY)."""
        block = self.conn.encoder.encode([(":method", "GET"), (":path", path),
                                          (":scheme", "http"), (":authority", "app")])
        flags = {"END_HEADERS", "END_STREAM"} if end_stream else {"END_HEADERS"}
        return HeadersFrame(stream, data=block, flags=flags).serialize()

    def of_type(self, name: str) -> list[Frame]:
        return [frame for frame in self.frames if type(frame).__name__ == name]

    def responses(self) -> list[int]:
        """Streams whose response ended."""
        return [f.stream_id for f in self.frames
                if isinstance(f, DataFrame | HeadersFrame) and "END_STREAM" in f.flags]

    def close(self) -> None:
        self.writer.close()


def goaways(client: H2Client) -> list[tuple[int, int]]:
    """(last stream id, error code) of every GOAWAY received."""
    return [(f.last_stream_id, f.error_code) for f in client.of_type("GoAwayFrame")
            if isinstance(f, GoAwayFrame)]


async def slow_stream_across_the_drain(client: H2Client, app: H2App,
                                       trigger: Callable[[], None]) -> int:
    """Open ``/slow``, start the drain (``trigger``) once the app has it, and read until the
    drain's two GOAWAYs came (the announcement and the final one); returns the stream."""
    stream = client.request("/slow")
    await eventually(lambda: len(app.requests) == 1)
    trigger()
    await client.read_until(lambda c: len(goaways(c)) == 2)
    return stream
