"""The app every target fronts: what it serves, and a built-in server for machines without nginx.

The app must cost the same for every target, so the only thing that changes between rows is the
proxy.  It serves two fixed bodies: a tiny one, where per-request overhead dominates, and 64 KiB,
where copying bytes does (several reads and writes per response, flow control in play).  nginx
serves them when installed (`return 200` and a file); this module is the fallback, and it is run
as its own process (`python app.py PORT`) so it can be pinned like nginx.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Body:
    """A response body the app serves at `path`; `name` is the CLI/JSON key."""

    name: str
    path: str
    payload: bytes
    label: str


BODIES = {b.name: b for b in (
    Body("tiny", "/", b"ok", "tiny body (2 B)"),
    Body("64k", "/64k", b"x" * 65536, "64 KiB body"),
)}
BY_PATH = {b.path.encode(): b.payload for b in BODIES.values()}


STREAM_PATH = b"/stream"  # 10 MiB written 256 KiB at a time, at the reader's pace
STREAM_CHUNK, STREAM_CHUNKS = b"s" * 262144, 40


async def stream(w: asyncio.StreamWriter) -> None:
    """A large response that costs the app only one chunk per connection (for slow-reader
    memory measurements of the proxy, bench_memory.py)."""
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(STREAM_CHUNK) * STREAM_CHUNKS))
    for _ in range(STREAM_CHUNKS):
        w.write(STREAM_CHUNK)
        await w.drain()


async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1: answer each GET with its body (unknown paths get the tiny one)."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while head := await r.readuntil(b"\r\n\r\n"):
            if head.split(b" ", 2)[1] == STREAM_PATH:
                await stream(w)
                continue
            body = BY_PATH.get(head.split(b" ", 2)[1], b"ok")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            if b"connection: close" in head.lower():
                break
            await w.drain()
    w.close()


async def serve(port: int) -> None:
    """Serve until killed; a large backlog so 64 connections opening at once are not refused."""
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
