"""The latency benchmark runs end to end and its outputs make sense.

The numbers are not checked (a CI machine is too noisy for that); what is checked is that the
one documented command works: it starts the targets, prints the tables, and writes a JSON file
with nonzero figures and a real PNG.  The built-in app and load client are forced where a test
must behave the same on machines with and without nginx and wrk; they are also what a fresh
machine falls back to.  The fast test runs without matplotlib (tables only); the slow ones
(in CI) draw the chart and use every target with whatever tools are installed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_latency.py"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the benchmark reads CPU time from /proc")


def run_bench(out: Path, *args: str,
              python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """A 1 s run at 1 connection, warnings as errors (as in pytest), no warm-up."""
    argv = [sys.executable, "-W", "error", *python_flags, str(BENCH), "--connections", "1",
            "--duration", "1", "--repeat", "1", "--warmup", "0", "--out", str(out), *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning" not in res.stderr.lower(), res.stderr[-2000:]
    return res


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk; fails on anything else."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def rows(stdout: str, label: str) -> list[list[str]]:
    """The cells of every table row for one target."""
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith(f"| {label} |")]


def check_json(path: Path, targets: tuple[str, ...], bodies: tuple[str, ...]) -> dict[str, Any]:
    """Every (target, body) measured once, with nonzero figures and CPU billed to proxies only."""
    doc: dict[str, Any] = json.loads(path.read_text())
    results = {(r["target"], r["body"]): r for r in doc["results"]}
    assert set(results) == {(t, b) for t in targets for b in bodies}
    for (target, _), r in results.items():
        assert r["rps"] > 0 and r["requests"] > 0 and r["errors"] == 0
        assert 0 < r["p50_us"] <= r["p75_us"] <= r["p90_us"] <= r["p99_us"]
        assert (r["cpu_us_per_req"] is None) == (target == "direct")
        assert target == "direct" or r["cpu_us_per_req"] > 0
        assert len(r["samples"]) == 1
    assert doc["errors"] == {}
    return doc


def test_tables_and_json_without_matplotlib(tmp_path: Path) -> None:
    """-S hides site-packages: the benchmark itself needs only the standard library."""
    res = run_bench(tmp_path, "--targets", "direct,drain-proxy-uvloop", "--bodies", "64k",
                    "--load-client", "python", "--app", "python", python_flags=("-S",))

    first = res.stdout.splitlines()[0]
    assert first.startswith("machine: ") and "pinning: " in first
    assert "### HTTP mode, 64 KiB body" in res.stdout and "TCP mode" not in res.stdout
    assert len(rows(res.stdout, "direct")) == 1
    [cells] = rows(res.stdout, "drain-proxy/uvloop")
    assert float(cells[2]) > 0 and cells[6][0] in "+-"  # req/s, added p50 vs direct
    assert float(cells[7]) > 0  # proxy CPU us/req
    doc = check_json(tmp_path / "bench_latency.json", ("direct", "drain-proxy-uvloop"), ("64k",))
    assert doc["meta"]["machine"] == first.removeprefix("machine: ")
    assert "built-in" in doc["meta"]["app"] and "built-in" in doc["meta"]["load"]
    assert "pip install '.[bench]'" in res.stderr
    assert not (tmp_path / "bench_latency.png").exists()


def test_a_baseline_build_is_measured_in_the_same_run(tmp_path: Path) -> None:
    """--baseline: each drain-proxy target also runs with another build's python, in turn
    with the rest; here the same python stands in for the other build."""
    res = run_bench(tmp_path, "--targets", "direct,drain-proxy-uvloop", "--bodies", "tiny",
                    "--load-client", "python", "--app", "python", "--baseline", sys.executable)
    assert len(rows(res.stdout, "drain-proxy/uvloop")) == 1
    [cells] = rows(res.stdout, "drain-proxy/uvloop@baseline")
    assert float(cells[2]) > 0 and float(cells[7]) > 0  # req/s, proxy CPU us/req
    assert f"baseline: @baseline rows: {sys.executable} (drain-proxy " in res.stdout
    check_json(tmp_path / "bench_latency.json",
               ("direct", "drain-proxy-uvloop", "drain-proxy-uvloop@baseline"), ("tiny",))


def test_a_baseline_without_drain_proxy_stops_with_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(BENCH), "--baseline", str(tmp_path / "python"),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=50)
    assert res.returncode == 2
    assert "--baseline" in res.stderr.splitlines()[-1]
    assert "cannot import an installed drain-proxy" in res.stderr


@pytest.mark.slow
def test_smoke_fallback_app_and_client(tmp_path: Path) -> None:
    """Both bodies through the built-in app and client, and the chart (about 7 s)."""
    stdout = run_bench(tmp_path, "--targets", "direct,drain-proxy-uvloop",
                       "--load-client", "python", "--app", "python").stdout
    assert "### HTTP mode, tiny body (2 B)" in stdout
    assert "### HTTP mode, 64 KiB body" in stdout
    assert len(rows(stdout, "direct")) == len(rows(stdout, "drain-proxy/uvloop")) == 2
    check_json(tmp_path / "bench_latency.json", ("direct", "drain-proxy-uvloop"),
               ("tiny", "64k"))
    width, height = png_size(tmp_path / "bench_latency.png")
    assert width > 300 and height > 300


@pytest.mark.slow
def test_every_target_with_installed_tools(tmp_path: Path) -> None:
    """Each target either measures or says why not (a missing tool), in both modes."""
    stdout = run_bench(tmp_path).stdout
    assert "### TCP mode, 64 KiB body" in stdout and "failed:" not in stdout
    for label in ("drain-proxy/uvloop", "drain-proxy/asyncio", "drain-proxy/tcp", "nginx-proxy",
                  "haproxy", "nginx-stream"):
        cells = rows(stdout, label)
        assert len(cells) == 2
        assert all(c[2].startswith("skipped:") or float(c[2]) > 0 for c in cells)
    doc: dict[str, Any] = json.loads((tmp_path / "bench_latency.json").read_text())
    assert all(r["rps"] > 0 for r in doc["results"])
    png_size(tmp_path / "bench_latency.png")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("hey") is None, reason="hey is missing (apt-get install hey)")
def test_the_drain_under_load_benchmark_passes_a_short_run() -> None:
    """The loop that proves the drain under hey: one short run must pass its own criteria."""
    script = ROOT / "benchmarks" / "drain_under_load.py"
    res = subprocess.run(
        [sys.executable, str(script), "--runs", "1", "--duration", "5", "--sigterm-after", "1",
         "--window", "1", "--drain-timeout", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert "**1 of 1 runs passed**" in res.stdout
    assert "eager requests lost: 0 " in res.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h2load") is None
                    or shutil.which("nghttpd", path=os.environ.get("PATH", "") + ":/usr/sbin")
                    is None, reason="h2load or nghttpd is missing (apt-get install "
                                    "nghttp2-client nghttp2-server)")
def test_the_http2_benchmark_measures_drain_proxy_against_direct_access() -> None:
    """bench_h2.py at its shortest: every row it prints for drain-proxy has a CPU figure and
    no failed request, for plain h2c and for gRPC-shaped requests."""
    script = ROOT / "benchmarks" / "bench_h2.py"
    res = subprocess.run(
        [sys.executable, str(script), "--duration", "1", "--repeat", "1",
         "--targets", "direct,drain-proxy", "--workloads", "h2c,grpc-shaped"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    proxied = [line.split("|") for line in res.stdout.splitlines()
               if line.startswith("| drain-proxy |")]
    assert len(proxied) == 2, res.stdout
    for cells in proxied:
        assert float(cells[5]) > 0 and cells[7].strip() == "0", cells


@pytest.mark.slow
def test_traefik_and_caddy_rows_measure_or_say_why_not(tmp_path: Path) -> None:
    """The peers' rows: measured, with the peer's own CPU, or skipped with the install hint."""
    stdout = run_bench(tmp_path, "--targets", "direct,traefik,caddy", "--bodies", "tiny").stdout
    for name in ("traefik", "caddy"):
        [cells] = rows(stdout, name)
        if cells[2].startswith("skipped:"):
            assert f"pip install {name}-bin" in cells[2]
            continue
        assert float(cells[2]) > 0 and float(cells[7]) > 0, cells  # req/s, proxy CPU us/req


TCP_DRAIN = ROOT / "benchmarks" / "tcp_drain.py"


def test_the_tcp_drain_benchmark_names_a_missing_tool_in_one_line() -> None:
    res = subprocess.run([sys.executable, str(TCP_DRAIN), "--workloads", "redis-full"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT,
                         env={**os.environ, "PATH": str(Path(sys.executable).parent)})
    assert res.returncode == 2
    assert res.stderr == ("tcp_drain: redis-server is not installed "
                          "(apt-get install redis-server)\n")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pgbench") is None or shutil.which("psql") is None,
                    reason="pgbench or PostgreSQL is missing (apt-get install postgresql)")
def test_the_tcp_drain_benchmark_closes_paced_pgbench_clients_between_transactions() -> None:
    """pgbench clients with pauses between transactions through this build: every one ends at
    a BEGIN, the proxy closes all of them at a quiet moment and cuts none, the server rolls
    nothing back, and the proxy exits long before its tunnel deadline."""
    res = subprocess.run(
        [sys.executable, str(TCP_DRAIN), "--workloads", "pgbench-paced", "--clients", "4",
         "--duration", "10", "--sigterm-after", "1", "--window", "0.3", "--deadline", "5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    [cells] = rows(res.stdout, "build 1")
    assert cells[1:5] == ["pgbench-paced", "4", "4", "0"], cells
    assert cells[6:9] == ["0", "0 / 0", "4 / 0"], cells
    assert float(cells[9]) < 3, cells
