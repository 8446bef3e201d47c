"""gRPC through the HTTP port: a real grpcio server and client, HTTP/2 prior knowledge.

The proxy relays frames (proxy.http2.session); these tests check what a gRPC user sees:
every call kind works, a call in flight across a drain completes, rotation makes the
channel reconnect without a failed call.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_app import channel, grpc_server, method

from conftest import Run
from helpers import eventually, running_proxy, sample

T = TypeVar("T")
CALL_TIMEOUT_S = 10


async def in_thread(call: Callable[[], T]) -> T:
    """grpcio's calls block: run them off the loop the proxy runs on."""
    return await asyncio.get_running_loop().run_in_executor(None, call)


def test_every_call_kind_goes_through(run: Run[None]) -> None:
    async def scenario() -> None:
        with grpc_server() as app:
            async with running_proxy(f"127.0.0.1:{app.port}") as proxy:
                with channel(proxy.port) as ch:
                    unary = method(ch, "unary_unary", "Unary")
                    answer = await in_thread(lambda: unary(b"hi", timeout=CALL_TIMEOUT_S))
                    assert answer.startswith(b"echo:hi from ipv4:127.0.0.1:")

                    stream = method(ch, "unary_stream", "ServerStream")
                    parts = await in_thread(
                        lambda: list(stream(b"5,0", timeout=CALL_TIMEOUT_S)))
                    assert parts == [b"0", b"1", b"2", b"3", b"4"]

                    gather = method(ch, "stream_unary", "ClientStream")
                    joined = await in_thread(
                        lambda: gather(iter([b"a", b"b", b"c"]), timeout=CALL_TIMEOUT_S))
                    assert joined == b"a+b+c"

                    bidi = method(ch, "stream_stream", "Bidi")
                    echoed = await in_thread(
                        lambda: list(bidi(iter([b"x", b"y"]), timeout=CALL_TIMEOUT_S)))
                    assert echoed == [b"X", b"Y"]
                assert sample(proxy, "drain_proxy_h2_streams_total") == 4
                assert sample(proxy, "drain_proxy_h2_connections_total") == 1
            assert proxy is not None

    run(scenario())


def test_a_server_stream_in_flight_across_a_drain_completes(run: Run[None]) -> None:
    async def scenario() -> None:
        with grpc_server() as app:
            async with running_proxy(f"127.0.0.1:{app.port}", "--propagation-window", "0.2",
                                     "--drain-timeout", "10") as proxy:
                with channel(proxy.port) as ch:
                    stream = method(ch, "unary_stream", "ServerStream")
                    received: list[bytes] = []
                    started = asyncio.Event()
                    loop = asyncio.get_running_loop()

                    def consume() -> None:
                        for part in stream(b"20,50", timeout=CALL_TIMEOUT_S):
                            received.append(part)
                            loop.call_soon_threadsafe(started.set)

                    call = asyncio.ensure_future(in_thread(consume))
                    await asyncio.wait_for(started.wait(), CALL_TIMEOUT_S)
                    proxy.coordinator.trigger("test")
                    await eventually(
                        lambda: sample(proxy, "drain_proxy_h2_goaways_total",
                                       {"reason": "drain"}) == 1)
                    await asyncio.wait_for(call, CALL_TIMEOUT_S)
                    assert received == [str(i).encode() for i in range(20)]
                    await asyncio.wait_for(proxy.coordinator.wait_drained(), CALL_TIMEOUT_S)
                    assert proxy.ctx.timeline.cut_requests == 0

    run(scenario())


def test_rotation_moves_the_channel_to_a_new_connection_without_a_failed_call(
        run: Run[None]) -> None:
    async def scenario() -> None:
        with grpc_server() as app:
            async with running_proxy(f"127.0.0.1:{app.port}", "--max-requests-per-connection",
                                     "5", "--rotation-jitter", "0") as proxy:
                with channel(proxy.port) as ch:
                    unary = method(ch, "unary_unary", "Unary")
                    peers: list[bytes] = []
                    for i in range(30):
                        answer: Any = await in_thread(
                            functools.partial(unary, b"%d" % i, timeout=CALL_TIMEOUT_S))
                        peers.append(answer.split(b" from ")[1])
                connections = sample(proxy, "drain_proxy_h2_connections_total")
                assert connections >= 6, connections
                assert len(set(peers)) >= 6, "each connection reaches the app on its own"
                assert sample(proxy, "drain_proxy_h2_goaways_total",
                              {"reason": "max_requests"}) >= 5

    run(scenario())


def test_an_unreachable_app_fails_the_call_quickly_as_unavailable(run: Run[None]) -> None:
    async def scenario() -> None:
        async with running_proxy("127.0.0.1:1") as proxy:
            with channel(proxy.port) as ch:
                unary = method(ch, "unary_unary", "Unary")
                try:
                    await in_thread(lambda: unary(b"hi", timeout=CALL_TIMEOUT_S))
                    raise AssertionError("the call cannot succeed")
                except grpc.RpcError as error:
                    assert error.code() is grpc.StatusCode.UNAVAILABLE, error

    run(scenario())


def test_concurrent_calls_across_a_drain_and_rotation_none_fails(run: Run[None]) -> None:
    """Eight channels call in a loop while connections rotate every ~10 calls and the
    drain starts: every GOAWAY moves a channel to a new connection (to the same proxy,
    still accepting in its window), and no call fails."""
    async def scenario() -> None:
        with grpc_server() as app:
            async with running_proxy(f"127.0.0.1:{app.port}", "--max-requests-per-connection",
                                     "10", "--propagation-window", "5") as proxy:
                stop = threading.Event()
                failures: list[str] = []
                done = [0]

                def caller() -> None:
                    with channel(proxy.port) as ch:
                        unary = method(ch, "unary_unary", "Unary")
                        while not stop.is_set():
                            try:
                                unary(b"x", timeout=CALL_TIMEOUT_S)
                                done[0] += 1
                            except grpc.RpcError as error:
                                failures.append(repr(error))

                callers = [asyncio.ensure_future(in_thread(caller)) for _ in range(8)]
                began = time.monotonic()
                await eventually(lambda: done[0] >= 200)
                proxy.coordinator.trigger("test")
                before = done[0]
                await eventually(lambda: done[0] >= before + 200)
                stop.set()
                await asyncio.gather(*callers)
                assert failures == [], failures[:3]
                assert app.unary_calls == done[0], "every call the app ran was answered once"
                assert sample(proxy, "drain_proxy_h2_goaways_total", {"reason": "drain"}) >= 1
                assert sample(proxy, "drain_proxy_h2_goaways_total",
                              {"reason": "max_requests"}) >= 10
                assert time.monotonic() - began < 5, "all within the window"

    run(scenario())
