"""The rollout simulation's gRPC group: the same scale-down with gRPC channels as clients,
and a scale-up that shows why gRPC needs connection rotation.

gRPC clients hold one HTTP/2 connection per channel for hours, so they meet both of
drain-proxy's problems at their worst: a terminating pod cuts every call in flight on
its connections, and a new pod gets no call until those connections break.  Unlike
the HTTP group, the clients here are real gRPC channels (grpcio, each in its own
thread), so the Service must route real TCP connections: ``ServiceRelay`` stands for
kube-proxy's DNAT, choosing the pod when a connection opens and keeping it there.

Setups, differing only in what pod A does at SIGTERM:

- **naive gRPC app**: ``server.stop(None)``: calls in flight fail, the listener closes.
- **gRPC graceful stop**: ``server.stop(grace)``, what a careful gRPC app does: GOAWAY,
  calls in flight finish, but the listener closes at once, so connections the Service
  still routes to pod A are refused.
- **drain-proxy --mode tcp**: the proxy relays bytes and cannot tell a gRPC client to
  leave: channels stay pinned to pod A until ``--tunnel-drain-timeout`` cuts them.
- **drain-proxy (HTTP/2)**: GOAWAY, two PING rounds, final GOAWAY at the trigger: each
  channel reconnects through the Service while pod A still accepts, no call is cut.

Needs grpcio (``pip install grpcio``); everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass

import grpc

from proxy.rollout import report
from proxy.rollout.endpoints import Endpoints
from proxy.rollout.pods import Note, rotations_counted
from proxy.rollout.report import Event, ScenarioResult
from proxy.rollout.service_relay import ServiceRelay
from proxy.server import ProxyServer
from proxy.settings import parse_settings

SERVICE = "rollout.Pod"
CALL_TIMEOUT_S = 5.0
SETTLE_S = 0.3  # load goes on this long after pod A has exited
GOAWAY = "drain_proxy_h2_goaways_total"
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]  # gRPC's default (transparent) retries


class GrpcSetup(enum.Enum):
    NAIVE = "naive gRPC app"
    GRACEFUL = "gRPC graceful stop"
    TCP_MODE = "drain-proxy --mode tcp"
    DRAIN_PROXY = "drain-proxy (HTTP/2)"


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    """Scale and timing of the gRPC runs; the defaults are the demo's."""

    propagation_delay_s: float = 1.0
    window_s: float = 1.5  # drain-proxy's --propagation-window
    drain_timeout_s: float = 2.0  # --drain-timeout, --tunnel-drain-timeout, the stop grace
    before_s: float = 0.5
    channels: int = 8
    think_s: float = 0.01
    service_s: float = 0.002
    stream_s: float = 0.6  # one server-streaming call crossing the end of the window
    max_requests_per_connection: int = 50
    scale_up_observe_s: float = 2.0
    seed: int = 1


class _Tally:
    """Calls by outcome, from the client threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.by_pod: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[float, str]] = []  # (monotonic time, pod) of each answer

    def answered(self, pod: str) -> None:
        with self._lock:
            self.calls += 1
            self.by_pod[pod] += 1
            self.log.append((time.monotonic(), pod))

    def failed(self, cause: str) -> None:
        with self._lock:
            self.calls += 1
            self.failures[cause] += 1


class _App:
    """The gRPC app of one pod: ``Which`` answers the pod's name, ``Stream`` streams."""

    def __init__(self, name: str, service_s: float, workers: int) -> None:
        self.name = name
        self._service_s = service_s
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Which": grpc.unary_unary_rpc_method_handler(self._which),
            "Stream": grpc.unary_stream_rpc_method_handler(self._stream),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _which(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(self._service_s)
        return self.name.encode()

    def _stream(self, request: bytes, context: grpc.ServicerContext) -> object:
        count, interval_ms = (int(part) for part in request.split(b","))
        for index in range(count):
            time.sleep(interval_ms / 1000)
            yield f"{self.name}:{index}".encode()

    async def stop(self, grace: float | None) -> None:
        stopped = self.server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, stopped.wait)


class GrpcPod:
    """One pod: the gRPC app, and drain-proxy in front of it for the proxy setups."""

    def __init__(self, name: str, setup: GrpcSetup, config: GrpcConfig,
                 max_requests: int | None = None) -> None:
        self.name = name
        self.setup = setup
        self.config = config
        self._max_requests = (config.max_requests_per_connection if max_requests is None
                              else max_requests)
        self.app: _App | None = None
        self.proxy: ProxyServer | None = None
        self.exited_at: float | None = None

    async def start(self) -> None:
        self.app = _App(self.name, self.config.service_s, self.config.channels * 2 + 4)
        if self.setup in (GrpcSetup.TCP_MODE, GrpcSetup.DRAIN_PROXY):
            config = self.config
            mode = "tcp" if self.setup is GrpcSetup.TCP_MODE else "http"
            flags = ["--mode", mode, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                     "--upstream", f"127.0.0.1:{self.app.port}",
                     "--propagation-window", str(config.window_s),
                     "--drain-timeout", str(config.drain_timeout_s),
                     "--tunnel-drain-timeout", str(config.drain_timeout_s),
                     "--max-requests-per-connection", str(self._max_requests)]
            self.proxy = ProxyServer(parse_settings(flags, environ={}),
                                     rng=random.Random(f"{config.seed}-{self.name}"))
            await self.proxy.start()

    @property
    def port(self) -> int:
        assert self.app is not None
        return self.proxy.port if self.proxy is not None else self.app.port

    @property
    def rotations(self) -> int:
        return rotations_counted(self.proxy, GOAWAY)

    async def terminate(self, note: Note) -> None:
        assert self.app is not None
        if self.setup is GrpcSetup.NAIVE:
            await self.app.stop(None)
            note(f"pod {self.name}: the app stopped at once: calls in flight fail")
        elif self.setup is GrpcSetup.GRACEFUL:
            note(f"pod {self.name}: the app's graceful stop: GOAWAY, listener closed")
            await self.app.stop(self.config.drain_timeout_s)
        else:
            assert self.proxy is not None and self.proxy.coordinator is not None
            self.proxy.coordinator.on_signal("SIGTERM")
            await self.proxy.coordinator.wait_exit()
            timeline = self.proxy.ctx.timeline
            note(f"drain-proxy on pod {self.name}: drained: {timeline.cut_requests} calls cut, "
                 f"{timeline.cut_tunnels} tunnels cut")
            await self.app.stop(None)
            await self.proxy.close()
        self.exited_at = asyncio.get_running_loop().time()
        note(f"pod {self.name} exited")

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop(None)
        if self.proxy is not None:
            await self.proxy.close()


def _caller(port: int, until: list[float], tally: _Tally, think_s: float) -> None:
    """One channel calling ``Which`` in a loop until ``until[0]`` (monotonic; the
    scale-down moves it once pod A has exited)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        which: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{SERVICE}/Which")
        while time.monotonic() < until[0]:
            try:
                tally.answered(which(b"", timeout=CALL_TIMEOUT_S).decode())
            except grpc.RpcError as error:
                tally.failed(error.code().name)
            time.sleep(think_s)


def _streamer(pod_port: int, start: float, count: int, tally: _Tally,
              note: Callable[[str], None]) -> None:
    """One server-streaming call to pod A, from ``start`` (monotonic), 100 ms per message.
    Its channel connects (and calls once, not counted) right away, before the SIGTERM, as
    a client that has used pod A for a while."""
    with grpc.insecure_channel(f"127.0.0.1:{pod_port}", options=CHANNEL_OPTIONS) as channel:
        warm_up: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{SERVICE}/Which")
        warm_up(b"", timeout=CALL_TIMEOUT_S)
        time.sleep(max(0.0, start - time.monotonic()))
        stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            f"/{SERVICE}/Stream")
        try:
            parts = list(stream(b"%d,100" % count, timeout=CALL_TIMEOUT_S))
            pod = parts[-1].decode().split(":")[0]
            tally.answered(pod)
            note(f"the streaming call ended, answered in full by pod {pod}")
        except grpc.RpcError as error:
            tally.failed(error.code().name)
            note(f"the streaming call failed: {error.code().name}")


@contextlib.asynccontextmanager
async def _behind_a_service(pods: list[GrpcPod], in_service: int, threads: int
                            ) -> AsyncIterator[tuple[Endpoints, int, futures.ThreadPoolExecutor]]:
    """Start ``pods``, the first ``in_service`` of them behind a Service; yields its
    endpoints, its port and a thread pool for the channels; stops everything after."""
    relay: ServiceRelay | None = None
    pool = futures.ThreadPoolExecutor(max_workers=threads)
    try:
        for pod in pods:
            await pod.start()
        endpoints = Endpoints({pod.name: pod.port for pod in pods[:in_service]})
        relay = ServiceRelay(endpoints)
        yield endpoints, await relay.start(), pool
    finally:
        if relay is not None:
            await relay.close()
        for pod in pods:
            await pod.stop()
        pool.shutdown(wait=False)


async def run_scale_down(setup: GrpcSetup, config: GrpcConfig) -> ScenarioResult:
    """Pod A terminates while channels call through the Service; load runs until pod A
    has exited (and a little after), so a pinned channel meets whatever pod A does."""
    loop = asyncio.get_running_loop()
    pod_a, pod_b = GrpcPod("A", setup, config), GrpcPod("B", setup, config)
    events: list[tuple[float, str]] = []

    def note(text: str) -> None:
        events.append((loop.time(), text))

    def from_thread(text: str) -> None:
        loop.call_soon_threadsafe(note, text)

    tally = _Tally()
    until = [time.monotonic() + 3600.0]  # moved once pod A has exited
    async with _behind_a_service([pod_a, pod_b], 2, config.channels + 1) as (
            endpoints, port, pool):
        callers = [loop.run_in_executor(pool, _caller, port, until, tally, config.think_s)
                   for _ in range(config.channels)]
        stream_start = time.monotonic() + config.before_s + config.window_s - 0.2
        streamer = loop.run_in_executor(pool, _streamer, pod_a.port, stream_start,
                                        round(config.stream_s / 0.1), tally, from_thread)
        await asyncio.sleep(config.before_s)  # the schedule: load before the SIGTERM
        sigterm_at = loop.time()
        note("SIGTERM to pod A")
        terminating = loop.create_task(pod_a.terminate(lambda text, at=None: note(text)))
        await asyncio.sleep(config.propagation_delay_s)  # the schedule: the routing lag
        endpoints.remove("A")
        note("endpoints update reaches kube-proxy: new connections go to pod B only")
        await terminating
        until[0] = time.monotonic() + SETTLE_S
        await asyncio.gather(*callers, streamer)
        note("load stops")
    assert pod_a.exited_at is not None
    timeline = tuple(sorted((Event(at - sigterm_at, text) for at, text in events),
                            key=lambda event: event.at_s))
    return ScenarioResult(setup=setup.value, requests=tally.calls, retries=0,
                          failures=dict(tally.failures),
                          rotations=pod_a.rotations + pod_b.rotations,
                          drain_s=pod_a.exited_at - sigterm_at, events=timeline)


@dataclass(frozen=True, slots=True)
class ScaleUpResult:
    """Pod B joined a Service whose channels were all connected to pod A."""

    rotation: int  # --max-requests-per-connection; 0: off
    calls_after_join: int
    on_new_pod: int
    first_call_s: float | None  # from the join to pod B's first answer

    @property
    def share(self) -> float:
        return self.on_new_pod / self.calls_after_join if self.calls_after_join else 0.0


async def run_scale_up(max_requests: int, config: GrpcConfig) -> ScaleUpResult:
    """Channels connect while only pod A is in the Service; then pod B joins.  Without
    rotation no existing connection ever moves, so pod B gets nothing; with it, every
    connection ends after its budget and reconnects through the Service."""
    loop = asyncio.get_running_loop()
    pod_a = GrpcPod("A", GrpcSetup.DRAIN_PROXY, config, max_requests)
    pod_b = GrpcPod("B", GrpcSetup.DRAIN_PROXY, config, max_requests)
    tally = _Tally()
    async with _behind_a_service([pod_a, pod_b], 1, config.channels) as (
            endpoints, port, pool):
        until = [time.monotonic() + config.before_s + config.scale_up_observe_s]
        callers = [loop.run_in_executor(pool, _caller, port, until, tally, config.think_s)
                   for _ in range(config.channels)]
        await asyncio.sleep(config.before_s)  # the schedule: every channel connects to A
        joined = time.monotonic()
        endpoints.add("B", pod_b.port)
        await asyncio.gather(*callers)
    after = [(at, pod) for at, pod in tally.log if at >= joined]
    on_b = [at for at, pod in after if pod == "B"]
    return ScaleUpResult(max_requests, len(after), len(on_b),
                         (on_b[0] - joined) if on_b else None)


def format_scale_up(results: list[ScaleUpResult], observe_s: float) -> str:
    lines = [f"Scale-up: pod B joins a Service whose channels all hold connections to pod A; "
             f"calls in the next {observe_s:g} s:"]
    for result in results:
        rotation = (f"rotation after {result.rotation} calls" if result.rotation
                    else "no rotation")
        first = ("never" if result.first_call_s is None
                 else f"{result.first_call_s:.2f} s after it joined")
        lines.append(f"  {rotation:<26} pod B served {result.on_new_pod} of "
                     f"{result.calls_after_join} calls ({result.share:.0%}); first: {first}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class GrpcGroup:
    scale_down: list[ScenarioResult]
    scale_up: list[ScaleUpResult]


async def run_grpc_group(config: GrpcConfig,
                         progress: Callable[[str], None] | None = None) -> GrpcGroup:
    """Every scale-down setup in turn, then the scale-up without and with rotation."""
    downs = []
    for setup in GrpcSetup:
        if progress is not None:
            progress(f"gRPC scale-down: {setup.value}")
        downs.append(await run_scale_down(setup, config))
    if progress is not None:
        progress("gRPC scale-up: without and with rotation")
    ups = [await run_scale_up(0, config),
           await run_scale_up(config.max_requests_per_connection, config)]
    return GrpcGroup(downs, ups)


def format_grpc_group(group: GrpcGroup, config: GrpcConfig, markdown: bool = False) -> str:
    window = f"{config.window_s:g} s"
    intro = (
        f"gRPC: the same scale-down with {config.channels} gRPC channels calling through the "
        f"Service\n(kube-proxy keeps routing new connections to pod A for "
        f"{config.propagation_delay_s:g} s), and one server-streaming\ncall on pod A crossing "
        f"the end of the {window} window; load runs until pod A has exited.\nSetups: naive "
        "(server.stop(None)), gRPC graceful stop (server.stop(grace)), drain-proxy\n--mode tcp "
        "(a byte relay), drain-proxy (HTTP/2 GOAWAY sequence). rotations: GOAWAYs for\n"
        "--max-requests-per-connection. Failures by gRPC status code.")
    table = (report.format_markdown(group.scale_down) if markdown
             else report.format_table(group.scale_down))
    causes = report.format_causes(group.scale_down)
    return "\n\n".join(filter(None, [intro, table, causes, format_scale_up(
        group.scale_up, config.scale_up_observe_s)]))
