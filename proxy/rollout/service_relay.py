"""The simulated Service's address for clients that open real TCP connections (gRPC
channels): kube-proxy's DNAT and conntrack as a relay.

kube-proxy rewrites a connection's first packet to one ready endpoint, and conntrack
keeps every later packet of that connection on it, whatever the endpoints become.  So
the relay asks ``Endpoints`` once per accepted connection and pipes bytes to that pod
until either side closes.  A pod that refuses makes the client's connection reset, as a
SYN to a pod that is gone is answered.
"""

from __future__ import annotations

import asyncio
import contextlib

from proxy.rollout.endpoints import Endpoints, NoEndpoints
from proxy.tcp.tunnel import reset


class ServiceRelay:
    """The Service's address: each new connection goes to the pod ``Endpoints`` picks
    then, and stays there (kube-proxy's DNAT and conntrack).  A pod that refuses makes
    the client's connection reset, as a SYN to a pod that is gone is."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._route, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        app_writer: asyncio.StreamWriter | None = None
        try:
            try:
                _, port = self.endpoints.pick()
                app_reader, app_writer = await asyncio.open_connection("127.0.0.1", port)
            except (OSError, NoEndpoints):
                reset(writer.transport)  # type: ignore[arg-type]
                return
            await asyncio.gather(_pipe(reader, app_writer), _pipe(app_reader, writer))
        except asyncio.CancelledError:
            pass  # the run is over
        finally:
            for end in (writer, app_writer):
                if end is not None:
                    end.close()
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await end.wait_closed()
            self._pipes.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """One direction; an EOF is passed on, a reset too (RuntimeError: uvloop's word for
    a transport the other direction has closed already)."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if not sink.is_closing() and sink.can_write_eof():
            sink.write_eof()
    except (OSError, RuntimeError):
        if not sink.is_closing():
            reset(sink.transport)  # type: ignore[arg-type]
