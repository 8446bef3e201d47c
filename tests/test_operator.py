"""What an operator reads: --version, --help, the start-up and SIGTERM lines, log formats,
the access log, and warnings that cannot flood the log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
import sys

import pytest

from proxy import __version__
from proxy.flags import FLAGS

from conftest import Run
from helpers import (
    CHILD_CWD,
    App,
    Client,
    ProxyProcess,
    app_and_proxy,
    child_env,
    eventually,
    raw_exchange,
    running_proxy,
)

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True,
                          timeout=20, env=child_env(), cwd=CHILD_CWD, check=False)


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"drain-proxy {__version__}"


def test_help_says_what_each_flag_does_with_units_exit_codes_and_the_timeline() -> None:
    text = cli("--help").stdout
    flat = " ".join(text.split())
    squeezed = "".join(text.split())  # argparse wraps lines, at hyphens too
    for flag in FLAGS:
        assert "".join(flag.does.split()) in squeezed, flag.name
    assert "S is a number of seconds" in text
    assert "exit codes: 0 drained, nothing cut; 1 a request was cut" in flat
    assert "on SIGTERM or SIGINT (or GET /drain on the admin port):" in text
    assert "--propagation-window S" in text and "every response says Connection: close" in text


def test_a_port_in_use_reads_the_same_for_both_ports() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag, other in (("--listen", "--admin"), ("--admin", "--listen")):
            result = cli(flag, f"127.0.0.1:{port}", other, "127.0.0.1:0")
            assert result.returncode == 2
            assert result.stderr.strip().splitlines()[-1].startswith(
                f"drain-proxy: error: {flag} 127.0.0.1:{port}: cannot listen: ")


def test_admin_on_the_traffic_port_is_refused_in_one_line() -> None:
    result = cli("--listen", "0.0.0.0:8000", "--admin", "127.0.0.1:8000")
    assert result.returncode == 2
    assert result.stderr.strip() == ("drain-proxy: error: --admin 127.0.0.1:8000: the same port "
                                     "as --listen 0.0.0.0:8000; allowed: another port")


def test_json_log_lines_have_rfc3339_times_and_counts_as_fields(run: Run[None]) -> None:
    async def scenario() -> None:
        app = await App().start()
        proxy = await ProxyProcess.start(app.port, "--log-format", "json",
                                         "--propagation-window", "0", "--drain-timeout", "1",
                                         "--drain-token", "t")
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        await app.stop()
        entries = [json.loads(line) for line in proxy.log_text().splitlines()]
        assert all(RFC3339_MS.match(entry["time"]) for entry in entries), entries
        started = next(e for e in entries if e["message"].startswith("listening on"))
        assert started["port"] == proxy.port and started["admin_port"] == proxy.admin_port
        assert started["propagation_window_s"] == 0 and started["drain_timeout_s"] == 1
        assert started["build"] in ("compiled", "pure-python") and started["mode"] == "http"
        drained = next(e for e in entries if e.get("phase") == "drained")
        assert drained["cut"] == 0 and drained["connections"] == 0
        plan = next(e for e in entries if e["message"].startswith("SIGTERM:"))
        assert plan["message"] == ("SIGTERM: readiness failing; accepting for 0 s; exit by 1 s; "
                                   "signal again to stop now")

    run(scenario())


def test_text_log_lines_have_rfc3339_times_and_say_what_the_drain_will_do(
        run: Run[None]) -> None:
    async def scenario() -> None:
        app = await App().start()
        proxy = await ProxyProcess.start(app.port, "--propagation-window", "0.2",
                                         "--drain-timeout", "3", "--termination-grace-period",
                                         "10")
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        await app.stop()
        lines = proxy.log_text().splitlines()
        assert all(RFC3339_MS.match(line.split(" ", 1)[0]) for line in lines), lines
        text = proxy.log_text()
        assert "window 0.2 s, drain timeout 3 s, grace period 10 s: exit by 3.2 s" in text
        assert "SIGTERM: readiness failing; accepting for 0.2 s; exit by 3.2 s; signal again" \
            in text
        assert re.search(r"phase drained \(after draining, [\d.]+s\) .*cut=0", text)

    run(scenario())


def test_the_access_log_has_path_status_bytes_and_durations(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--access-log") as (_app, proxy):
            client = await Client.open(proxy.port)
            await client.request("GET", "/some/path?q=1")
            client.close()

    with caplog.at_level(logging.INFO, logger="drain_proxy.access"):
        run(scenario())
    [record] = [r for r in caplog.records if r.name == "drain_proxy.access"]
    line = record.getMessage()
    assert re.match(r'^127\.0\.0\.1 "GET /some/path\?q=1 HTTP/1\.1" 200 \d+ [\d.]+ [\d.]+$', line)
    entry = record.fields  # type: ignore[attr-defined]
    assert entry["path"] == "/some/path?q=1" and entry["status"] == 200
    assert entry["bytes"] == len(b"GET /some/path?q=1 0")  # the echo app's body
    assert 0 < entry["upstream_s"] <= entry["duration_s"]


def test_upstream_errors_after_the_last_summary_are_logged_at_exit(run: Run[None]) -> None:
    """Five errors counted after the first warning, then SIGTERM before the 10 s summary:
    they were in the metrics but never in the log."""
    async def scenario() -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        proxy = await ProxyProcess.start(port, "--propagation-window", "0")
        for _ in range(6):
            reply = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                                   b"Connection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 502 ")
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        log = proxy.log_text()
        assert log.count("drain_proxy.upstream: upstream connect: ") == 1, log  # the first
        assert re.search(r"5 more upstream errors in the last [\d.]+ s \(connect 5\); "
                         r"the last: upstream connect: ", log), log
        assert log.index("5 more upstream errors") < log.index("exiting with code 0")

    run(scenario())


def test_repeated_upstream_errors_are_summarised_not_flooded(
        run: Run[None], caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        async with running_proxy(f"127.0.0.1:{port}") as proxy:
            proxy.ctx.upstream_warnings.interval_s = 0.3
            for _ in range(20):
                reply = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                                       b"Connection: close\r\n\r\n")
                assert reply.startswith(b"HTTP/1.1 502 ")
            await eventually(lambda: len(upstream_warnings()) == 2)
            await asyncio.sleep(0.4)  # one more interval: nothing more to say
            assert len(upstream_warnings()) == 2

    def upstream_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "drain_proxy.upstream"]

    run(scenario())
    first, summary = upstream_warnings()
    assert first.startswith("upstream connect: cannot connect to the app")
    assert summary.startswith("19 more upstream errors in the last 0.3 s (connect 19); the last: ")
