"""HTTP/2 frame layout (RFC 9113 section 4): constants, and the few frames the proxy
writes itself.  Sans-IO.

The proxy relays the client's and the app's frames as they are; it reads only the
9-byte frame headers and the payloads of the connection-level frames (SETTINGS,
PING, GOAWAY, RST_STREAM), never HPACK.  It writes only GOAWAY, PING, RST_STREAM,
WINDOW_UPDATE (the credit of DATA it drops), a SETTINGS frame clearing the client's
HPACK table when a connection is ending, and, when the app cannot be reached, the
server's SETTINGS preface.
"""

from __future__ import annotations

import struct
from typing import Final

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER_SIZE: Final = 9
MAX_STREAM_ID: Final = 2**31 - 1
DEFAULT_MAX_FRAME_SIZE: Final = 16_384
LARGEST_MAX_FRAME_SIZE: Final = 2**24 - 1

# Frame types (section 6).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags.
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4

# Error codes (section 7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
ENHANCE_YOUR_CALM: Final = 0xB

SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_MAX_FRAME_SIZE: Final = 0x5

# ":status: 502" as an HPACK literal without indexing (name: static table entry 8): it
# leaves the client's dynamic table as it is, so the proxy may send it on a connection
# whose header blocks otherwise come from the app.
BAD_GATEWAY_BLOCK: Final = b"\x08\x03502"

# Payload sizes fixed by the spec, by frame type (0: any length).
FIXED_LENGTH: Final = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
CONNECTION_FRAMES: Final = frozenset({SETTINGS, PING, GOAWAY})  # stream 0 only
STREAM_FRAMES: Final = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE,
                                  CONTINUATION})  # never stream 0

_HEADER: Final = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream id


def parse_header(buffer: bytes | bytearray | memoryview, offset: int) -> tuple[int, int, int, int]:
    """(payload length, type, flags, stream id) of the frame header at ``offset``."""
    high, low, kind, flags, stream = _HEADER.unpack_from(buffer, offset)
    return (high << 8) | low, kind, flags, stream & MAX_STREAM_ID


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream) + payload


def goaway(last_stream: int, error: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, error) + debug)


def ping(opaque: bytes) -> bytes:
    return frame(PING, 0, 0, opaque)


def rst_stream(stream: int, error: int) -> bytes:
    return frame(RST_STREAM, 0, stream, struct.pack(">I", error))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment))


def empty_settings() -> bytes:
    return frame(SETTINGS, 0, 0)


def settings(identifier: int, value: int) -> bytes:
    return frame(SETTINGS, 0, 0, struct.pack(">HI", identifier, value))


def lower_setting(buffer: bytearray, start: int, end: int, identifier: int,
                  ceiling: int) -> int | None:
    """The value the SETTINGS payload ``buffer[start:end]`` gives ``identifier`` (None:
    none; the last one counts), each occurrence lowered in place to ``ceiling``."""
    advertised = None
    for offset in range(start, end - 5, 6):
        if (buffer[offset] << 8) | buffer[offset + 1] == identifier:
            advertised = u32(buffer, offset + 2)
            if advertised > ceiling:
                buffer[offset + 2:offset + 6] = ceiling.to_bytes(4, "big")
    return advertised


def u32(payload: bytes | bytearray | memoryview, offset: int = 0) -> int:
    return int(struct.unpack_from(">I", payload, offset)[0])


class FrameStream:
    """The frames one side sends, as the session scans them: the unparsed tail of what
    it sent, the frame being looked at (``position`` to ``end``), the run of frames
    before it still to be relayed unchanged (from ``run``), and a header block being
    held until it is complete."""

    __slots__ = ("block", "block_flags", "block_size", "block_stream", "buffer", "end",
                 "is_client", "max_frame", "position", "run", "settings_seen")

    def __init__(self, is_client: bool) -> None:
        self.is_client = is_client
        self.buffer = bytearray()
        self.position = self.end = self.run = 0
        self.max_frame = DEFAULT_MAX_FRAME_SIZE  # until the receiver's SETTINGS say more
        self.settings_seen = False
        self.block: list[bytes] = []
        self.block_stream = 0
        self.block_flags = 0
        self.block_size = 0

    def flush(self, out: list[bytes]) -> None:
        """Queue the frames since the last flush, up to the frame being looked at."""
        if self.position > self.run:
            out.append(bytes(self.buffer[self.run:self.position]))
        self.run = self.position

    def skip(self, out: list[bytes]) -> None:
        """The frame being looked at is not relayed as it stands (dropped, or held)."""
        self.flush(out)
        self.run = self.end

    def current(self) -> bytes:
        return bytes(self.buffer[self.position:self.end])

    def payload(self) -> memoryview:
        return memoryview(self.buffer)[self.position + HEADER_SIZE:self.end]
