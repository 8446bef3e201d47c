"""Who may say where a request came from: spoofing attempts from untrusted and trusted peers.

Two real peers on loopback: 127.0.0.1 stands for the ingress controller (trusted with
``--trusted-proxies 127.0.0.1/32``) and 127.0.0.2 for a client that reached the pod
directly.  The app checks what arrives.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import Run
from helpers import Client, app_and_proxy, raw_exchange

SPOOF = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"),
         ("X-Forwarded-Host", "admin.internal"), ("Forwarded", "for=6.6.6.6;proto=https"),
         ("X-Real-IP", "6.6.6.6"), ("X-Forwarded-Prefix", "/admin"), ("X_Forwarded_For", "6.6.6.6"),
         ("X_Remote_User", "admin")]


async def from_address(port: int, source: str) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return Client(reader, writer)


def test_an_untrusted_client_cannot_spoof_its_origin(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--trusted-proxies", "127.0.0.1/32") as (app, proxy):
            client = await from_address(proxy.port, "127.0.0.2")
            assert (await client.request("GET", "/", headers=SPOOF)).status == 200
            client.close()
            headers = app.requests[0].headers
            assert dict(headers)[b"x-forwarded-for"] == b"127.0.0.2"
            assert dict(headers)[b"x-forwarded-proto"] == b"http"
            assert dict(headers)[b"x-forwarded-host"] == b"test.local"
            names = [name for name, _ in headers]
            for gone in (b"forwarded", b"x-real-ip", b"x-forwarded-prefix"):
                assert gone not in names
            assert not any(b"_" in name for name in names), "underscore aliases dropped"
            assert names.count(b"x-forwarded-for") == 1

    run(scenario())


def test_a_trusted_proxy_keeps_the_client_chain(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--trusted-proxies", "127.0.0.1/32") as (app, proxy):
            ingress = await from_address(proxy.port, "127.0.0.1")
            assert (await ingress.request("GET", "/", headers=SPOOF)).status == 200
            ingress.close()
            headers = dict(app.requests[0].headers)
            assert headers[b"x-forwarded-for"] == b"6.6.6.6, 127.0.0.1"
            assert headers[b"x-forwarded-proto"] == b"https"
            assert headers[b"x-forwarded-host"] == b"admin.internal"
            assert headers[b"forwarded"] == b"for=6.6.6.6;proto=https"
            assert headers[b"x-real-ip"] == b"6.6.6.6"
            assert b"x_forwarded_for" not in headers, "underscores are dropped for everyone"

    run(scenario())


def test_by_default_the_private_networks_are_trusted_and_none_trusts_nobody(
        run: Run[None]) -> None:
    async def scenario() -> None:
        for flags, expected in ((), b"6.6.6.6, 127.0.0.1"),  \
                (("--trusted-proxies", "none"), b"127.0.0.1"):
            async with app_and_proxy(*flags) as (app, proxy):
                client = await Client.open(proxy.port)
                await client.request("GET", "/", headers=SPOOF[:1])
                client.close()
                assert dict(app.requests[0].headers)[b"x-forwarded-for"] == expected

    run(scenario())


def test_underscores_pass_when_allowed(run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy("--allow-underscores-in-headers") as (app, proxy):
            client = await Client.open(proxy.port)
            await client.request("GET", "/", headers=[("X_Remote_User", "admin")])
            client.close()
            assert dict(app.requests[0].headers)[b"x_remote_user"] == b"admin"

    run(scenario())


@pytest.mark.parametrize("host", [b"evil.test/admin", b"user@evil.test", b"a b", b"a:b"])
def test_an_invalid_host_gets_400_and_nothing_reaches_the_app(run: Run[None],
                                                              host: bytes) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (app, proxy):
            reply = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: " + host +
                                       b"\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 400 "), reply
            assert app.requests == []

    run(scenario())
