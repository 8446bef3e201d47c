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


@pytest.mark.slow
def test_drain_proxy_loses_nothing_where_the_naive_pod_loses_requests() -> None:
    process = subprocess.Popen([sys.executable, "-W", "error", str(SCRIPT), *SHORT],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=ROOT)
    try:
        stdout, stderr = process.communicate(timeout=50)
    finally:
        process.kill()
    if process.returncode == 2:
        pytest.skip(stderr.strip().splitlines()[-1])
    assert process.returncode == 0, stderr[-2000:]
    assert namespaces_of(process.pid) == [], "the run must delete its namespaces"
    rows = table_rows(stdout)
    # columns: setup, requests, failed, failed by kind, success, retried, served A / B, exit
    naive, drain = rows["naive"], rows["drain-proxy"]
    assert int(drain[1]) > 0 and int(drain[2]) == 0, stdout
    assert drain[4] == "100.00 %", stdout
    assert int(naive[2]) >= 1 and "refused" in naive[3], stdout
    for row in (naive, drain):
        served_a, served_b = (int(n) for n in row[6].split(" / "))
        assert served_a > 0 and served_b > 0, stdout


def test_help_names_the_flags() -> None:
    """``--help`` works everywhere, root or not, namespaces or not."""
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                         text=True, timeout=30, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    for flag in ("--propagation-lag", "--window", "--drain-timeout", "--setups",
                 "--keep-alive-clients", "--per-request-clients"):
        assert flag in res.stdout
