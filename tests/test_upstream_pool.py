"""The pool's connects: a connect cancelled at any step (the client left meanwhile) leaves
no connection to the app open."""

from __future__ import annotations

import asyncio

from proxy.http1.upstream import UpstreamPool
from proxy.limits import RequestLimits
from proxy.settings import parse_settings

from conftest import Run
from helpers import IO_TIMEOUT_S


def test_a_connect_cancelled_at_any_step_leaves_no_app_connection_open(run: Run[None]) -> None:
    async def scenario() -> None:
        accepted: list[asyncio.StreamReader] = []
        writers: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(reader)
            writers.append(writer)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = parse_settings(["--upstream", f"127.0.0.1:{port}"], {})
        pool = UpstreamPool(settings, RequestLimits(settings))
        outcomes = set()
        # Cancel after 0, 1, 2... turns of the loop: before the connect, while it is under
        # way, once it is made but not yet handed back, and after that.
        for turns in range(12):
            task = asyncio.ensure_future(pool.connect())
            for _ in range(turns):
                await asyncio.sleep(0)  # one turn of the loop, not a wait for something
            task.cancel()
            try:
                (await task).close()  # it finished first: its caller owns it
                outcomes.add("connected")
            except asyncio.CancelledError:
                outcomes.add("cancelled")
        assert outcomes == {"connected", "cancelled"}, "both ends of the race were run"
        # A last connection, accepted after all the others (the backlog is in order).
        _, last = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(IO_TIMEOUT_S):
                while not writers or writers[-1].get_extra_info("peername") != \
                        last.get_extra_info("sockname"):
                    await asyncio.sleep(0.01)
                for reader in accepted[:-1]:
                    assert await reader.read() == b"", "every connection the app got is closed"
        finally:
            last.close()
            for writer in writers:
                writer.close()
            server.close()

    run(scenario())
