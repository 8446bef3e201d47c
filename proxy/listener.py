"""The traffic listener: a listening socket that can pause accepting without refusing.

``asyncio.Server`` can only be closed for good, and closing its socket makes the
kernel refuse new connections.  For ``--max-connections`` we want the opposite:
stop accepting, let new connections wait in the kernel backlog, and resume
later.  So we own the listening socket and hand the server a duplicate of its
descriptor: closing the server closes only the duplicate, the socket stays in
the listening state, and a new server on a fresh duplicate resumes accepting.
Closing our own socket too (the drain) is what makes new connections refused.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Protocol

from proxy.flags import Address

log = logging.getLogger("drain_proxy.listener")
BACKLOG = 1024  # absorbs a burst while paused at --max-connections


class Adoptions(Protocol):
    """Told about connections taken from the backlog until their protocol exists, so the
    drain cannot finish (and the process exit) between their accept and their register."""

    def adoption_started(self) -> None: ...
    def adoption_ended(self) -> None: ...


class Listener:
    """Owns one listening TCP socket and the asyncio server accepting on it."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                 adoptions: Adoptions) -> None:
        self._sock: socket.socket | None = sock
        # Kept: reported, and listened on again, after the socket is closed.
        self._host, self.port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
        self._factory = factory
        self._adoptions = adoptions
        self._server: asyncio.Server | None = None
        self._want_serving = False
        self._reconciling: asyncio.Task[None] | None = None
        self._adopting: set[asyncio.Task[tuple[asyncio.Transport, asyncio.BaseProtocol]]] = set()

    @classmethod
    def bind(cls, address: Address, factory: Callable[[], asyncio.BaseProtocol],
             adoptions: Adoptions) -> Listener:
        return cls(_listening_socket(address), factory, adoptions)

    async def reopen(self) -> None:
        """Listen again after ``close``, on the same address and port (a drain undone)."""
        if self._sock is not None:
            return
        host = self._host
        self._sock = _listening_socket(Address(host, self.port))
        await self.start()

    @property
    def accepting(self) -> bool:
        """An asyncio server is accepting on the socket now."""
        return self._server is not None

    async def start(self) -> None:
        self._want_serving = True
        await self._reconcile()

    def pause(self) -> None:
        """Stop accepting; new connections queue in the kernel backlog."""
        self._want_serving = False
        if self._server is not None:
            self._server.close()
            self._server = None

    def resume(self) -> None:
        if self._want_serving or self._sock is None:
            return
        self._want_serving = True
        if self._reconciling is None or self._reconciling.done():
            self._reconciling = asyncio.get_running_loop().create_task(self._reconcile())

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
        """Stop accepting for good: from now on the kernel refuses connections.

        Connections that completed their handshake but were not accepted yet sit
        in the kernel backlog; closing the socket would reset them, and their
        clients have already sent a request.  So new handshakes are stopped first,
        then the backlog is accepted and served, then the socket is closed.
        """
        self.pause()
        if self._sock is None:
            return
        _refuse_new_handshakes(self._sock)
        self._adopt_backlog(self._sock)
        self._sock.close()
        self._sock = None

    def _adopt_backlog(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: nothing more we can take
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


# SO_ATTACH_FILTER and a one-instruction classic BPF program: BPF_RET|BPF_K 0, "keep
# 0 bytes", i.e. drop every packet.  Linux runs a listening socket's filter on
# incoming SYNs, so no new connection can complete into the backlog while we empty
# it; those clients retransmit their SYN and are refused once the socket is closed.
_SO_ATTACH_FILTER = 26
_DROP_EVERYTHING = struct.pack("HBBI", 0x06, 0, 0, 0)


def _refuse_new_handshakes(sock: socket.socket) -> None:
    """Best effort: without it (not Linux) a connection can race the close and be reset."""
    if not sys.platform.startswith("linux"):
        return
    program = ctypes.create_string_buffer(_DROP_EVERYTHING)
    fprog = struct.pack("@HP", 1, ctypes.addressof(program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as error:
        log.debug("cannot stop new handshakes before closing the listener: %s", error)
