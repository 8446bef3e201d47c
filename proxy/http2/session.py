"""One HTTP/2 connection relayed frame by frame: stream lifetimes, and the states of the
GOAWAY sequence.  Sans-IO: bytes in, bytes out, the clock passed in.

Each client connection gets its own app connection, and the frames of both
directions are relayed unchanged, so the app reads exactly the client's header blocks
and the two HPACK contexts stay in step without the proxy decoding them.  The proxy
reads frame headers to know when streams begin and end, and writes its own frames
only between whole frames and never inside a header block (header blocks are held
until complete, which also keeps a CONTINUATION flood away from the app).

Ending a connection without failing a stream is the sequence gRPC servers use:

    OPEN --goaway--> ANNOUNCED --PINGs acked, or timer--> FINAL --last stream ends--> CLOSED
      |                                                   ^                        ^
      +------------ drain of a connection without streams +---- a timeout, an error+

What ``ANNOUNCED`` and ``FINAL`` send, and when the sequence moves on, is
``http2.goaway``'s to decide.  A connection that opens no stream within the header
timeout, or none for the idle timeout, gets GOAWAY(NO_ERROR) and is closed
(``waiting``).
A protocol violation or abuse ends the connection at once: GOAWAY with the error,
then ``CLOSED``.  Every state change goes through ``TRANSITIONS``.
"""

from __future__ import annotations

import enum
from typing import Final

from proxy.http2 import frames as f
from proxy.http2.goaway import GoawaySequence, is_our_ping
from proxy.http2.streams import APP_DONE, CLIENT_DONE, NEW, REFUSED, RESET, StreamTable
from proxy.transitions import bit_masks, check_move


class H2State(enum.IntEnum):
    OPEN = 0  # relaying; the proxy has sent no GOAWAY
    ANNOUNCED = 1  # GOAWAY(largest id) and a PING sent; waiting for its ACK or the timer
    FINAL = 2  # GOAWAY with the real last stream id sent; the streams below it finish
    CLOSED = 3  # over: flush what is queued, then close both connections


OPEN: Final = H2State.OPEN
ANNOUNCED: Final = H2State.ANNOUNCED
FINAL: Final = H2State.FINAL
CLOSED: Final = H2State.CLOSED

TRANSITIONS: Final[dict[H2State, frozenset[H2State]]] = {
    OPEN: frozenset({ANNOUNCED, FINAL, CLOSED}),
    ANNOUNCED: frozenset({FINAL, CLOSED}),
    FINAL: frozenset({CLOSED}),
    CLOSED: frozenset(),
}
_ALLOWED: Final = bit_masks(TRANSITIONS)

# The largest frame either peer may send through the proxy (_cap_frame_size).
MAX_FRAME_CAP: Final = 65_536
# Rapid reset (CVE-2023-44487): a stream opened and reset costs the client two frames
# and the app a request.  A token bucket per connection: this many resets at once,
# refilled at this rate; past it the connection ends with ENHANCE_YOUR_CALM.
RESET_BURST: Final = 200
RESET_RATE_PER_S: Final = 100.0
# The frames on a refused stream that are dropped, not relayed (CONTINUATION and
# PUSH_PROMISE out of place stay connection errors).
_DROPPED_WHEN_REFUSED: Final = frozenset({f.DATA, f.PRIORITY, f.RST_STREAM, f.WINDOW_UPDATE})
# Which of the adapter's timers runs (``H2Session.waiting``): with a stream open, none.
NOT_WAITING: Final = 0
FIRST_STREAM: Final = 1  # no stream yet: --header-timeout
NEXT_STREAM: Final = 2  # none open since the last one ended: --idle-timeout


class H2Session:
    """What goes to the client and to the app for the frames each sends, and when the
    connection ends.  After every call the adapter writes ``to_client`` and ``to_app``
    (and empties them), and closes both connections once ``state`` is ``CLOSED``."""

    def __init__(self, request_budget: int, max_header_block: int, now: float,
                 max_app_block: int = 65536) -> None:
        self.state = OPEN
        self.to_client: list[bytes] = []
        self.to_app: list[bytes] = []
        self.close_reason = ""  # why it is CLOSED: a goaway reason, "app_error", ...
        self.failed = False  # CLOSED by an error: the frame that caused it is not relayed
        self.reset_client = False  # end with RST: what the client got is not complete
        self.goaways: list[str] = []  # reasons of the GOAWAYs sent, for the metrics
        self.opened = 0  # streams opened and ended, for the metrics (the adapter resets them)
        self.ended = 0
        self.table = StreamTable()  # open streams, and how the closed ones ended
        self.streams_total = 0
        self._budget = request_budget  # streams before rotation; 0: unlimited
        self._max_block = max_header_block  # the client's header blocks
        self._max_app_block = max_app_block  # the app's: --max-response-header-bytes
        self._goaway = GoawaySequence()
        self._credit = 0  # flow-control credit of client DATA dropped here, owed back
        self._early: list[bytes] = []  # our frames for the client, before the app's SETTINGS
        self._unreachable = False  # the proxy answers the client itself (app_unreachable)
        self._client = f.FrameStream(is_client=True)
        self._app = f.FrameStream(is_client=False)
        self._reset_tokens = float(RESET_BURST)
        self._reset_at = self._now = now

    # -- events from the adapter -----------------------------------------------------------
    def from_client(self, data: bytes | memoryview, now: float) -> None:
        self._relay(self._client, data, self.to_app, now)

    def from_app(self, data: bytes | memoryview, now: float) -> None:
        self._relay(self._app, data, self.to_client, now)

    def goaway(self, reason: str) -> None:
        """Start ending the connection without failing a stream (drain, rotation)."""
        if self.state is not OPEN:
            return
        if self.streams_total == 0:
            self._goaway.defer(reason)
            return
        self._goaway.start(reason)
        self._move(ANNOUNCED)
        self._goaway.announce(self._app.settings_seen, self._ours())
        self.goaways.append(reason)

    def drain_idle(self) -> None:
        """The listener closed: a connection that never had a stream ends now (there is
        no call of it to fail); one that had streams goes on with its sequence."""
        if self.state is OPEN and self.streams_total == 0:
            self._goaway.start("drain")
            self._final(0)
            self.goaways.append("drain")
        else:
            self.goaway("drain")

    def ping_timed_out(self) -> None:
        """The client did not acknowledge our PING in time: send the final GOAWAY anyway."""
        if self.state is ANNOUNCED:
            self._final(self.table.admitted)

    def app_unreachable(self) -> None:
        """The app cannot be reached.  Until ``unreachable_over``, the proxy answers this
        connection itself: every stream gets 502, which gRPC reads as UNAVAILABLE, so a
        call fails at once (a GOAWAY alone would have gRPC retry the call, unsent, until
        its deadline), and SETTINGS and PINGs are acknowledged."""
        if self.state is CLOSED:
            return
        self._unreachable = True
        self._early.clear()  # a GOAWAY sequence of ours is moot now
        self._app_preface_now()
        if self._client.settings_seen:
            self.to_client.append(f.frame(f.SETTINGS, f.ACK, 0))
        for stream in sorted(s for s in self.table.open if s % 2):
            self._bad_gateway(stream)
        self.table.clear()

    def unreachable_over(self) -> None:
        """End a connection answered with 502s: GOAWAY naming the last stream answered."""
        if self.state is not CLOSED:
            self.to_client.append(f.goaway(self._last_served(), f.NO_ERROR,
                                           b"the app cannot be reached"))
            self.close_reason = "unreachable"
            self._move(CLOSED)

    def _bad_gateway(self, stream: int) -> None:
        self.to_client.append(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, stream,
                                      f.BAD_GATEWAY_BLOCK))

    @property
    def waiting(self) -> int:
        """What the connection waits for, and so which timer applies: a connection that
        never opens a stream, or stops opening them, must not hold a connection slot
        and an app connection for ever."""
        if self.table.open or self.state is CLOSED:
            return NOT_WAITING
        return NEXT_STREAM if self.streams_total else FIRST_STREAM

    def timed_out(self) -> None:
        """The timer of ``waiting`` ran out: GOAWAY(NO_ERROR) naming the last stream
        served (a request crossing it is one the client knows it may retry), then close."""
        if self.waiting == NOT_WAITING:
            return
        self._app_preface_now()
        self.to_client.append(f.goaway(self._last_served(), f.NO_ERROR))
        self.goaways.append("idle_timeout")
        self.close_reason = "idle_timeout"
        self._move(CLOSED)

    def app_failed(self, reason: str = "app_error") -> None:
        if self.state is not CLOSED:
            self.close_reason = reason
            self.failed = self.reset_client = True
            self._move(CLOSED)

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    @property
    def active(self) -> int:
        """Streams the client is still waiting on."""
        return len(self.table)

    # -- relaying ---------------------------------------------------------------------------
    def _relay(self, side: f.FrameStream, data: bytes | memoryview, out: list[bytes],
               now: float) -> None:
        if self.state is CLOSED:
            return
        self._now = now
        buffer = side.buffer
        buffer += data
        size = len(buffer)
        position = side.run = 0
        while size - position >= f.HEADER_SIZE and not self.closed:
            length, kind, flags, stream = f.parse_header(buffer, position)
            if length > side.max_frame:
                if side.is_client:
                    self._fail(f.FRAME_SIZE_ERROR, "protocol_error", b"frame too large")
                else:
                    self.app_failed()
                break
            end = position + f.HEADER_SIZE + length
            if end > size:
                break
            side.position, side.end = position, end
            if side.is_client:
                self._client_frame(side, length, kind, flags, stream)
            else:
                self._app_frame(side, length, kind, flags, stream)
            if self.closed:
                if not self.failed:
                    position = end  # the frame that ended the last stream goes out
                break  # nothing after it does
            position = end
        side.position = position
        side.flush(out)
        del buffer[:position]
        if self._credit and not self.closed:
            self._inject(f.window_update(0, self._credit))
        self._credit = 0

    # -- the client's frames ------------------------------------------------------------------
    def _client_frame(self, side: f.FrameStream, length: int, kind: int, flags: int,
                      stream: int) -> None:
        if not side.settings_seen:
            if kind != f.SETTINGS or flags & f.ACK:
                self._fail(f.PROTOCOL_ERROR, "protocol_error", b"the preface must be SETTINGS")
                return
            side.settings_seen = True
        if side.block_stream:
            self._continue_block(side, length, kind, flags, stream)
            return
        if (stream == 0 and kind in f.STREAM_FRAMES) or (stream and kind in f.CONNECTION_FRAMES):
            self._fail(f.PROTOCOL_ERROR, "protocol_error", b"frame on the wrong stream")
            return
        fixed = f.FIXED_LENGTH.get(kind, 0)
        if fixed and length != fixed:
            self._fail(f.FRAME_SIZE_ERROR, "protocol_error", b"frame of the wrong size")
            return
        if kind == f.HEADERS:
            self._start_block(side, length, flags, stream)  # judged whole: _end_block
        elif stream and kind in _DROPPED_WHEN_REFUSED and stream not in self.table.open \
                and self._refused(stream):
            self._drop_refused(side, length, kind)
        elif kind == f.DATA:
            if flags & f.END_STREAM:
                self._half_done(stream, CLIENT_DONE)
        elif kind == f.RST_STREAM:
            # Counted first: a reset past the limit ends the connection, whatever it
            # would have ended itself (the last stream of a FINAL connection, say).
            self._count_reset()
            if not self.closed:
                self._stream_reset(stream)
        elif kind == f.SETTINGS:
            self._client_settings(side, length, flags)
            if self._unreachable and not flags & f.ACK and not self.closed:
                self.to_client.append(f.frame(f.SETTINGS, f.ACK, 0))
        elif kind == f.PING:
            if self._unreachable and not flags & f.ACK:
                self.to_client.append(f.frame(f.PING, f.ACK, 0, bytes(side.payload())))
            elif flags & f.ACK:
                opaque = bytes(side.payload())
                if is_our_ping(opaque):
                    side.skip(self.to_app)  # the app never sent it
                    if self.state is ANNOUNCED and self._goaway.ping_acked(opaque, self._ours()):
                        self._final(self.table.admitted)
        elif kind == f.GOAWAY:
            if length < 8:
                self._fail(f.FRAME_SIZE_ERROR, "protocol_error", b"GOAWAY too short")
        elif kind == f.CONTINUATION:
            self._fail(f.PROTOCOL_ERROR, "protocol_error", b"CONTINUATION outside a header block")
        elif kind == f.PUSH_PROMISE:
            self._fail(f.PROTOCOL_ERROR, "protocol_error", b"a client cannot push")

    def _refused(self, stream: int) -> bool:
        return self.table.kind(stream) == REFUSED

    def _drop_refused(self, side: f.FrameStream, length: int, kind: int) -> None:
        """A frame on a stream the app never saw: not for the app, where a frame on a
        stream it does not know is a connection error.  Its DATA's credit is owed back."""
        side.skip(self.to_app)
        if kind == f.DATA:
            self._credit += length  # all of it counts against the window, padding too
        elif kind == f.RST_STREAM:
            self._count_reset()

    def _client_settings(self, side: f.FrameStream, length: int, flags: int) -> None:
        if flags & f.ACK:
            if length:
                self._fail(f.FRAME_SIZE_ERROR, "protocol_error", b"SETTINGS ACK with a payload")
                return
            if self._goaway.settings_acked():
                side.skip(self.to_app)  # ours: the app never sent it
                if self._goaway.final_due:
                    self._final(self.table.admitted)
            return
        if length % 6:
            self._fail(f.FRAME_SIZE_ERROR, "protocol_error", b"SETTINGS of the wrong size")
            return
        advertised = self._cap_frame_size(side)
        if advertised is None:
            return
        if not f.DEFAULT_MAX_FRAME_SIZE <= advertised <= f.LARGEST_MAX_FRAME_SIZE:
            self._fail(f.PROTOCOL_ERROR, "protocol_error", b"invalid SETTINGS_MAX_FRAME_SIZE")
            return
        self._app.max_frame = min(advertised, MAX_FRAME_CAP)  # the app may send this now

    def _cap_frame_size(self, side: f.FrameStream) -> int | None:
        """The SETTINGS_MAX_FRAME_SIZE the SETTINGS frame being looked at advertises (None:
        none), lowered in place to ``MAX_FRAME_CAP``.  The proxy holds a frame until it is
        complete, so a peer allowing 16 MiB frames would have it hold 16 MiB per
        connection; the sender uses smaller frames instead, and nothing else changes."""
        return f.lower_setting(side.buffer, side.position + f.HEADER_SIZE, side.end,
                               f.SETTINGS_MAX_FRAME_SIZE, MAX_FRAME_CAP)

    def _start_block(self, side: f.FrameStream, length: int, flags: int, stream: int) -> None:
        """A HEADERS (or, from the app, PUSH_PROMISE) frame: hold it until END_HEADERS."""
        side.block_stream, side.block_flags = stream, flags
        side.block_size = length
        side.block = [side.current()]
        side.skip(self.to_app if side.is_client else self.to_client)
        if not self._block_too_large(side) and flags & f.END_HEADERS:
            self._end_block(side)

    def _continue_block(self, side: f.FrameStream, length: int, kind: int, flags: int,
                        stream: int) -> None:
        if kind != f.CONTINUATION or stream != side.block_stream:
            if side.is_client:
                self._fail(f.PROTOCOL_ERROR, "protocol_error", b"header block interrupted")
            else:
                self.app_failed()
            return
        side.block.append(side.current())
        side.block_size += length
        side.skip(self.to_app if side.is_client else self.to_client)
        if not self._block_too_large(side) and flags & f.END_HEADERS:
            self._end_block(side)

    def _block_too_large(self, side: f.FrameStream) -> bool:
        """A header block held past its limit (a CONTINUATION flood) ends the connection:
        a client's as abuse; the app's as its failure, the client reset (a block dropped
        would leave the client's HPACK context out of step, so the connection cannot go
        on without it)."""
        if side.is_client and side.block_size > self._max_block:
            self._fail(f.ENHANCE_YOUR_CALM, "abuse", b"header block too large")
            return True
        if not side.is_client and side.block_size > self._max_app_block:
            self.app_failed("app_too_large")
            return True
        return False

    def _end_block(self, side: f.FrameStream) -> None:
        block, stream, flags = side.block, side.block_stream, side.block_flags
        side.block, side.block_stream = [], 0
        if not side.is_client:
            self.to_client.extend(block)
            self._app_headers(stream, flags, block[0])
            return
        if stream in self.table.open:  # trailers
            self.to_app.extend(block)
            if flags & f.END_STREAM:
                self._half_done(stream, CLIENT_DONE)
            return
        kind = self.table.kind(stream)
        if kind == RESET:  # ignored by the app, which knows it ended
            self.to_app.extend(block)  # the app's HPACK context must see every block
            return
        if kind == REFUSED:  # the app never saw the stream (trailers, say): dropped
            return
        if kind != NEW or stream % 2 == 0:
            error = f.PROTOCOL_ERROR if stream % 2 == 0 else f.STREAM_CLOSED
            self._fail(error, "protocol_error", b"invalid stream id")
            return
        if self._unreachable:
            self.table.answered_here(stream)
            self.opened += 1
            self._bad_gateway(stream)
            return
        if self.state is FINAL and stream > self._goaway.last_stream:
            # Not for the app, not even its header block (the client's table is cleared:
            # FINAL waits for that), so REFUSED_STREAM's "not processed" is true.
            self.table.refuse(stream)
            self._inject(f.rst_stream(stream, f.REFUSED_STREAM))
            self._count_reset()  # a client that keeps opening refused streams is resetting
            return
        self.to_app.extend(block)
        self.table.admit(stream, CLIENT_DONE if flags & f.END_STREAM else 0)
        self.streams_total += 1
        self.opened += 1
        if self._budget and self.streams_total >= self._budget:
            self.goaway("max_requests")
        elif self._goaway.deferred:
            self.goaway(self._goaway.deferred)

    # -- the app's frames -----------------------------------------------------------------
    def _app_frame(self, side: f.FrameStream, length: int, kind: int, flags: int,
                   stream: int) -> None:
        """The app is trusted to speak HTTP/2; what is read here is what the stream
        lifetimes and our own frames depend on."""
        if kind == f.SETTINGS and not flags & f.ACK and length % 6 == 0:
            advertised = self._cap_frame_size(side)  # before the frame is relayed
            if advertised is not None:
                self._client.max_frame = min(advertised, MAX_FRAME_CAP)
            self._goaway.app_settings(side.buffer, side.position + f.HEADER_SIZE, side.end)
        if not side.settings_seen:  # the app's SETTINGS: ours may follow them now
            side.settings_seen = True
            start, side.position = side.position, side.end
            side.flush(self.to_client)
            side.position = start
            self.to_client.extend(self._early)
            self._early.clear()
        if side.block_stream:
            self._continue_block(side, length, kind, flags, stream)
        elif kind == f.DATA:
            if flags & f.END_STREAM:
                self._half_done(stream, APP_DONE)
        elif kind == f.HEADERS or kind == f.PUSH_PROMISE:
            self._start_block(side, length, flags | (kind << 8), stream)
        elif kind == f.RST_STREAM:
            self._stream_reset(stream)
        elif kind == f.GOAWAY and length >= 8:
            self._app_goaway(f.u32(side.payload()) & f.MAX_STREAM_ID)

    def _app_headers(self, stream: int, flags: int, first: bytes) -> None:
        if flags >> 8 == f.PUSH_PROMISE:  # a stream the app opens; the client never sends
            padding = 1 if flags & 0x8 else 0
            promised = f.u32(first, f.HEADER_SIZE + padding) & f.MAX_STREAM_ID
            self.table.promised(promised)
            self.opened += 1
        elif flags & f.END_STREAM:
            self._half_done(stream, APP_DONE)

    def _app_goaway(self, last_stream: int) -> None:
        """The app is going away itself: streams above its last id will not be answered
        (the client retries them), and no GOAWAY of ours may name a higher id."""
        self._goaway.app_goaway(last_stream)
        for stream in self.table.above(last_stream):
            self._stream_reset(stream)

    # -- streams, the sequence, errors ------------------------------------------------------
    def _half_done(self, stream: int, half: int) -> None:
        if self.table.end_half(stream, half):
            self._stream_over()

    def _stream_reset(self, stream: int) -> None:
        if self.table.reset(stream):
            self._stream_over()

    def _stream_over(self) -> None:
        self.ended += 1
        if self.state is FINAL and not self.table:
            self.close_reason = self._goaway.reason
            self._move(CLOSED)
        elif self._goaway.final_due and not self.table:
            self._final(self.table.admitted)  # no stream left to forward a block for

    def _count_reset(self) -> None:
        now = self._now
        tokens = min(float(RESET_BURST),
                     self._reset_tokens + (now - self._reset_at) * RESET_RATE_PER_S)
        self._reset_at = now
        self._reset_tokens = tokens - 1
        if self._reset_tokens < 0:
            self._fail(f.ENHANCE_YOUR_CALM, "abuse", b"too many stream resets")

    def _final(self, last_stream: int) -> None:
        """The final GOAWAY, once the sequence lets it go (``GoawaySequence.final``)."""
        if not self._goaway.final(last_stream, bool(self.table), self._ours()):
            return
        self._move(FINAL)
        for stream in self.table.above(self._goaway.last_stream):
            self._stream_reset(stream)  # the client retries those: nothing to wait for
        # Resetting the last open stream closed the connection already (_stream_over).
        if not self.table and self.state is not CLOSED:
            self.close_reason = self._goaway.reason
            self._move(CLOSED)

    def _fail(self, error: int, reason: str, detail: bytes) -> None:
        """End the connection now: GOAWAY with the error to the client, nothing more."""
        self._app_preface_now()
        self.to_client.append(f.goaway(self._last_served(), error, detail))
        self.goaways.append(reason)
        self.close_reason = reason
        self.failed = True
        self._move(CLOSED)

    def _last_served(self) -> int:
        """What a GOAWAY ending the connection at once names: the last stream the app
        got, or a lower one if the app's own GOAWAY said so."""
        return min(self._goaway.last_stream, self.table.admitted)

    def _inject(self, frames: bytes) -> None:
        self._ours().append(frames)

    def _ours(self) -> list[bytes]:
        """Where our own frames for the client go.  The server's first frame must be its
        SETTINGS, which come from the app: until they have gone out, ours wait."""
        return self.to_client if self._app.settings_seen else self._early

    def _app_preface_now(self) -> None:
        """Ending the connection before the app's SETTINGS came: send empty ones of ours,
        so that what follows is valid HTTP/2, and anything of ours held for them."""
        if not self._app.settings_seen:
            self._app.settings_seen = True
            self.to_client.append(f.empty_settings())
            self.to_client.extend(self._early)
            self._early.clear()

    def _move(self, state: H2State) -> None:
        check_move(_ALLOWED, "HTTP/2 connection", self.state, state)
        self.state = state
