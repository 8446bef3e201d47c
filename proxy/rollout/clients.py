"""The load: HTTP/1.1 clients that behave like real ones during a rollout, on h11.

Each client consults the Service (``Endpoints``) only when it opens a
connection, and then stays on that connection as real keep-alive clients do:
until the server says ``Connection: close`` or closes it.  Before reusing an idle
connection a client checks whether the server closed it meanwhile (as
connection pools do) and opens a new one if so; that is not a retry.

Nothing is retried silently.  A request that fails on a *reused* connection
before any response byte arrived is sent once more on a new connection and
counted as a retry: RFC 9112 section 9.3.1 lets clients retry idempotent requests
so (these are all GETs), and the count shows what a POST would have lost.  A
refused connection, a new connection closed before the response, a response cut
mid-way, an error status or a timeout is a failure.

The kinds of client:

- **keep-alive**: request, short think time, request on the same connection;
- **per-request**: a new connection with ``Connection: close`` for every request;
- **idle keep-alive**: pauses longer than the propagation window between
  requests, so it is idle when a drain looks at its connection;
- **slow**: one long-lived connection to pod A (opened before the rollout), one
  slow download started just before the end of the window and lasting past it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from proxy.rollout.endpoints import Endpoints

REFUSED = "connection refused"
CLOSED = "closed before the response"
CUT = "cut mid-response"
ERROR_STATUS = "error status"
TIMED_OUT = "timed out"
HOST = "service.local"


@dataclass
class Tally:
    """What all clients of one run saw, updated as they go (read by the progress line)."""

    requests: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class RequestFailed(Exception):
    """One attempt failed; ``response_started`` says whether any response byte came."""

    def __init__(self, cause: str, response_started: bool) -> None:
        super().__init__(cause)
        self.cause = cause
        self.response_started = response_started


class Connection:
    """One client connection, to the pod the Service picked when it was opened."""

    def __init__(self, pod: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.pod = pod
        self._reader, self._writer = reader, writer
        self._h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, pod: str, port: int) -> Connection:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            raise RequestFailed(REFUSED, response_started=False) from None
        except OSError:
            raise RequestFailed(CLOSED, response_started=False) from None
        return cls(pod, reader, writer)

    def closed_by_peer(self) -> bool:
        """The server closed or reset this connection while it was idle."""
        return (self._reader.at_eof() or self._reader.exception() is not None
                or self._writer.is_closing())

    async def get(self, target: str, close: bool) -> bool:
        """One GET; True when the server keeps the connection open for the next one."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        headers = [("Host", HOST), *([("Connection", "close")] if close else [])]
        request = self._h11.send(h11.Request(method="GET", target=target, headers=headers))
        self._writer.write((request or b"") + (self._h11.send(h11.EndOfMessage()) or b""))
        status = await self._read_response()
        if not 200 <= status < 300:
            raise RequestFailed(ERROR_STATUS, response_started=True)
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _read_response(self) -> int:
        started, status = False, 0
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:  # EOF before the response or mid-body
                raise RequestFailed(CUT if started else CLOSED, started) from None
            if event is h11.NEED_DATA:
                try:
                    data = await self._reader.read(65536)
                except OSError:  # reset
                    raise RequestFailed(CUT if started else CLOSED, started) from None
                started = started or bool(data)
                self._h11.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise RequestFailed(CUT if started else CLOSED, started)

    def close(self) -> None:
        self._writer.close()


class Session:
    """One client program's requests: reuse its connection, reconnect, retry once."""

    def __init__(self, endpoints: Endpoints, tally: Tally, timeout_s: float) -> None:
        self._endpoints = endpoints
        self._tally = tally
        self._timeout_s = timeout_s
        self._connection: Connection | None = None
        self.last_failure: str | None = None

    @property
    def connected_to(self) -> str | None:
        """The pod of the open connection, if there is one the server has not closed."""
        connection = self._connection
        return None if connection is None or connection.closed_by_peer() else connection.pod

    async def request(self, target: str = "/", keep_alive: bool = True,
                      pod: tuple[str, int] | None = None) -> str | None:
        """Send one GET; return the pod that answered, or None when it failed.

        ``pod`` bypasses the Service for a new connection (the slow client's first one).
        """
        self._tally.requests += 1
        connection, self._connection = self._connection, None
        if connection is not None and connection.closed_by_peer():
            connection.close()  # closed while idle: reconnecting is not a retry
            connection = None
        try:
            return await self._attempt(connection, target, keep_alive, pod)
        except RequestFailed as failure:
            if connection is None or failure.response_started:
                self._failed(failure.cause)
                return None
        self._tally.retries += 1  # reused connection, nothing received: RFC 9112 9.3.1
        try:
            return await self._attempt(None, target, keep_alive, None)
        except RequestFailed as failure:
            self._failed(failure.cause)
            return None

    async def _attempt(self, connection: Connection | None, target: str, keep_alive: bool,
                       pod: tuple[str, int] | None) -> str:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        if connection is None:
            name, port = pod if pod is not None else self._endpoints.pick()
            try:  # a SYN can go unanswered (a listener closing): bound the connect too
                async with asyncio.timeout_at(deadline):
                    connection = await Connection.open(name, port)
            except TimeoutError:
                raise RequestFailed(TIMED_OUT, response_started=False) from None
        try:
            async with asyncio.timeout_at(deadline):
                keep = await connection.get(target, close=not keep_alive)
        except TimeoutError:
            connection.close()
            raise RequestFailed(TIMED_OUT, response_started=True) from None
        except RequestFailed:
            connection.close()
            raise
        if keep:
            self._connection = connection
        else:
            connection.close()
        return connection.pod

    def _failed(self, cause: str) -> None:
        self._tally.failures[cause] += 1
        self.last_failure = cause

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass(frozen=True, slots=True)
class Pace:
    """When clients stop and how long they wait between requests."""

    stop_at: float  # loop time after which no client starts a request
    think_s: float
    idle_pause_s: float
    rng: random.Random

    def jittered(self, seconds: float) -> float:
        """+-50 %, so clients do not march in step."""
        return seconds * self.rng.uniform(0.5, 1.5)


async def _pause(pace: Pace, seconds: float) -> None:
    """Think time (the behaviour simulated, not synchronisation), cut at the stop."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, min(seconds, pace.stop_at - loop.time())))


async def keep_alive_client(session: Session, pace: Pace) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < pace.stop_at:
        await session.request()
        await _pause(pace, pace.jittered(pace.think_s))
    session.close()


async def per_request_client(session: Session, pace: Pace) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < pace.stop_at:
        await session.request(keep_alive=False)
        await _pause(pace, pace.jittered(pace.think_s))


async def idle_client(session: Session, pace: Pace) -> None:
    """Mostly idle: starts at a random moment, then pauses 1-1.5x the window."""
    loop = asyncio.get_running_loop()
    await _pause(pace, pace.rng.uniform(0, pace.idle_pause_s))
    while loop.time() < pace.stop_at:
        await session.request()
        await _pause(pace, pace.idle_pause_s * pace.rng.uniform(1.0, 1.5))
    session.close()


async def slow_client(session: Session, pace: Pace, pod_a: tuple[str, int], slow_at: float,
                      note: Callable[[str], None]) -> None:
    """A long-lived connection to pod A, then a slow download at ``slow_at``."""
    await session.request(pod=pod_a)  # opened before the rollout: the connection is pod A's
    await _pause(pace, slow_at - asyncio.get_running_loop().time())
    on = session.connected_to
    note("slow download starts " + (f"on its keep-alive connection to pod {on}" if on
                                    else "on a new connection (its old one was closed)"))
    answered_by = await session.request("/slow")
    note(f"slow download answered by pod {answered_by}" if answered_by
         else f"slow download failed: {session.last_failure}")
    session.close()
