"""The kernel rollout's load: HTTP/1.1 clients of the Service's virtual IP.

The clients run in the node namespace and connect to ``SERVICE_IP:SERVICE_PORT``
only; nftables picks the pod on a connection's first packet and conntrack keeps it
there, so which pod served a request is known only from the answer (the app sends
its pod's name).

Two kinds of client, neither of which retries silently:

- **keep-alive**: request, think, request on the same connection, until the server
  says ``Connection: close`` or closes it (checked before each reuse, as connection
  pools do: reconnecting then is not a retry);
- **per-request**: a new connection with ``Connection: close`` for every request.

A request that fails on a *reused* connection before any response byte arrived is
sent once more on a new connection and counted as retried (RFC 9112 section 9.3.1
allows that for idempotent requests; a POST would have failed).  Everything else
counts as failed, by kind: refused (RST to the SYN), reset, closed before the
response, cut mid-response, no route to the pod, timed out, error status.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
from collections import Counter
from dataclasses import dataclass, field

from netns import SERVICE_IP, SERVICE_PORT

REFUSED = "refused"
RESET = "reset"
CLOSED = "closed before the response"
CUT = "cut mid-response"
UNREACHABLE = "no route"
TIMED_OUT = "timed out"
ERROR_STATUS = "error status"


@dataclass
class Tally:
    """What all clients of one run saw, updated as they go (the progress line reads it)."""

    requests: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)  # pod name -> responses

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Failed(Exception):
    """One attempt failed; ``started`` says whether any response byte had arrived."""

    def __init__(self, kind: str, started: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.started = started


def _kind(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, ConnectionResetError):
        return RESET
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return UNREACHABLE
    return CLOSED


class Connection:
    """One client connection through the Service."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls) -> Connection:
        try:
            return cls(*await asyncio.open_connection(SERVICE_IP, SERVICE_PORT))
        except OSError as exc:
            raise Failed(_kind(exc), started=False) from None

    def closed_by_peer(self) -> bool:
        return (self.reader.at_eof() or self.reader.exception() is not None
                or self.writer.is_closing())

    async def get(self, close: bool) -> tuple[str, bool]:
        """One GET /; the pod that answered, and whether the connection stays open."""
        extra = "Connection: close\r\n" if close else ""
        self.writer.write(f"GET / HTTP/1.1\r\nHost: web\r\n{extra}\r\n".encode())
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise Failed(CUT if exc.partial else CLOSED, bool(exc.partial)) from None
        except OSError as exc:
            raise Failed(_kind(exc), started=False) from None
        status, length, server_closes = _parse_head(head)
        try:
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, OSError):
            raise Failed(CUT, started=True) from None
        if not 200 <= status < 300:
            raise Failed(ERROR_STATUS, started=True)
        return body.decode(errors="replace").strip(), not (close or server_closes)

    def close(self) -> None:
        self.writer.close()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length (every response here has one) and ``Connection: close``."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    return status, int(headers.get("content-length", "0")), headers.get("connection") == "close"


class Session:
    """One client program: reuse its connection, reconnect, retry once as RFC 9112 allows."""

    def __init__(self, tally: Tally, timeout_s: float) -> None:
        self._tally = tally
        self._timeout_s = timeout_s
        self._connection: Connection | None = None

    async def request(self, keep_alive: bool) -> None:
        self._tally.requests += 1
        connection, self._connection = self._connection, None
        if connection is not None and connection.closed_by_peer():
            connection.close()
            connection = None
        try:
            await self._attempt(connection, keep_alive)
            return
        except Failed as failure:
            if connection is None or failure.started:
                self._tally.failures[failure.kind] += 1
                return
        self._tally.retries += 1
        try:
            await self._attempt(None, keep_alive)
        except Failed as failure:
            self._tally.failures[failure.kind] += 1

    async def _attempt(self, connection: Connection | None, keep_alive: bool) -> None:
        try:  # bounds the connect too: a SYN to an unplugged pod is never answered
            async with asyncio.timeout(self._timeout_s):
                if connection is None:
                    connection = await Connection.open()
                pod, keep = await connection.get(close=not keep_alive)
        except TimeoutError:
            if connection is not None:
                connection.close()
            raise Failed(TIMED_OUT, started=connection is not None) from None
        except Failed:
            if connection is not None:
                connection.close()
            raise
        self._tally.served_by[pod] += 1
        if keep:
            self._connection = connection
        else:
            connection.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class Load:
    """The clients of one run; ``stop`` ends them after the request each has under way."""

    keep_alive_clients: int
    per_request_clients: int
    think_s: float
    timeout_s: float
    seed: int
    tally: Tally = field(default_factory=Tally)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        rng = random.Random(self.seed)
        kinds = [True] * self.keep_alive_clients + [False] * self.per_request_clients
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._client(keep_alive, rng)) for keep_alive in kinds]

    async def _client(self, keep_alive: bool, rng: random.Random) -> None:
        session = Session(self.tally, self.timeout_s)
        while not self._stopping.is_set():
            await session.request(keep_alive)
            pause = self.think_s * rng.uniform(0.5, 1.5)  # +-50 %: clients out of step
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
        session.close()

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks)
