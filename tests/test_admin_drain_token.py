"""The drain endpoint is reachable from every pod in the cluster: with --drain-token set,
only the caller who presents it can take the pod out of its Service."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.settings import SettingsError, parse_settings

from conftest import Run
from helpers import (
    CHILD_CWD,
    Client,
    ProxyProcess,
    app_and_proxy,
    child_env,
    eventually,
    raw_exchange,
    sample,
)

NO_TOKEN = "no --drain-token"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "s3cret", "Bearer s3cret2"])
def test_drain_without_the_token_gets_401_and_changes_nothing(run: Run[None],
                                                              authorization: str | None) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--drain-token", "s3cret") as (_app, proxy):
            admin = await Client.open(proxy.admin_port)
            headers = [("Authorization", authorization)] if authorization else []
            refused = await admin.request("POST", "/drain", headers=headers)
            assert refused.status == 401
            assert refused.header("www-authenticate") == b'Bearer realm="drain-proxy"'
            assert (await admin.request("GET", "/readyz")).status == 200
            assert not proxy.ctx.timeline.started
            assert sample(proxy, "drain_proxy_drain_requests_refused_total") == 1
            admin.close()

    run(scenario())


def test_drain_with_the_token_drains(run: Run[None], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")  # as a Secret volume holds it

    async def scenario() -> None:
        async with app_and_proxy("--drain-token-file", str(token_file),
                                 "--propagation-window", "0", "--drain-timeout", "1") as (
                _app, proxy):
            admin = await Client.open(proxy.admin_port)
            answer = await admin.request("GET", "/drain",
                                         headers=[("Authorization", "Bearer s3cret")])
            assert answer.status == 200 and proxy.ctx.timeline.started
            assert (await admin.request("GET", "/readyz")).status == 503
            admin.close()

    run(scenario())


def test_admin_answers_carry_their_reason_phrase(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            reply = await raw_exchange(proxy.admin_port,
                                       b"GET /nowhere HTTP/1.1\r\nHost: a\r\n"
                                       b"Connection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 404 Not Found\r\n")

    run(scenario())


def test_malformed_and_oversized_admin_requests_get_a_4xx_and_the_port_goes_on(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            bad = await raw_exchange(proxy.admin_port, b"GET /livez HTTP/1.1\r\nno colon\r\n\r\n")
            assert bad.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            big = await raw_exchange(proxy.admin_port,
                                     b"POST /drain HTTP/1.1\r\nHost: a\r\n"
                                     b"Content-Length: 10000000\r\n\r\n")
            assert big.startswith(b"HTTP/1.1 413 "), big  # no admin route takes a body
            live = await raw_exchange(proxy.admin_port, b"GET /livez HTTP/1.1\r\nHost: a\r\n"
                                                        b"Connection: close\r\n\r\n")
            assert live.startswith(b"HTTP/1.1 200 OK\r\n")

    run(scenario())


def test_token_settings_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = [
        (["--drain-token", "a", "--drain-token-file", str(empty)], "set one of them"),
        (["--drain-token-file", str(tmp_path / "missing")], "cannot read it"),
        (["--drain-token-file", str(empty)], "allowed: a file holding one token"),
        (["--drain-token", "two words"], "allowed: a token without spaces"),
        (["--drain-token-file", "relative/token"], "allowed: an absolute path"),
    ]
    for argv, expected in cases:
        with pytest.raises(SettingsError, match=expected):
            parse_settings(argv, {})


def test_the_no_token_warning_only_where_other_hosts_reach_the_admin_port(run: Run[None]) -> None:
    """On loopback no other pod can drain this one: no warning.  On a wildcard address the
    warning comes once the listeners are up, naming the port actually bound."""
    async def scenario() -> None:
        local = await ProxyProcess.start(1, "--propagation-window", "0")
        local.signal(signal.SIGTERM)
        assert await local.wait() == 0
        assert NO_TOKEN not in local.log_text()

        exposed = await ProxyProcess.start(1, "--admin", "0.0.0.0:0",
                                           "--propagation-window", "0")
        await eventually(lambda: NO_TOKEN in exposed.log_text())
        exposed.signal(signal.SIGTERM)
        assert await exposed.wait() == 0
        text = exposed.log_text()
        assert text.index("listening on") < text.index(NO_TOKEN)
        assert f"admin port 0.0.0.0:{exposed.admin_port} " in text

    run(scenario())


def test_a_port_that_cannot_be_listened_on_comes_without_the_token_warning() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}", "--admin",
             "0.0.0.0:0"], capture_output=True, text=True, timeout=20, env=child_env(),
            cwd=CHILD_CWD, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"drain-proxy: error: --listen 127.0.0.1:{port}: cannot listen: Address already in use"]
