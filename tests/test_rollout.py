"""The rollout simulation in-process at a tiny scale, and ``drain-proxy demo`` as a command.

Each setup runs the real schedule (real sockets on 127.0.0.1, the real proxy) with
a 0.4 s routing delay and a 0.7 s window, so a run takes about 1.5 s.  What is
asserted is each setup's mechanism: the naive app refuses the connections still
routed to it, a preStop sleep fixes that but cuts what is in flight when it ends,
and drain-proxy loses nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.rollout.clients import CUT, REFUSED
from proxy.rollout.pods import Setup
from proxy.rollout.report import ScenarioResult
from proxy.rollout.scenario import RolloutConfig, run_setup

from conftest import Run
from helpers import child_env

TINY = RolloutConfig(propagation_delay_s=0.4, window_s=0.7, before_s=0.3, keep_alive_clients=4,
                     per_request_clients=2, idle_clients=2, slow_s=0.3, slow_lead_s=0.1,
                     max_requests_per_connection=10, drain_timeout_s=3.0)


def _timeline(result: ScenarioResult) -> str:
    return "\n".join(event.text for event in result.events)


def test_drain_proxy_loses_no_request(run: Run[ScenarioResult]) -> None:
    result = run(run_setup(Setup.DRAIN_PROXY, TINY))
    assert result.requests > 100
    # Retries are not asserted: an idle client that sends at the very instant the
    # drain closes idle connections may legitimately be retried (never failed).
    assert result.failures == {}, result.failures
    assert (result.rotations or 0) > 0, "keep-alive clients were rebalanced while serving"
    # The slow download crossed the end of the window and was waited for.
    assert TINY.window_s - 0.01 <= result.drain_s < TINY.window_s + TINY.slow_s + 1.0
    text = _timeline(result)
    assert "slow download answered by pod A" in text
    assert "drained: " in text and ", 0 requests cut" in text


def test_naive_app_refuses_the_connections_still_routed_to_it(
        run: Run[ScenarioResult]) -> None:
    result = run(run_setup(Setup.NAIVE, TINY))
    assert result.failures.get(REFUSED, 0) > 0, result.failures
    assert result.drain_s < 0.5
    assert result.rotations == 0


def test_prestop_sleep_stops_refusals_but_cuts_what_is_in_flight(
        run: Run[ScenarioResult]) -> None:
    result = run(run_setup(Setup.PRESTOP_SLEEP, TINY))
    assert REFUSED not in result.failures, "the sleep outlasts the routing delay"
    assert result.failures.get(CUT, 0) >= 1, "the slow download is cut at exit"
    assert "slow download failed: cut mid-response" in _timeline(result)
    assert TINY.window_s - 0.01 <= result.drain_s < TINY.window_s + 0.5  # busy CI margin


def test_demo_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--window", "soon"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drain-proxy demo: error: argument --window")


def test_demo_is_only_a_leading_word(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "127.0.0.1:0", "demo"]) == 2
    assert "unrecognized arguments: demo" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_command_prints_the_comparisons_and_leaves_no_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "proxy", "demo"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=child_env(),
                            check=False)
    assert result.returncode == 0, result.stderr
    http, _, grpc = result.stdout.partition("\ngRPC: ")
    setups = ("naive", "preStop sleep", "drain-proxy adaptive", "drain-proxy")
    rows = {}
    for line in http.splitlines():
        setup = next((name for name in setups if line.startswith(name + " ")), None)
        if setup is not None and "%" in line:
            rows[setup] = line.removeprefix(setup).split()
    assert set(rows) == set(setups), result.stdout
    # requests, failed, success, %, retried, rotations, window, s, drain, s
    for setup in ("drain-proxy", "drain-proxy adaptive"):
        assert rows[setup][1] == "0" and rows[setup][2] == "100.00", result.stdout
    assert int(rows["naive"][1]) > 0
    # The adaptive window ends once routing has moved (1 s), long before its 10 s maximum.
    assert float(rows["drain-proxy adaptive"][6]) < 3.0, result.stdout
    assert "The adaptive window ended after" in result.stdout
    assert "Timeline of the drain-proxy run" in result.stdout
    assert "[3/4] drain-proxy" in result.stderr  # the progress lines
    assert "[4/4] drain-proxy adaptive" in result.stderr
    # The gRPC group (grpcio is in the test extra): drain-proxy fails no call, and only
    # rotation brings the new pod any call.
    http2 = [line.split() for line in grpc.splitlines() if line.startswith("drain-proxy (HTTP/2)")]
    assert len(http2) == 1 and http2[0][3] == "0", grpc
    assert "no rotation                pod B served 0 of" in grpc, grpc
    assert list(tmp_path.iterdir()) == []
