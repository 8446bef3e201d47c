"""The drain and rotation in-process: what connections see and what the metrics say."""

from __future__ import annotations

import asyncio

import pytest

from conftest import Run
from helpers import Client, app_and_proxy, eventually, sample

CLOSED = "drain_proxy_connections_closed_total"


def test_drain_metrics_move_through_every_phase(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0.3", "--drain-timeout", "1") as (
                _app, proxy):
            idle = await Client.open(proxy.port)
            await idle.request()
            assert sample(proxy, "drain_proxy_phase", {"phase": "serving"}) == 1
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            assert sample(proxy, "drain_proxy_phase", {"phase": "propagating"}) == 1
            assert sample(proxy, "drain_proxy_drain_started_timestamp_seconds") > 0
            late = await Client.open(proxy.port)
            response = await late.request()
            late.close()
            assert response.header("connection") == b"close"
            assert sample(proxy, "drain_proxy_connections_accepted_while_draining_total") == 1
            assert sample(proxy, "drain_proxy_requests_served_while_draining_total") == 1
            assert 0 <= sample(proxy, "drain_proxy_last_accept_after_drain_start_seconds") < 1.0
            await proxy.coordinator.wait_drained()
            assert sample(proxy, "drain_proxy_phase", {"phase": "drained"}) == 1
            assert await idle.is_closed_by_peer(), "idle keep-alive closed when draining"
            await eventually(lambda: sample(proxy, CLOSED, {"reason": "drain"}) == 2)
            duration = sample(proxy, "drain_proxy_drain_phase_duration_seconds",
                              {"phase": "propagating"})
            assert 0.3 <= duration < 1.5  # upper bound: a busy CI runner
            assert sample(proxy, "drain_proxy_requests_cut_total") == 0
            idle.close()

    run(scenario())


def test_idle_keep_alive_survives_the_window_and_is_told_to_close(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0.5") as (_app, proxy):
            client = await Client.open(proxy.port)
            await client.request()
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            # Mid-window the idle connection is still open and still served.
            response = await client.request()
            assert response.status == 200 and response.header("connection") == b"close"
            assert await client.is_closed_by_peer()
            client.close()

    run(scenario())


def test_readiness_keep_policy_stays_ready_in_the_window(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--propagation-window", "0.5",
                                 "--readiness-on-drain", "keep") as (_app, proxy):
            admin = await Client.open(proxy.admin_port)
            assert proxy.coordinator is not None
            proxy.coordinator.trigger("test")
            assert (await admin.request("GET", "/readyz")).status == 200
            await proxy.coordinator.wait_drained()
            assert (await admin.request("GET", "/readyz")).status == 503
            admin.close()

    run(scenario())


@pytest.mark.parametrize("budget", [1, 3])
def test_nth_response_carries_close_and_rotation_is_counted(run: Run[None], budget: int) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--max-requests-per-connection", str(budget),
                                 "--rotation-jitter", "0") as (_app, proxy):
            client = await Client.open(proxy.port)
            for _ in range(budget - 1):
                assert (await client.request()).header("connection") is None
            last = await client.request()
            assert last.status == 200 and last.header("connection") == b"close"
            assert await client.is_closed_by_peer()
            client.close()
            await eventually(lambda: sample(proxy, CLOSED, {"reason": "max_requests"}) == 1)

    run(scenario())


def test_rotation_budgets_are_jittered_within_bounds(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--max-requests-per-connection", "10",
                                 "--rotation-jitter", "0.3") as (_app, proxy):
            counts = []
            for _ in range(12):
                client = await Client.open(proxy.port)
                served = 0
                while True:
                    served += 1
                    if (await client.request()).header("connection") == b"close":
                        break
                client.close()
                counts.append(served)
            assert all(7 <= count <= 13 for count in counts), counts
            assert len(set(counts)) > 1, "jitter spreads the rotations"

    run(scenario())


def test_max_connection_age_rotates_on_the_next_response(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--max-connection-age", "0.2",
                                 "--rotation-jitter", "0") as (_app, proxy):
            client = await Client.open(proxy.port)
            assert (await client.request()).header("connection") is None
            await asyncio.sleep(0.25)  # the connection ages (the thing under test)
            assert (await client.request()).header("connection") == b"close"
            client.close()
            await eventually(lambda: sample(proxy, CLOSED, {"reason": "max_age"}) == 1)

    run(scenario())


def test_metrics_endpoint_lists_every_documented_metric(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            admin = await Client.open(proxy.admin_port)
            text = (await admin.request("GET", "/metrics")).body.decode()
            for name in ("drain_proxy_connections_active", "drain_proxy_connections_opened_total",
                         "drain_proxy_requests_in_flight", "drain_proxy_requests_total",
                         "drain_proxy_request_duration_seconds_bucket",
                         'drain_proxy_upstream_errors_total{reason="connect"}',
                         "drain_proxy_upstream_retries_total",
                         'drain_proxy_phase{phase="serving"} 1.0',
                         'drain_proxy_phase{phase="drained"} 0.0',
                         "drain_proxy_drain_requests_refused_total",
                         "drain_proxy_drains_undone_total",
                         "process_resident_memory_bytes", "process_open_fds",
                         "process_cpu_seconds_total",
                         "drain_proxy_drain_started_timestamp_seconds",
                         'drain_proxy_drain_phase_duration_seconds{phase="propagating"}',
                         "drain_proxy_connections_accepted_while_draining_total",
                         "drain_proxy_last_accept_after_drain_start_seconds",
                         "drain_proxy_requests_served_while_draining_total",
                         'drain_proxy_connections_closed_total{reason="drain_deadline"}',
                         "drain_proxy_requests_cut_total"):
                assert name in text, name
            assert "_created" not in text, "no _created series"
            assert (await admin.request("GET", "/nope")).status == 404
            assert (await admin.request("DELETE", "/drain")).status == 405
            admin.close()

    run(scenario())
