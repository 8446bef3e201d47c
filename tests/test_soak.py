"""A bounded soak: mixed load for minutes with the app restarting; nothing leaks.

Marked ``slow``: not in the default run, but in ``.ci/run``. ``SOAK_SECONDS`` (default
300) sets the duration. Runs on uvloop, the loop production uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from pathlib import Path

import pytest

from conftest import Run
from helpers import App, Client, eventually, running_proxy

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
RESTART_EVERY_S = 10.0


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Soak:
    """Clients of several kinds; a failure is a hang or a wrong body, not a 502 during a
    restart of the app (those are counted)."""

    def __init__(self, port: int, until: float) -> None:
        self.port, self.until = port, until
        self.ok = 0
        self.bad_gateway = 0
        self.rng = random.Random(1)

    def running(self) -> bool:
        return asyncio.get_running_loop().time() < self.until

    def _count(self, status: int) -> None:
        if status == 200:
            self.ok += 1
        else:
            assert status in (502, 503, 504), status
            self.bad_gateway += 1

    async def keep_alive(self) -> None:
        client = await Client.open(self.port)
        while self.running():
            try:
                response = await client.request("GET", "/k")
            except ConnectionError:  # the proxy closed it (rotation): reconnect
                client.close()
                client = await Client.open(self.port)
                continue
            self._count(response.status)
            if response.header("connection") == b"close":
                client.close()
                client = await Client.open(self.port)
        client.close()

    async def connection_per_request(self) -> None:
        while self.running():
            client = await Client.open(self.port)
            body = b"p" * self.rng.randrange(1, 20_000)
            response = await client.request("POST", "/p", headers=[("Connection", "close")],
                                            body=body)
            self._count(response.status)
            if response.status == 200:
                assert response.body == b"POST /p %d" % len(body)
            client.close()


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 120)
@pytest.mark.parametrize("loop_kind", ["uvloop"])
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_soak_with_app_restarts_leaks_nothing(run: Run[None]) -> None:
    # Every restart logs a few warnings; pytest would keep each record in memory.
    quiet = logging.getLogger("drain_proxy")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        run(_soak())
    finally:
        quiet.setLevel(level)


async def _soak() -> None:
    app = await App(record=False).start()
    port = app.port
    async with running_proxy(f"127.0.0.1:{port}", "--max-requests-per-connection", "200",
                             "--log-level", "warning") as proxy:
        await _warm_up(proxy.port)
        before = (_rss_bytes(), _open_fds(), len(asyncio.all_tasks()))
        loop = asyncio.get_running_loop()
        soak = Soak(proxy.port, loop.time() + SOAK_SECONDS)
        clients = [soak.keep_alive() for _ in range(4)]
        clients += [soak.connection_per_request() for _ in range(2)]
        restarts = loop.create_task(_restart_app(app, port, soak))
        await asyncio.gather(*clients)
        app = await restarts
        await eventually(lambda: not proxy.ctx.connections and proxy.ctx.requests_in_flight == 0)
        await asyncio.sleep(proxy.settings.upstream_idle_timeout_s + 0.5)  # pool expires
        after = (_rss_bytes(), _open_fds(), len(asyncio.all_tasks()))
        assert soak.ok > 1000 and soak.bad_gateway < soak.ok / 10
        assert after[0] - before[0] < 20 * 1024 * 1024, (before, after)
        assert after[1] <= before[1] + 2, (before, after)
        assert after[2] <= before[2], (before, after)
    await app.stop()


async def _warm_up(port: int) -> None:
    client = await Client.open(port)
    for _ in range(50):
        await client.request()
    client.close()


async def _restart_app(app: App, port: int, soak: Soak) -> App:
    """Every few seconds the app goes away for a moment, like a container restart."""
    while soak.running():
        await asyncio.sleep(RESTART_EVERY_S)
        await app.stop()
        await asyncio.sleep(0.3)  # the app is down (part of the scenario)
        app = App(record=False)
        with contextlib.suppress(OSError):
            await app.start(port)
    return app
