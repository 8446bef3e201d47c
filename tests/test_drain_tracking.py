"""The drain knows every accepted connection and waits for each until its deadline.

In-process: the drain is triggered directly (``coordinator.trigger``), as ``/drain``
does; the process-level sequence with real signals is in ``test_drain_process.py``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.coordinator import DrainCoordinator
from proxy.drain.lifecycle import Phase
from proxy.server import ProxyServer

from conftest import Run
from helpers import (
    Client,
    ParsedRequest,
    Reply,
    app_and_proxy,
    echo_handler,
    eventually,
    sample,
)


async def slow_handler(request: ParsedRequest) -> Reply:
    """``/slow?s=N`` answers after N seconds."""
    if request.target.startswith(b"/slow"):
        await asyncio.sleep(float(request.target.split(b"=")[1]))
    return await echo_handler(request)


async def drain_phase(proxy: ProxyServer, phase: Phase) -> None:
    await eventually(lambda: proxy.ctx.timeline.phase is phase)


def coordinator(proxy: ProxyServer) -> DrainCoordinator:
    assert proxy.coordinator is not None
    return proxy.coordinator


def test_a_request_after_the_in_flight_count_touched_zero_is_served_not_cut(
        run: Run[None]) -> None:
    """The drain used to end (or cut) as soon as the count of requests in flight touched
    zero, although a connection accepted in the window could still send one."""

    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0.2", "--drain-timeout", "5",
                                 handler=slow_handler) as (_app, proxy):
            loop = asyncio.get_running_loop()
            busy = await Client.open(proxy.port)
            slow = loop.create_task(busy.request("GET", "/slow?s=0.5"))
            await eventually(lambda: sample(proxy, "drain_proxy_requests_in_flight") == 1)
            late = await Client.open(proxy.port)  # still routed here; asks nothing yet
            coordinator(proxy).trigger("test")
            await drain_phase(proxy, Phase.DRAINING)
            assert (await slow).status == 200
            await eventually(lambda: sample(proxy, "drain_proxy_requests_in_flight") == 0)
            with pytest.raises(TimeoutError):  # the late connection may still ask
                await asyncio.wait_for(coordinator(proxy).wait_drained(), 0.2)
            response = await late.request("GET", "/after-the-window")
            assert response.status == 200 and response.header("connection") == b"close"
            await asyncio.wait_for(coordinator(proxy).wait_drained(), 2)
            assert proxy.ctx.timeline.cut_requests == 0
            assert coordinator(proxy).exit_code == 0
            for client in (busy, late):
                client.close()

    run(scenario())


def test_a_connection_that_never_asks_is_closed_cleanly_at_the_deadline(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0.1", "--drain-timeout", "0.4",
                                 ) as (_app, proxy):
            silent = await Client.open(proxy.port)
            coordinator(proxy).trigger("test")
            await drain_phase(proxy, Phase.DRAINING)
            assert not coordinator(proxy).drained
            await asyncio.wait_for(coordinator(proxy).wait_drained(), 2)
            assert await silent.is_closed_by_peer(), "a clean close: nothing was asked"
            assert coordinator(proxy).exit_code == 0 and proxy.ctx.timeline.cut_requests == 0
            await eventually(lambda: sample(proxy, "drain_proxy_connections_closed_total",
                                            {"reason": "drain"}) == 1)
            silent.close()

    run(scenario())


def test_a_request_cut_by_the_deadline_is_not_counted_as_a_response(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0", "--drain-timeout", "0.3",
                                 handler=slow_handler) as (_app, proxy):
            loop = asyncio.get_running_loop()
            client = await Client.open(proxy.port)
            cut = loop.create_task(client.request("GET", "/slow?s=1"))
            await eventually(lambda: sample(proxy, "drain_proxy_requests_in_flight") == 1)
            coordinator(proxy).trigger("test")
            await asyncio.wait_for(coordinator(proxy).wait_drained(), 2)
            with pytest.raises(ConnectionError):
                await cut
            assert sample(proxy, "drain_proxy_requests_cut_total") == 1
            assert sample(proxy, "drain_proxy_requests_total", {"code": "499"}) == 0
            assert sample(proxy, "drain_proxy_requests_served_while_draining_total") == 0
            assert coordinator(proxy).exit_code == 1
            client.close()

    run(scenario())


class _Faulty:
    """A registered connection whose drain step raises: the drain must survive it."""

    def drain(self) -> None:
        raise RuntimeError("injected fault in a connection's drain")

    def cut(self) -> int:
        raise RuntimeError("injected fault in a connection's cut")


def test_a_failure_inside_the_drain_still_cuts_what_is_left_and_ends_it(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0", "--drain-timeout", "5",
                                 handler=slow_handler) as (_app, proxy):
            loop = asyncio.get_running_loop()
            client = await Client.open(proxy.port)
            slow = loop.create_task(client.request("GET", "/slow?s=1"))
            await eventually(lambda: sample(proxy, "drain_proxy_requests_in_flight") == 1)
            faulty = _Faulty()
            proxy.ctx.connections.add(faulty)
            coordinator(proxy).trigger("test")
            await asyncio.wait_for(coordinator(proxy).wait_drained(), 2)
            assert proxy.ctx.timeline.phase is Phase.DRAINED
            assert proxy.ctx.timeline.failed and coordinator(proxy).exit_code == 1
            assert proxy.ctx.timeline.cut_requests == 1, "the real connection was still cut"
            with pytest.raises(ConnectionError):
                await slow
            proxy.ctx.connections.remove(faulty)
            client.close()

    # The injected faults are logged with their tracebacks: expected here, and only here.
    with caplog.at_level(logging.CRITICAL, logger="drain_proxy.drain"):
        run(scenario())


def test_a_drain_no_sigterm_follows_is_undone_after_the_grace_period(run: Run[None]) -> None:
    """A /drain that is not a pod termination (a stray call, a restarted container's hook)
    must not keep the pod out of its Service for good."""

    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0", "--drain-timeout", "0.2",
                                 "--termination-grace-period", "0.3") as (_app, proxy):
            admin = await Client.open(proxy.admin_port)
            assert (await admin.request("GET", "/drain")).status == 200
            assert (await admin.request("GET", "/readyz")).status == 503
            with pytest.raises(ConnectionRefusedError):
                await Client.open(proxy.port)
            await eventually(lambda: sample(proxy, "drain_proxy_drains_undone_total") == 1,
                             timeout_s=5)  # grace 0.3 s + the 2 s margin
            assert (await admin.request("GET", "/readyz")).status == 200
            client = await Client.open(proxy.port)  # listening again, on the same port
            response = await client.request()
            assert response.status == 200 and response.header("connection") is None
            assert sample(proxy, "drain_proxy_phase", {"phase": "serving"}) == 1
            again = await admin.request("GET", "/drain?wait=false")  # a later drain works
            assert again.status == 202
            for connection in (admin, client):
                connection.close()

    run(scenario())


def test_a_drain_that_sigterm_follows_is_not_undone(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0", "--drain-timeout", "0.2",
                                 "--termination-grace-period", "0.1") as (_app, proxy):
            admin = await Client.open(proxy.admin_port)
            assert (await admin.request("GET", "/drain")).status == 200
            coordinator(proxy).on_signal("SIGTERM")  # what kubelet sends after the hook
            await asyncio.wait_for(coordinator(proxy).wait_exit(), 1)
            await eventually(lambda: not coordinator(proxy).running, timeout_s=1)
            assert sample(proxy, "drain_proxy_drains_undone_total") == 0
            assert proxy.ctx.timeline.phase is Phase.DRAINED
            admin.close()

    run(scenario())


def test_a_sigterm_while_the_listener_reopens_still_exits(run: Run[None]) -> None:
    """Undoing a /drain listens again, which awaits; a SIGTERM landing in that await is a
    pod termination after all, and must not be lost under the undo (exit never came)."""

    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0", "--drain-timeout", "0.2",
                                 "--termination-grace-period", "0.1") as (_app, proxy):
            drain = coordinator(proxy)
            listener = proxy.listener
            reopen = listener.reopen

            async def reopen_with_a_sigterm_landing() -> None:
                drain.on_signal("SIGTERM")  # what a signal handler does, at this await
                await reopen()

            # Only the timing is forced: the signal and the reopen are the real ones.
            setattr(listener, "reopen", reopen_with_a_sigterm_landing)  # noqa: B010
            admin = await Client.open(proxy.admin_port)
            assert (await admin.request("GET", "/drain")).status == 200
            await asyncio.wait_for(drain.wait_exit(), 5)  # grace 0.1 s + the 2 s margin
            await eventually(lambda: not drain.running, timeout_s=1)
            assert drain.drained and proxy.ctx.timeline.phase is Phase.DRAINED
            assert sample(proxy, "drain_proxy_drains_undone_total") == 0
            with pytest.raises(ConnectionRefusedError):
                await Client.open(proxy.port)
            admin.close()

    run(scenario())


def test_a_silent_connection_taken_from_the_backlog_gets_the_grace_too(run: Run[None]) -> None:
    """At --max-connections a preconnect waits in the backlog; the drain adopts it after
    its close step, so it must be given the first-request grace when it registers."""

    async def scenario() -> None:
        async with app_and_proxy("--max-connections", "1", "--propagation-window", "0",
                                 "--drain-timeout", "10", "--header-timeout", "0.3",
                                 handler=slow_handler) as (_app, proxy):
            loop = asyncio.get_running_loop()
            busy = await Client.open(proxy.port)  # takes the only slot
            slow = loop.create_task(busy.request("GET", "/slow?s=0.2"))
            await eventually(lambda: sample(proxy, "drain_proxy_requests_in_flight") == 1)
            silent = await Client.open(proxy.port)  # in the backlog: the listener is paused
            started = loop.time()
            coordinator(proxy).trigger("test")
            assert (await slow).status == 200
            await asyncio.wait_for(coordinator(proxy).wait_drained(), 5)
            assert loop.time() - started < 2.0, "the adopted silent connection held the drain"
            assert await silent.is_closed_by_peer(), "a clean close: nothing was asked"
            assert coordinator(proxy).exit_code == 0
            for client in (busy, silent):
                client.close()

    run(scenario())
