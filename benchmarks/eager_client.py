"""A client that never retries and reuses its connection the instant a response ends.

hey and Go's HTTP transport watch their idle connections and quietly open a new one when
a server closed the old one, and retry some requests: a proxy that closes a keep-alive
connection without saying ``Connection: close`` can look lossless under them.  This
client does neither.  Each connection sends POSTs on raw sockets; the next request is
written as soon as the previous response has been read (or after a fixed pause), without
looking at the socket first.  It moves to a new connection only when a response said
``Connection: close``.  Any request that meets an EOF or a reset on an open connection
is counted lost; a connect that is refused (the listener closed after the propagation
window) is not a request and is counted apart.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

REQUEST = (b"POST /eager HTTP/1.1\r\nHost: drain-proxy\r\nContent-Type: text/plain\r\n"
           b"Content-Length: 5\r\n\r\nhello")
IO_TIMEOUT_S = 10.0


@dataclass
class EagerCounts:
    ok: int = 0
    other_status: int = 0
    lost: int = 0  # EOF, reset or timeout after the request was written: never retried
    refused: int = 0  # connects refused (the listener closed): no request was sent
    closes_announced: int = 0  # responses that said Connection: close


class _ResponseLost(Exception):
    """The connection ended (or stalled) before the whole response arrived."""


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bool]:
    """Read one response with a Content-Length body; (status, said Connection: close)."""
    while b"\r\n\r\n" not in buffer:
        _fill(sock, buffer)
    head_end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:head_end]).lower()
    del buffer[:head_end]
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buffer) < length:
        _fill(sock, buffer)
    del buffer[:length]
    return status, b"\r\nconnection: close\r\n" in head


def _fill(sock: socket.socket, buffer: bytearray) -> None:
    try:
        chunk = sock.recv(65536)
    except (ConnectionError, TimeoutError) as error:
        raise _ResponseLost(str(error)) from None
    if not chunk:
        raise _ResponseLost("EOF")
    buffer += chunk


def _one_connection(port: int, pause_s: float, stop: threading.Event,
                    counts: EagerCounts, lock: threading.Lock) -> None:
    sock: socket.socket | None = None
    buffer = bytearray()
    while not stop.is_set():
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
            except ConnectionRefusedError:
                with lock:
                    counts.refused += 1
                time.sleep(0.01)
                continue
            buffer.clear()
        try:
            sock.sendall(REQUEST)
            status, closing = _read_response(sock, buffer)
        except (_ResponseLost, OSError):
            with lock:
                counts.lost += 1
            sock.close()
            sock = None
            continue
        with lock:
            if status == 200:
                counts.ok += 1
            else:
                counts.other_status += 1
            counts.closes_announced += closing
        if closing:
            sock.close()
            sock = None
        if pause_s:
            time.sleep(pause_s)
    if sock is not None:
        sock.close()


class EagerClients:
    """``connections`` eager connections to 127.0.0.1:``port`` in threads; half of them
    write the next request at once, half after ``pause_ms`` (a client with a little work
    between requests, the case that met EOFs in the window)."""

    def __init__(self, port: int, connections: int, pause_ms: float) -> None:
        self.counts = EagerCounts()
        self._stop = threading.Event()
        lock = threading.Lock()
        self._threads = [
            threading.Thread(target=_one_connection, daemon=True,
                             args=(port, pause_ms / 1000 if n % 2 else 0.0, self._stop,
                                   self.counts, lock))
            for n in range(connections)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> EagerCounts:
        self._stop.set()
        for thread in self._threads:
            thread.join(IO_TIMEOUT_S + 1)
        return self.counts
