"""The traffic listener: a listening socket that can pause accepting without refusing.

``asyncio.Server`` can only be closed for good, and closing its socket makes the
kernel refuse new connections.  For ``--max-connections`` we want the opposite:
stop accepting, let new connections wait in the kernel backlog, and resume
later.  So we own the listening socket and hand the server a duplicate of its
descriptor: closing the server closes only the duplicate, the socket stays in
the listening state, and a new server on a fresh duplicate resumes accepting.
Closing our own socket too (the drain) is what makes new connections refused.

Two owners pause accepting, for reasons that end differently: the capacity
(``--max-connections``), released as connections close, and the drain, released only
when a drain is undone.  Each is a separate ``Pause``: the listener accepts when
neither holds, so a connection closing during the drain cannot resume accepting.

Paused at capacity only, the listener watches its socket: when a client waits in the
backlog it says so (``clients_waiting``), once per pause, so that the least recently
used idle keep-alive connection can make room, as nginx does ("reusing connections").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import select
import socket
import struct
import sys
from collections.abc import Callable
from typing import Protocol

from proxy.flags import Address

log = logging.getLogger("drain_proxy.listener")
BACKLOG = 1024  # absorbs a burst while paused at --max-connections


class Pause(enum.Enum):
    """Why the listener is not accepting; it accepts again only when no reason holds."""

    CAPACITY = "capacity"  # --max-connections reached: released as connections close
    DRAIN = "drain"  # the drain stops accepting: released only if the drain is undone


class Adoptions(Protocol):
    """Told about connections taken from the backlog until their protocol exists, so the
    drain cannot finish (and the process exit) between their accept and their register."""

    def adoption_started(self) -> None: ...
    def adoption_ended(self) -> None: ...


class Listener:
    """Owns one listening TCP socket and the asyncio server accepting on it."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                 adoptions: Adoptions, clients_waiting: Callable[[], None] = lambda: None,
                 ) -> None:
        self._sock: socket.socket | None = sock
        # Kept: reported, and listened on again, after the socket is closed.
        self._host, self.port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
        self._factory = factory
        self._adoptions = adoptions
        self._server: asyncio.Server | None = None
        self._started = False
        self._paused: set[Pause] = set()
        self._clients_waiting = clients_waiting
        self._watching = False  # for a client waiting in the backlog (paused at capacity)
        self._told = False  # that one is waiting, during this capacity pause
        self._reconciling: asyncio.Task[None] | None = None
        self._adopting: set[asyncio.Task[tuple[asyncio.Transport, asyncio.BaseProtocol]]] = set()

    @classmethod
    def bind(cls, address: Address, factory: Callable[[], asyncio.BaseProtocol],
             adoptions: Adoptions, clients_waiting: Callable[[], None] = lambda: None,
             ) -> Listener:
        return cls(_listening_socket(address), factory, adoptions, clients_waiting)

    async def reopen(self) -> None:
        """Listen again after ``close``, on the same address and port (a drain undone)."""
        if self._sock is not None:
            return
        self._paused.discard(Pause.DRAIN)
        host = self._host
        self._sock = _listening_socket(Address(host, self.port))
        self._watch_backlog()  # still at capacity, perhaps
        await self.start()

    @property
    def clients_in_backlog(self) -> bool:
        """A connection waits in the kernel backlog, not yet accepted: something a stalled
        or busy process has not seen yet (the adaptive window must not take it for
        silence)."""
        if self._sock is None:
            return False
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    @property
    def accepting(self) -> bool:
        """An asyncio server is accepting on the socket now."""
        return self._server is not None

    @property
    def _want_serving(self) -> bool:
        return self._started and not self._paused

    async def start(self) -> None:
        self._started = True
        await self._reconcile()

    def pause(self, reason: Pause) -> None:
        """Stop accepting for ``reason``; new connections queue in the kernel backlog."""
        self._paused.add(reason)
        if self._server is not None:
            self._server.close()
            self._server = None
        self._watch_backlog()

    def resume(self, reason: Pause) -> None:
        """``reason`` no longer holds; accept again unless another one does."""
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if reason is Pause.CAPACITY:
            self._told = False
        self._watch_backlog()
        if not self._want_serving or self._sock is None:
            return
        if self._reconciling is None or self._reconciling.done():
            self._reconciling = asyncio.get_running_loop().create_task(self._reconcile())

    def _watch_backlog(self) -> None:
        """Watch the socket while paused at capacity only (a drain is closing it), until
        told once: the socket stays readable while a client waits, and the room is made
        by a connection closing, which resumes accepting."""
        watch = self._paused == {Pause.CAPACITY} and self._sock is not None and not self._told
        if watch == self._watching or self._sock is None:
            return
        self._watching = watch
        loop = asyncio.get_running_loop()
        if watch:
            loop.add_reader(self._sock.fileno(), self._client_waits)
        else:
            loop.remove_reader(self._sock.fileno())

    def _client_waits(self) -> None:
        self._told = True
        self._watch_backlog()
        self._clients_waiting()

    async def _reconcile(self) -> None:
        """Make the server match ``_want_serving``.  Creating a server awaits, and pause and
        resume may both come meanwhile: one task at a time, looking again after each await,
        so there is never a second server on the socket."""
        while self._want_serving and self._server is None and self._sock is not None:
            server = await asyncio.get_running_loop().create_server(
                self._factory, sock=self._sock.dup(), backlog=BACKLOG)
            if self._want_serving and self._server is None and self._sock is not None:
                self._server = server
            else:
                server.close()  # paused (or closed) while it was being created

    def close(self) -> None:
        """Stop accepting at once (the process is closing): the kernel refuses from now on."""
        self.pause(Pause.DRAIN)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def stop_accepting(self) -> None:
        """Stop accepting for good without resetting a client that is already connected.

        A client is connected as soon as it has the SYN-ACK, and sends its request at
        once.  Closing a listening socket resets the connections in its backlog and
        those whose handshake is still completing.  So new handshakes are refused
        first (their SYNs dropped: the client retries and is refused once the socket
        is closed), the handshakes under way may finish for up to
        ``HANDSHAKE_SETTLE_MAX_S``, everything that reached the backlog is accepted and
        served, and only then is the socket closed.  The drain counts this as an
        adoption in progress, so it cannot end meanwhile.
        """
        self.pause(Pause.DRAIN)
        sock = self._sock
        if sock is None:
            return
        self._adoptions.adoption_started()
        try:
            filtered = _refuse_new_handshakes(sock)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HANDSHAKE_SETTLE_MAX_S
            while True:
                self._adopt_backlog(sock, filtered)
                if not filtered or not _handshakes_under_way(self.port) \
                        or loop.time() >= deadline:
                    break
                await asyncio.sleep(HANDSHAKE_POLL_S)
                if self._sock is not sock:
                    return  # closed meanwhile (the process is closing)
            self._adopt_backlog(sock, filtered)
            self.close()
        finally:
            self._adoptions.adoption_ended()

    def _adopt_backlog(self, sock: socket.socket, filtered: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: nothing more we can take
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if filtered:  # an accepted socket inherits the listener's filter
                with contextlib.suppress(OSError):
                    connection.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
            self._adoptions.adoption_started()
            task = loop.create_task(loop.connect_accepted_socket(self._factory, connection))
            self._adopting.add(task)
            task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[tuple[asyncio.Transport, asyncio.BaseProtocol]]) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("adopting a backlog connection failed: %s", task.exception())
        self._adoptions.adoption_ended()


def _listening_socket(address: Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets then.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address.host, address.port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


# SO_ATTACH_FILTER with a classic BPF program that drops segments carrying SYN (a new
# handshake) and keeps the rest.  Linux runs a listening socket's filter on the
# segments that reach it with the TCP header at offset 0, so byte 13 holds the flags.
# Only SYNs may be dropped: the final ACK of a handshake already under way (and the
# request riding with it) must still reach the socket, or that client, connected since
# its SYN-ACK, is reset when the socket closes.
_SO_ATTACH_FILTER = 26
_SO_DETACH_FILTER = 27
_TCP_SYN = 0x02
_DROP_SYNS = b"".join(struct.pack("HBBI", *instruction) for instruction in (
    (0x30, 0, 0, 13),          # ldb [13]          load the TCP flags
    (0x45, 0, 1, _TCP_SYN),    # jset #SYN, 0, 1   SYN set: next, else skip one
    (0x06, 0, 0, 0),           # ret #0            drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1           keep the whole segment
))
HANDSHAKE_SETTLE_MAX_S = 1.5  # past one lost ACK: a SYN-ACK is retransmitted after 1 s
HANDSHAKE_POLL_S = 0.005
_SYN_RECV = "03"  # the state column of /proc/net/tcp


def _refuse_new_handshakes(sock: socket.socket) -> bool:
    """Best effort: without it (not Linux) a connection can race the close and be reset."""
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(_DROP_SYNS, len(_DROP_SYNS))
    count = len(_DROP_SYNS) // struct.calcsize("HBBI")
    fprog = struct.pack("@HP", count, ctypes.addressof(program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as error:
        log.debug("cannot stop new handshakes before closing the listener: %s", error)
        return False
    return True


def _handshakes_under_way(port: int) -> int:
    """Handshakes to this port past the SYN-ACK but not completed (SYN_RECV), from the
    kernel's table of this network namespace; 0 where it cannot be read."""
    local_port = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split(None, 4)
                    if fields[1].endswith(local_port) and fields[3] == _SYN_RECV:
                        count += 1
        except OSError:
            continue
    return count
