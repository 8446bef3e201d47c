"""The adaptive propagation window on real connections: sources are the clients' own
loopback addresses (127.0.0.x are all local on Linux), each a "router" that stops
sending new connections at its own moment after the trigger."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request

import pytest

from proxy.server import ProxyServer
from proxy.settings import SettingsError, parse_settings

from conftest import Run
from helpers import Client, ParsedRequest, Reply, app_and_proxy, echo_handler, sample

WINDOWS = "drain_proxy_propagation_windows_total"


async def connect_from(source: str, port: int) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return Client(reader, writer)


async def router(source: str, port: int, interval_s: float, stop: asyncio.Event,
                 refused: list[str]) -> int:
    """A client whose every request is a new connection from ``source`` until ``stop``,
    never retrying: a refused or failed request is recorded, not hidden."""
    served = 0
    while not stop.is_set():
        try:
            client = await connect_from(source, port)
            response = await client.request()
            client.close()
        except OSError as error:
            refused.append(f"{source}: {error!r}")
            return served
        assert response.status == 200
        served += 1
        await asyncio.sleep(interval_s)
    return served


def drain_summary(proxy: ProxyServer) -> dict[str, object]:
    summary = proxy.ctx.timeline.summary(0.0)["propagation_window"]
    assert isinstance(summary, dict)
    return summary


def test_the_window_ends_once_every_source_has_gone_quiet(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--adaptive-window", "--propagation-window", "10",
                                 "--min-propagation-window", "0.3") as (_app, proxy):
            loop = asyncio.get_running_loop()
            refused: list[str] = []
            stops = {source: asyncio.Event() for source in ("127.0.0.2", "127.0.0.3")}
            routers = [loop.create_task(router(source, proxy.port, 0.01, stop, refused))
                       for source, stop in stops.items()]
            await asyncio.sleep(0.3)  # history before the trigger
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            triggered = loop.time()
            await asyncio.sleep(0.2)
            stops["127.0.0.2"].set()  # its router moved at +0.2 s
            await asyncio.sleep(0.4)
            stops["127.0.0.3"].set()  # this one at +0.6 s
            served = await asyncio.gather(*routers)
            await proxy.coordinator.wait_drained()
            lasted = sample(proxy, "drain_proxy_propagation_window_seconds")
            assert refused == []
            assert all(n > 10 for n in served), served
            assert 0.6 < lasted < 5.0, lasted  # the maximum is 10 s
            assert loop.time() - triggered < 6.0
            assert sample(proxy, WINDOWS, {"reason": "routing_moved"}) == 1
            assert sample(proxy, "drain_proxy_propagation_window_max_seconds") == 10
            summary = drain_summary(proxy)
            assert summary["ended_by"] == "routing_moved" and summary["adaptive"] is True
            sources = summary["sources"]
            assert isinstance(sources, list)
            assert [s["address"] for s in sources] == ["127.0.0.3", "127.0.0.2"]
            assert all(s["state"] == "quiet" and s["arrivals_in_window"] > 5 for s in sources)
            lines = [r.getMessage() for r in caplog.records
                     if r.getMessage().startswith("propagation window ended")]
            assert len(lines) == 1
            # The last router moved at +0.6 s; no silence under 1 s counts.
            assert re.search(r"after \d\.\d\d s: routing moved: 2 sources quiet, last arrival "
                             r"127\.0\.0\.3 at \+0\.\d\d s$", lines[0]), lines[0]
            assert lasted >= 1.5, lasted

    with caplog.at_level(logging.INFO, logger="drain_proxy.drain"):
        run(scenario())


def test_an_app_stall_silences_closed_loop_clients_without_ending_the_window(
        run: Run[None]) -> None:
    """Clients that send their next request only once answered go silent when the app
    stalls; their requests in flight here keep their source from being judged quiet, and
    its silence counts from the answers."""
    async def stalling(request: ParsedRequest) -> Reply:
        await stall_over.wait()
        return await echo_handler(request)

    stall_over = asyncio.Event()
    stall_over.set()

    async def scenario() -> None:
        async with app_and_proxy("--adaptive-window", "--propagation-window", "10",
                                 "--min-propagation-window", "0.2",
                                 handler=stalling) as (_app, proxy):
            loop = asyncio.get_running_loop()
            refused: list[str] = []
            stop = asyncio.Event()
            client = loop.create_task(router("127.0.0.5", proxy.port, 0.005, stop, refused))
            await asyncio.sleep(0.3)
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            triggered = loop.time()
            await asyncio.sleep(0.3)
            stall_over.clear()  # the app stalls for 1.6 s, longer than the 1 s floor
            await asyncio.sleep(1.6)
            stall_over.set()
            await asyncio.sleep(0.4)
            stop.set()
            stopped = loop.time() - triggered
            served = await client
            await proxy.coordinator.wait_drained()
            assert refused == [], refused
            assert served > 20
            lasted = sample(proxy, "drain_proxy_propagation_window_seconds")
            assert lasted > stopped, (lasted, stopped)
            assert sample(proxy, WINDOWS, {"reason": "routing_moved"}) == 1

    run(scenario())


def test_a_sparse_source_holds_the_window_to_its_maximum(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--adaptive-window", "--propagation-window", "1.2",
                                 "--min-propagation-window", "0.2") as (_app, proxy):
            sparse = await connect_from("127.0.0.4", proxy.port)
            await sparse.request()
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            response = await sparse.request()  # told to close: reconnects once
            sparse.close()
            assert response.header("connection") == b"close"
            again = await connect_from("127.0.0.4", proxy.port)
            await again.request()
            again.close()
            await proxy.coordinator.wait_drained()
            assert sample(proxy, "drain_proxy_propagation_window_seconds") >= 1.2
            assert sample(proxy, WINDOWS, {"reason": "maximum"}) == 1
            summary = drain_summary(proxy)
            assert summary["ended_by"] == "maximum"
            assert summary["sources"] == [{
                "address": "127.0.0.4", "state": "sparse", "arrivals_in_window": 1,
                "last_arrival_seconds": summary["sources"][0]["last_arrival_seconds"],  # type: ignore[index]
                "quiet_after_seconds": None}]
            assert any("maximum reached: 1 source too sparse to judge (127.0.0.4)"
                       in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="drain_proxy.drain"):
        run(scenario())


def test_without_traffic_the_window_lasts_its_minimum(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--adaptive-window", "--propagation-window", "10",
                                 "--min-propagation-window", "0.2") as (_app, proxy):
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            await proxy.coordinator.wait_drained()
            assert 0.2 <= sample(proxy, "drain_proxy_propagation_window_seconds") < 2.0
            assert sample(proxy, WINDOWS, {"reason": "no_traffic"}) == 1

    run(scenario())


def test_a_fixed_window_reports_its_length_and_reason(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0.3") as (_app, proxy):
            client = await Client.open(proxy.port)
            await client.request()
            client.close()
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            await proxy.coordinator.wait_drained()
            assert 0.3 <= sample(proxy, "drain_proxy_propagation_window_seconds") < 1.5
            assert sample(proxy, WINDOWS, {"reason": "fixed"}) == 1
            assert proxy.ctx.arrivals is None  # nothing is recorded when it is off
            summary = drain_summary(proxy)
            assert summary["ended_by"] == "fixed" and summary["adaptive"] is False

    run(scenario())


def test_a_second_signal_ends_the_adaptive_window_at_once(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--adaptive-window", "--propagation-window", "10",
                                 "--min-propagation-window", "5") as (_app, proxy):
            assert proxy.coordinator is not None
            proxy.coordinator.on_signal("SIGTERM")
            proxy.coordinator.on_signal("SIGTERM")
            await asyncio.wait_for(proxy.coordinator.wait_drained(), 3.0)
            assert sample(proxy, WINDOWS, {"reason": "forced"}) == 1

    run(scenario())


def test_the_drain_summary_on_the_admin_port_carries_the_window(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--adaptive-window", "--propagation-window", "2",
                                 "--min-propagation-window", "0.1") as (_app, proxy):
            url = f"http://127.0.0.1:{proxy.admin_port}/drain"

            def drain() -> dict[str, object]:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    return dict(json.load(answer))

            summary = await asyncio.to_thread(drain)
            window = summary["propagation_window"]
            assert isinstance(window, dict)
            assert window["ended_by"] == "no_traffic" and window["sources"] == []

    run(scenario())


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--adaptive-window", "--propagation-window", "3", "--min-propagation-window", "5"], {},
     "--min-propagation-window 5: longer than --propagation-window 3, the window's maximum; "
     "allowed: 0 to 3"),
    (["--min-propagation-window", "soon"], {}, "--min-propagation-window: invalid value"),
    ([], {"DRAIN_PROXY_ADAPTIVE_WINDOW": "sometimes"}, "DRAIN_PROXY_ADAPTIVE_WINDOW: invalid"),
])
def test_bad_window_settings_stop_start_up_with_one_line(
        argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse_settings(argv, env)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_adaptive_window_is_off_by_default_and_on_from_its_variable() -> None:
    assert not parse_settings([], {}).adaptive_window
    on = parse_settings(["--propagation-window", "0.5"], {"DRAIN_PROXY_ADAPTIVE_WINDOW": "true",
                                                           "DRAIN_PROXY_MIN_PROPAGATION_WINDOW":
                                                           "0.2"})
    assert on.adaptive_window and on.min_propagation_window_s == 0.2
    # A fixed window shorter than the (unused) minimum is fine.
    assert parse_settings(["--propagation-window", "0.5"], {}).propagation_window_s == 0.5
