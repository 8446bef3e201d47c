"""The streams of one relayed HTTP/2 connection, and how each one that is over ended.
Sans-IO.

A stream can end while the peer still has frames for it on the wire: the app answers
and resets a stream (RST_STREAM(NO_ERROR), RFC 9113 section 8.1) while the client's
trailers are in flight; the app's GOAWAY drops streams the client is still uploading
to; the proxy refuses a stream opened after its final GOAWAY.  RFC 9113 section 5.1
says frames on a stream closed by a reset are ignored, so the relay must recognise
them rather than take them for a protocol violation, as hyper-h2 does with its
``_closed_streams``.  What the relay does with such a frame depends on whether the app
ever saw the stream:

- ``RESET``: the app knows the stream and that it ended (it reset it, it dropped it with
  its GOAWAY, or it received the client's reset): the frames are relayed, the app
  ignores them and gives their flow-control credit back itself.  Header blocks must be
  relayed in any case: they keep the app's HPACK context in step.
- ``REFUSED``: the app never saw the stream: its frames are dropped here, and the credit
  of its DATA is owed to the client (a WINDOW_UPDATE on stream 0; otherwise the
  client's connection window shrinks for good and its other uploads stall).

Refused streams need no memory: they are exactly the client's stream ids above the
last one handed to the app.  Reset streams are remembered, the most recent
``MAX_RESET_MEMORY`` of them: a frame can only be in flight for one round trip after
the reset, and the reset rate per connection is limited (``http2.session``).
"""

from __future__ import annotations

from typing import Final

# Stream halves that have ended (END_STREAM); a reset ends both.
CLIENT_DONE: Final = 1
APP_DONE: Final = 2
BOTH_DONE: Final = 3

# What a stream the client sends a frame on is, when it is not open.
NEW: Final = 0  # above every id the client used: only HEADERS may open it
RESET: Final = 1  # ended by a reset the app knows of: relayed, and ignored by the app
REFUSED: Final = 2  # never reached the app: dropped here, DATA credited back
GONE: Final = 3  # ended with both END_STREAMs, or forgotten: a frame on it is an error

MAX_RESET_MEMORY: Final = 1024


class StreamTable:
    """Open streams with their ended halves, and what is known of the closed ones."""

    __slots__ = ("_reset", "admitted", "highest", "open")

    def __init__(self) -> None:
        self.open: dict[int, int] = {}  # stream id -> halves ended
        self.highest = 0  # the largest stream id the client used
        self.admitted = 0  # the largest one whose request went to the app (or got a 502)
        self._reset: dict[int, None] = {}  # ended by a reset, oldest first

    def __len__(self) -> int:
        return len(self.open)

    def kind(self, stream: int) -> int:
        """What a stream that is not open is (see the module docstring)."""
        if stream > self.highest:
            return NEW
        if stream % 2 and stream > self.admitted:
            return REFUSED
        return RESET if stream in self._reset else GONE

    def admit(self, stream: int, halves: int) -> None:
        """The client opened ``stream`` and the app receives it."""
        self.highest = self.admitted = stream
        self.open[stream] = halves

    def refuse(self, stream: int) -> None:
        """The client opened ``stream`` and the app never receives it."""
        self.highest = stream

    def answered_here(self, stream: int) -> None:
        """The client opened ``stream`` and the proxy answered it itself."""
        self.highest = self.admitted = stream

    def promised(self, stream: int) -> None:
        """The app pushes on ``stream``: only the app's half is still to come."""
        self.open[stream] = CLIENT_DONE

    def end_half(self, stream: int, half: int) -> bool:
        """END_STREAM from one side; True if that ended the stream."""
        halves = self.open.get(stream)
        if halves is None:
            return False
        halves |= half
        if halves == BOTH_DONE:
            del self.open[stream]
            return True
        self.open[stream] = halves
        return False

    def reset(self, stream: int) -> bool:
        """The stream ended by a reset (either side's, or the app's GOAWAY); True if it
        was open.  It is remembered either way: the peer may still send frames on it."""
        was_open = self.open.pop(stream, None) is not None
        if stream not in self._reset and (stream <= self.highest or not stream % 2):
            if len(self._reset) >= MAX_RESET_MEMORY:
                del self._reset[next(iter(self._reset))]
            self._reset[stream] = None
        return was_open

    def above(self, last_stream: int) -> list[int]:
        """Open client streams with ids above ``last_stream``."""
        return [stream for stream in self.open if stream > last_stream and stream % 2]

    def clear(self) -> None:
        self.open.clear()
