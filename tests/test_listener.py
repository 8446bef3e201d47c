"""Closing the listener serves what is already queued in the kernel backlog."""

from __future__ import annotations

import asyncio

from conftest import Run
from helpers import Client, app_and_proxy


def test_connections_waiting_in_the_backlog_are_served_when_the_listener_closes(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            port = proxy.port
            proxy.listener.pause()  # as at --max-connections: new connections queue
            queued = [await Client.open(port) for _ in range(3)]
            answers = [asyncio.get_running_loop().create_task(c.request("GET", f"/q{i}"))
                       for i, c in enumerate(queued)]
            done, _ = await asyncio.wait(answers, timeout=0.2)
            assert not done, "paused: nothing is accepted"
            proxy.listener.close()  # what the drain does at the end of the window
            bodies = sorted([(await answer).body for answer in answers])
            assert bodies == [b"GET /q0 0", b"GET /q1 0", b"GET /q2 0"]
            try:
                await Client.open(port)
                raise AssertionError("a closed listener must refuse")
            except ConnectionRefusedError:
                pass
            for client in queued:
                client.close()

    run(scenario())
