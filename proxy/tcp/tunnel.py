"""A byte relay between two transports: raw TCP mode and upgraded HTTP connections.

Each side is a ``TunnelEnd`` protocol; what one end reads is written to the
other.  The relay does no per-byte work beyond handing buffers over, and it
keeps the semantics of the two TCP connections it joins:

* backpressure: when one end's write buffer is full (``pause_writing``) the other
  end stops reading until it drains, so memory stays bounded at the transports'
  high-water marks whatever the two peers' speeds;
* half-close: an EOF read on one end becomes ``write_eof`` on the other, and the
  other direction keeps flowing until it ends too;
* resets: a connection lost with an error aborts the other end (RST), so the
  peer sees a failure, not a clean end of stream.

A tunnel counts for the drain (``tracker``) from its start to the loss of both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Final, cast

from proxy.buffers import SharedCopyProtocol, limit_writes

MAX_EARLY_BYTES: Final = 64 * 1024  # read before the far end is connected; then pause


_LINGER_OFF: Final = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends RST


def reset(transport: asyncio.Transport) -> None:
    """Abort with a TCP reset.  ``abort()`` alone closes with FIN, which the peer would
    read as a clean end of stream."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
    transport.abort()


class TunnelEnd(SharedCopyProtocol):
    """One connection of a tunnel."""

    __slots__ = ("_early", "_early_size", "_reading_paused", "_write_peer", "is_app", "lost",
                 "peer", "read_eof", "received", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, is_app: bool = False) -> None:
        self.tunnel = tunnel
        self.is_app = is_app  # the connection to the app, not the client's
        self.transport: asyncio.Transport | None = None
        self.peer: TunnelEnd | None = None
        self.read_eof = False
        self.lost = False
        self.received = 0  # bytes read on this end, for the peer (the access log's counts)
        self._early: list[bytes] = []  # bytes read before the peer existed
        self._early_size = 0
        self._reading_paused = False
        # The peer's ``transport.write``, bound once at ``join``: every read calls it, and a
        # bound method spares looking ``write`` up on the transport's type each time.
        self._write_peer: Callable[[bytes], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        limit_writes(self.transport)

    def adopt(self, transport: asyncio.Transport) -> None:
        """Take over a transport that was speaking HTTP (``set_protocol``)."""
        self.transport = transport
        transport.set_protocol(self)
        transport.resume_reading()

    def join(self, peer: TunnelEnd) -> None:
        """The far end is connected: flush what was read early, and relay from now on."""
        self.peer = peer
        if peer.transport is not None:
            self._write_peer = peer.transport.write
        if self._early and peer.transport is not None:
            peer.transport.write(b"".join(self._early))
        self._early.clear()
        if self.read_eof and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        self._set_reading(True)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        tunnel = self.tunnel
        tunnel.app_spoke_last = self.is_app  # ``Tunnel.spoke``, inlined
        if tunnel.on_move is not None:
            tunnel.moved()
        write_peer = self._write_peer
        if write_peer is not None:
            write_peer(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > MAX_EARLY_BYTES:
            self._set_reading(False)

    def eof_received(self) -> bool:
        self.read_eof = True
        self.tunnel.spoke(self.is_app)  # an EOF ends a message as bytes do
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        if peer is not None and peer.read_eof:
            self.tunnel.close()  # both directions have ended
        return True  # keep our write side open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.end_lost(self, exc)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer._set_reading(False)

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer._set_reading(True)

    def _set_reading(self, reading: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or reading != self._reading_paused:
            return
        self._reading_paused = not reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()


class Tunnel:
    """Two joined connections; reports its end once, with the reason it ended."""

    __slots__ = ("_ended", "_on_end", "app_spoke_last", "client", "cut_reason", "on_move",
                 "upstream")

    def __init__(self, on_end: Callable[[Tunnel, str], None]) -> None:
        self._on_end = on_end
        self._ended = False
        self.cut_reason: str | None = None
        # Who sent bytes (or EOF) last; with no byte either way, False.  Kept on every
        # read, as one store: the quiet machine (``proxy.tcp.quiet``) looks at it, and at
        # ``moves``, when it decides, rather than being told of every read with a clock.
        self.app_spoke_last = False
        # Called once at the next bytes or EOF either way, then unset: the quiet machine
        # waiting for the app's answer to a request (``quiet.WAIT``).
        self.on_move: Callable[[], None] | None = None
        self.client = TunnelEnd(self)
        self.upstream = TunnelEnd(self, is_app=True)

    def spoke(self, from_app: bool) -> None:
        """Bytes or an EOF came from one side (the read path inlines this): one store, no
        clock, for the quiet machine to look at, and ``on_move`` if set."""
        self.app_spoke_last = from_app
        if self.on_move is not None:
            self.moved()

    def moved(self) -> None:
        """Bytes or an EOF moved while ``on_move`` was set: call it, once."""
        on_move = self.on_move
        self.on_move = None
        if on_move is not None:
            on_move()

    @property
    def moves(self) -> int:
        """A count that grows whenever bytes or an EOF move, either way: from the byte
        counts the relay keeps anyway, so reads pay nothing for it."""
        client, upstream = self.client, self.upstream
        return client.received + upstream.received + client.read_eof + upstream.read_eof

    def connect_ends(self) -> None:
        self.client.join(self.upstream)
        self.upstream.join(self.client)

    def end_lost(self, end: TunnelEnd, exc: Exception | None) -> None:
        other = self.upstream if end is self.client else self.client
        if other.transport is not None and not other.lost:
            if exc is not None:
                reset(other.transport)  # pass the reset on
            else:
                other.transport.close()  # after flushing what we relayed to it
        if (self.client.lost or self.client.transport is None) and \
                (self.upstream.lost or self.upstream.transport is None):
            self._finish("error" if exc is not None else "peer")

    @property
    def flushed(self) -> bool:
        """Nothing relayed is still waiting to be written, on either side."""
        return all(end.transport is None or end.transport.get_write_buffer_size() == 0
                   for end in (self.client, self.upstream))

    def close(self) -> None:
        """Both directions ended cleanly: close after flushing."""
        for end in (self.client, self.upstream):
            if end.transport is not None:
                end.transport.close()

    def cut(self, reason: str, graceful: bool = False) -> None:
        """End both connections now: with a reset (the drain deadline: both peers must see
        that the stream was cut), or ``graceful``ly with a FIN (rotating a tunnel that is
        idle both ways, where nothing is cut)."""
        self.cut_reason = reason
        for end in (self.client, self.upstream):
            if end.transport is not None and not end.lost:
                if graceful:
                    end.transport.close()
                else:
                    reset(end.transport)
        if self.upstream.transport is None:
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(self, self.cut_reason or reason)


def splice(client: asyncio.Transport, upstream: asyncio.Transport, to_upstream: bytes,
           to_client: bytes, on_end: Callable[[Tunnel, str], None],
           client_eof: bool = False) -> Tunnel:
    """Turn two HTTP connections into a tunnel after a 101 (the bytes each side sent
    past the HTTP exchange are delivered first).  ``client_eof``: the client half-closed
    while the app was deciding; the app gets that EOF after those bytes."""
    tunnel = Tunnel(on_end)
    tunnel.client.read_eof = client_eof  # joining passes it on
    tunnel.client.adopt(client)
    tunnel.upstream.adopt(upstream)
    if to_upstream:
        upstream.write(to_upstream)
    if to_client:
        client.write(to_client)
    tunnel.client.received, tunnel.upstream.received = len(to_upstream), len(to_client)
    tunnel.connect_ends()
    return tunnel
