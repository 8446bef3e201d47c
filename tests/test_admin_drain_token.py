"""The drain endpoint is reachable from every pod in the cluster: with --drain-token set,
only the caller who presents it can take the pod out of its Service."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.settings import SettingsError, parse_settings

from conftest import Run
from helpers import Client, app_and_proxy, raw_exchange, sample


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
