"""The kernel rollout's load: HTTP/1.1 clients of the Service's virtual IP.

The clients run in a node namespace and connect to ``SERVICE_IP:SERVICE_PORT``
only; nftables picks the pod on a connection's first packet and conntrack keeps it
there, so which pod served a request is known only from the answer (the app sends
its pod's name).

Three kinds of client, none of which retries silently:

- **keep-alive**: request, think, request on the same connection, until the server
  says ``Connection: close`` or closes it (checked before each reuse, as connection
  pools do: reconnecting then is not a retry);
- **per-request**: a new connection with ``Connection: close`` for every request;
- **sparse**: a keep-alive client with one request every 1 to 2 s (its connection
  sits idle in between, as a pool's does).

With ``retry`` (the one-node run), a request that fails on a *reused* connection
before any response byte arrived is sent once more on a new connection and counted
as retried (RFC 9112 section 9.3.1 allows that for idempotent requests; a POST would
have failed).  Without it (the several-node run) that request is lost like any
other.  Everything else counts as failed, by kind: refused (RST to the SYN), reset,
closed before the response, cut mid-response, no route to the pod, timed out, error
status; each failure is also recorded with its time and its client's kind.

Run as a script, it is one node's clients in a process of its own (started with
``ip netns exec <node> python kernel_load.py ...``): it says ``ready`` on stdout,
starts its clients on a ``start`` line on stdin, prints its tally as one JSON line
every half second, and on ``stop`` (or the end of stdin) lets each client finish the
request it has under way, prints the final tally (``"final": true``) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from netns import SERVICE_IP, SERVICE_PORT

REFUSED = "refused"
RESET = "reset"
CLOSED = "closed before the response"
CUT = "cut mid-response"
UNREACHABLE = "no route"
TIMED_OUT = "timed out"
ERROR_STATUS = "error status"
KEEP_ALIVE, PER_REQUEST, SPARSE = "keep-alive", "per-request", "sparse"
SPARSE_PAUSE_S = (1.0, 2.0)
MAX_RECORDED_FAILURES = 200


@dataclass
class Tally:
    """What all clients of one run saw, updated as they go (the progress line reads it)."""

    requests: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)  # pod name -> responses
    # (time.monotonic() at the failure, kind, the client's kind), the first ones only
    lost: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def fail(self, kind: str, client: str) -> None:
        self.failures[kind] += 1
        if len(self.lost) < MAX_RECORDED_FAILURES:
            self.lost.append((time.monotonic(), kind, client))

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries,
                "failures": dict(self.failures), "served_by": dict(self.served_by),
                "lost": self.lost}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(data["requests"], data["retries"], Counter(data["failures"]),
                   Counter(data["served_by"]), [tuple(item) for item in data["lost"]])

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.failures.update(other.failures)
        self.served_by.update(other.served_by)
        self.lost.extend(other.lost)


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

    def __init__(self, tally: Tally, timeout_s: float, retry: bool = True,
                 client: str = KEEP_ALIVE) -> None:
        self._tally = tally
        self._timeout_s = timeout_s
        self._retry = retry
        self._client = client
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
            if connection is None or failure.started or not self._retry:
                self._tally.fail(failure.kind, self._client)
                return
        self._tally.retries += 1
        try:
            await self._attempt(None, keep_alive)
        except Failed as failure:
            self._tally.fail(failure.kind, self._client)

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
    sparse_clients: int = 0
    retry: bool = True
    tally: Tally = field(default_factory=Tally)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        rng = random.Random(self.seed)
        kinds = ([KEEP_ALIVE] * self.keep_alive_clients + [PER_REQUEST] * self.per_request_clients
                 + [SPARSE] * self.sparse_clients)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._client(kind, rng)) for kind in kinds]

    async def _client(self, kind: str, rng: random.Random) -> None:
        session = Session(self.tally, self.timeout_s, self.retry, kind)
        if kind == SPARSE:  # not all in step with the others' start
            await self._pause(rng.uniform(0.0, SPARSE_PAUSE_S[0]))
        while not self._stopping.is_set():
            await session.request(kind != PER_REQUEST)
            if kind == SPARSE:
                await self._pause(rng.uniform(*SPARSE_PAUSE_S))
            else:
                await self._pause(self.think_s * rng.uniform(0.5, 1.5))  # clients out of step
        session.close()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks)


async def _serve(load: Load) -> None:
    """One node's clients, driven by lines on stdin, reporting on stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def report(final: bool = False) -> None:
        sys.stdout.write(json.dumps({**load.tally.to_json(), "final": final}) + "\n")
        sys.stdout.flush()

    print("ready", flush=True)
    line = await reader.readline()
    if line.strip() == b"start":
        load.start()

        async def every_half_second() -> None:
            while True:
                await asyncio.sleep(0.5)
                report()

        reporter = loop.create_task(every_half_second())
        await reader.readline()  # "stop", or the end of stdin
        await load.stop()
        reporter.cancel()
    report(final=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="One node's clients of the Service.")
    parser.add_argument("--keep-alive", type=int, default=0, metavar="N")
    parser.add_argument("--per-request", type=int, default=0, metavar="N")
    parser.add_argument("--sparse", type=int, default=0, metavar="N")
    parser.add_argument("--think", type=float, default=0.02, metavar="S")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--retry", action="store_true",
                        help="retry once a request that failed on a reused connection "
                        "before any response byte (counted in retries)")
    args = parser.parse_args()
    load = Load(args.keep_alive, args.per_request, args.think, args.timeout, args.seed,
                sparse_clients=args.sparse, retry=args.retry)
    asyncio.run(_serve(load))


if __name__ == "__main__":
    main()


class NodeClients:
    """The orchestrator's handle on one node's load process (this file run as a script in
    the node's namespace): ``spawn``, ``start``, ``stop``; ``tally`` is its latest report."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.tally = Tally()
        self._process: asyncio.subprocess.Process | None = None
        self._final = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def spawn(self, netns: str, argv: list[str], timeout_s: float = 10.0) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, sys.executable, __file__, *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._process.stdout is not None
        async with asyncio.timeout(timeout_s):
            line = await self._process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"node {self.node}'s clients did not start: {line!r}")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            report = json.loads(line)
            self.tally = Tally.from_json(report)
            if report["final"]:
                self._final.set()
                return

    def _say(self, word: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(word.encode() + b"\n")

    def start(self) -> None:
        self._say("start")

    async def stop(self, timeout_s: float) -> Tally:
        """Stop the clients (each finishes its request under way) and return the final
        tally; a process that does not report within ``timeout_s`` is an error."""
        assert self._process is not None
        self._say("stop")
        async with asyncio.timeout(timeout_s):
            await self._final.wait()
            await self._process.wait()
        return self.tally

    async def kill(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
