"""The kernel-path rollout (``benchmarks/kernel_rollout.py``) at a short length.

Pods in network namespaces behind nftables DNAT: what drain-proxy is for, on the
kernel's own routing.  The assertions hold by mechanism, not by luck:

- drain-proxy loses nothing: its window (1 s) outlasts the propagation lag (0.5 s),
  so its listener closes only once the rules send it no new connection, and
  conntrack keeps each open connection on it until the drain has answered it;
- the naive pod's listener is gone during the whole lag, and ``numgen random``
  sends each new connection to it with probability 1/2: over the lag the
  per-request clients open dozens of connections, so some are refused;
- both pods served requests in both runs (the DNAT really spreads the load).

With several client nodes (each its own namespace, address, rules and lag), the
adaptive window against a fixed one: every node's rules have dropped pod A by 0.8 s
after the SIGTERM, and each node opens new connections often enough to be judged
(per-request clients on every node, the ingress one sending from 0.2 s to 0.8 s), so
the adaptive window ends well before the fixed 4 s one; neither loses a request (the
clients never retry, so any failure would show).

Skips, with the command's own line, where namespaces cannot be created.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "kernel_rollout.py"
SHORT = ("--setups", "naive,drain-proxy", "--propagation-lag", "0.5", "--window", "1",
         "--before", "0.5", "--teardown", "0.5", "--tail", "0.3",
         "--keep-alive-clients", "8", "--per-request-clients", "8")
NODES_SHORT = ("--setups", "drain-proxy-adaptive,drain-proxy",
               "--node", "n1@0.3:keep-alive=2,per-request=2,think=0.02",
               "--node", "n2@0.6:keep-alive=1,per-request=2,sparse=1",
               "--node", "ingress@0.8:per-request=2,start=0.2",
               "--window", "4", "--min-window", "0.5", "--before", "2",
               "--teardown", "0.3", "--tail", "0.3")


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The Markdown table's cells by setup name."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("setup",):
            rows[cells[0]] = cells
    return rows


def namespaces_of(pid: int) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False).stdout
    return [line for line in listed.splitlines() if line.startswith(f"kr{pid}")]


def run_rollout(*argv: str, timeout_s: float = 50) -> str:
    """The script's stdout; skips where it cannot run, checks its namespaces are gone."""
    process = subprocess.Popen([sys.executable, "-W", "error", str(SCRIPT), *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=ROOT)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        process.kill()
    if process.returncode == 2:
        pytest.skip(stderr.strip().splitlines()[-1])
    assert process.returncode == 0, stderr[-2000:]
    assert namespaces_of(process.pid) == [], "the run must delete its namespaces"
    return stdout


def seconds_cell(cell: str) -> float:
    assert cell.endswith(" s"), cell
    return float(cell.removesuffix(" s"))


@pytest.mark.slow
def test_drain_proxy_loses_nothing_where_the_naive_pod_loses_requests() -> None:
    stdout = run_rollout(*SHORT)
    rows = table_rows(stdout)
    # columns: setup, requests, failed, failed by kind, success, retried, served A / B, exit
    naive, drain = rows["naive"], rows["drain-proxy"]
    assert int(drain[1]) > 0 and int(drain[2]) == 0, stdout
    assert drain[4] == "100.00 %", stdout
    assert int(naive[2]) >= 1 and "refused" in naive[3], stdout
    for row in (naive, drain):
        served_a, served_b = (int(n) for n in row[6].split(" / "))
        assert served_a > 0 and served_b > 0, stdout


@pytest.mark.slow
def test_adaptive_window_ends_before_the_fixed_one_and_loses_nothing() -> None:
    stdout = run_rollout(*NODES_SHORT)
    rows = table_rows(stdout)
    # columns: setup, requests, failed, failed by kind, success, retried, served A / B,
    # exit, window end
    adaptive, fixed = rows["drain-proxy adaptive"], rows["drain-proxy"]
    for row in (adaptive, fixed):
        assert int(row[1]) > 0 and int(row[2]) == 0, stdout
        served_a, served_b = (int(n) for n in row[6].split(" / "))
        assert served_a > 0 and served_b > 0, stdout
    assert 3.9 <= seconds_cell(fixed[8]) <= 4.1, stdout
    assert 0.5 <= seconds_cell(adaptive[8]) < seconds_cell(fixed[8]) - 1, stdout
    assert seconds_cell(adaptive[7]) < seconds_cell(fixed[7]), stdout


def test_help_names_the_flags() -> None:
    """``--help`` works everywhere, root or not, namespaces or not."""
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                         text=True, timeout=30, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    for flag in ("--propagation-lag", "--window", "--drain-timeout", "--setups",
                 "--keep-alive-clients", "--per-request-clients", "--node", "--scenario",
                 "--runs", "--prestop-sleep", "--min-window"):
        assert flag in res.stdout


def test_a_bad_node_says_what_is_allowed() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--node", "n1@soon:keep-alive=2"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert res.returncode == 2, res.stderr
    assert "allowed: NAME@LAG:keep-alive=N" in res.stderr
