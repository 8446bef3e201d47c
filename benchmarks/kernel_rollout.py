"""Rollout on a real kernel data path: pods in network namespaces behind nftables DNAT.

``rollout.py`` routes new connections in user space.  This runs the same scale-down
on the parts Kubernetes uses: each pod is real processes in a network namespace of
its own, the Service is a virtual IP that kube-proxy-style nftables rules DNAT to
the pods, conntrack keeps established connections on their pod when pod A is
removed from the rules, and pod A's veth is unplugged after it exits, as the
kubelet tears a sandbox down (``netns.py`` builds it all; nothing touches the root
namespace).  Needs root, ``ip`` and ``nft``; exits 2 with one line where it cannot.

Schedule, the same for every setup: load on the Service; ``--before`` seconds later
pod A gets SIGTERM; ``--propagation-lag`` after that the rules drop pod A (one
atomic ``nft -f``); load runs until pod A has exited and the lag is over, plus
``--tail``.  Progress goes to stderr; timelines and the Markdown table to stdout.

Several nodes (``--scenario nodes``, ``sparse-node``, or ``--node`` specs): the
clients run on client nodes, each a namespace of its own on the bridge with its own
address (the source the pods see), its own kube-proxy table and its own lag: each
node's rules drop pod A at its lag after the SIGTERM.  Each node's clients are a
process of their own (``kernel_load.py``); they never retry, so every failed request
is lost.  ``--runs N`` repeats each setup with fresh namespaces and seeds and ends
with a summary per setup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import kernel_pods
import netns
from cli_args import count, names_among, seconds
from kernel_load import KEEP_ALIVE, PER_REQUEST, SPARSE, Load, NodeClients, Tally
from kernel_pods import CORE_SETUPS, DRAIN_PROXY_SETUPS, TITLES, Pod, PodFailed, PodSpec
from netns import Cluster, Unavailable

sys.path.insert(0, str(kernel_pods.APP_SCRIPT.parent.parent))
from proxy.rollout.report import Event, format_ratio, format_timeline

ALL_SETUPS = (*CORE_SETUPS, "traefik", "caddy")
ONE_NODE_SETUPS = ("naive", "prestop-sleep", "drain-proxy", "traefik", "caddy")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A client node: its lag (its rules drop pod A this long after the SIGTERM), its
    clients, and when they start (``start_s`` after the SIGTERM; None: with the load)."""

    name: str
    lag_s: float
    keep_alive: int = 0
    per_request: int = 0
    sparse: int = 0
    start_s: float | None = None
    think_s: float | None = None  # None: --think

    def describe(self) -> str:
        clients = [f"{n} {kind}" for n, kind in ((self.keep_alive, KEEP_ALIVE),
                   (self.per_request, PER_REQUEST), (self.sparse, SPARSE)) if n]
        starts = "" if self.start_s is None else f", starting {self.start_s:g} s after SIGTERM"
        think = "" if self.think_s is None else f", think {self.think_s:g} s"
        return f"node {self.name} (lag {self.lag_s:g} s): {' + '.join(clients)}{think}{starts}"


NODE_KEYS = {KEEP_ALIVE: "keep_alive", PER_REQUEST: "per_request", SPARSE: "sparse",
             "start": "start_s", "think": "think_s"}


def parse_node(text: str) -> NodeSpec:
    """``NAME@LAG:KEY=VALUE,...`` with keys keep-alive, per-request, sparse (client
    counts), start (seconds after SIGTERM the clients start), think (seconds)."""
    try:
        head, _, body = text.partition(":")
        name, _, lag = head.partition("@")
        values: dict[str, float | int] = {}
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            field_name = NODE_KEYS[key.strip()]
            values[field_name] = (float(value) if field_name in ("start_s", "think_s")
                                  else count(value))
        spec = NodeSpec(name.strip(), seconds(lag), **values)  # type: ignore[arg-type]
    except (KeyError, ValueError, TypeError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"{text}: allowed: NAME@LAG:keep-alive=N,per-request=N,sparse=N,start=S,think=S"
        ) from None
    if not spec.name.isidentifier() or len(spec.name) > 10:
        raise argparse.ArgumentTypeError(f"{text}: a node name is up to 10 letters and digits")
    return spec


# The several-node scenarios.  "nodes": every node busy enough to be judged, the sparse
# client sharing node n2 with busier clients (with node-level SNAT all of a node's clients
# are one source; a node of keep-alive clients only opens too few new connections to be
# judged, like a sparse one).  "sparse-node": the same, but the sparse client alone on a
# node of its own, a source too sparse to judge.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "one-node": (),
    "nodes": ("n1@0.3:keep-alive=3,per-request=2,think=0.01",
              "n2@1:keep-alive=2,per-request=2,sparse=1",
              "n3@2.5:per-request=3",
              "ingress@1:keep-alive=2,per-request=1,start=0.5"),
    "sparse-node": ("n1@0.3:keep-alive=3,per-request=2,think=0.01",
                    "n2@1:keep-alive=2,per-request=2",
                    "n3@2.5:per-request=3",
                    "ingress@1:keep-alive=2,per-request=1,start=0.5",
                    "sparse@1:sparse=1"),
}
# What the several-node scenarios change in the defaults: adaptive against a fixed 10 s
# window and a 3 s preStop sleep.
NODES_DEFAULTS: dict[str, object] = {
    "window_s": 10.0, "prestop_s": 3.0, "min_window_s": 1.0, "before_s": 2.0,
    "think_s": 0.03, "setups": ["drain-proxy-adaptive", "drain-proxy", "prestop-sleep"]}


@dataclass(frozen=True, slots=True)
class Config:
    propagation_lag_s: float = 2.0
    window_s: float = 3.0
    prestop_s: float | None = None  # None: the window
    min_window_s: float = 1.0
    drain_timeout_s: float = 10.0
    before_s: float = 1.0
    tail_s: float = 0.5
    teardown_s: float = 1.0
    keep_alive_clients: int = 16
    per_request_clients: int = 8
    think_s: float = 0.02
    service_s: float = 0.002
    timeout_s: float = 3.0
    max_requests_per_connection: int = 100
    seed: int = 1
    nodes: tuple[NodeSpec, ...] = ()  # empty: one node, the clients in the bridge's namespace

    def pod_spec(self, setup: str) -> PodSpec:
        return PodSpec(setup, self.window_s, self.drain_timeout_s,
                       self.max_requests_per_connection, self.service_s,
                       self.prestop_s, self.min_window_s)


@dataclass(frozen=True, slots=True)
class Loss:
    """One lost request: when (seconds from pod A's SIGTERM), where, which client, how."""

    at_s: float
    node: str
    client: str
    kind: str


@dataclass
class Result:
    setup: str
    requests: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    exit_s: float | None = None  # pod A's SIGTERM to its last process's exit
    window_s: float | None = None  # pod A's SIGTERM to the end of its propagation window
    window_reason: str = ""  # why the window ended: drain-proxy's reason, "preStop sleep"
    window_words: str = ""  # drain-proxy's log line on it
    losses: list[Loss] = field(default_factory=list)
    run: int = 1
    load_average: float = 0.0  # the machine's 1-minute load average as the run started
    events: list[Event] = field(default_factory=list)
    skipped: str | None = None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def count(self, tally: Tally) -> None:
        self.requests, self.retries = tally.requests, tally.retries
        self.failures, self.served_by = tally.failures, tally.served_by


async def rollout(config: Config, setup: str, cluster: Cluster, label: str) -> Result:
    """One setup's run in an entered, empty cluster; the pods are killed however it ends."""
    spec = config.pod_spec(setup)
    pods = {name: Pod(net, spec) for name, net in cluster.pods.items()}
    ruleset = netns.full_ruleset(list(cluster.pods.values()))
    if config.nodes:
        for node in config.nodes:
            cluster.load_rules(ruleset, node.name)
    else:
        cluster.load_rules(ruleset)
    try:
        for pod in pods.values():
            await pod.start()
        if config.nodes:  # no probe connection: the pods see no peer but the client nodes
            await asyncio.gather(*(pod.wait_listening() for pod in pods.values()))
            return await _schedule_nodes(config, setup, cluster, pods["A"], label)
        await asyncio.gather(*(pod.wait_ready() for pod in pods.values()))
        return await _schedule(config, setup, cluster, pods["A"], label)
    finally:
        for pod in pods.values():
            await pod.kill()


async def _schedule(config: Config, setup: str, cluster: Cluster, pod_a: Pod,
                    label: str) -> Result:
    loop = asyncio.get_running_loop()
    result = Result(TITLES[setup])
    t0 = loop.time() + config.before_s

    def note(text: str) -> None:
        result.events.append(Event(loop.time() - t0, text))

    load = Load(config.keep_alive_clients, config.per_request_clients, config.think_s,
                config.timeout_s, config.seed)
    load.start()
    note(f"load starts: {config.keep_alive_clients} keep-alive + "
         f"{config.per_request_clients} per-request clients on the Service, pods A and B")
    progress = loop.create_task(_progress(load, label, t0))
    await asyncio.sleep(config.before_s)
    note("SIGTERM to pod A")
    endpoints = loop.create_task(_drop_pod_a(config, cluster, note))
    await _terminate_and_tear_down(config, setup, cluster, pod_a, result, t0, note)
    await endpoints
    await asyncio.sleep(max(0.0, config.propagation_lag_s - (loop.time() - t0)) + config.tail_s)
    note("load stops: no client starts another request")
    await load.stop()
    progress.cancel()
    result.count(load.tally)
    return result


async def _terminate_and_tear_down(config: Config, setup: str, cluster: Cluster, pod_a: Pod,
                                   result: Result, t0: float, note: kernel_pods.Note) -> None:
    """Pod A's termination to its exit, what its window was, then its sandbox's teardown."""
    await _await_exit(config, pod_a, note)
    result.exit_s = asyncio.get_running_loop().time() - t0
    result.window_s, result.window_reason, result.window_words = _window(config, setup, pod_a)
    await asyncio.sleep(config.teardown_s)
    cluster.unplug(cluster.pods["A"])
    note("pod A's sandbox torn down: its veth is gone")


async def _schedule_nodes(config: Config, setup: str, cluster: Cluster, pod_a: Pod,
                          label: str) -> Result:
    """The several-node schedule: each node's clients in their own process, each node's
    rules updated at its own lag."""
    loop = asyncio.get_running_loop()
    result = Result(TITLES[setup])
    clients = {node.name: NodeClients(node.name) for node in config.nodes}
    try:
        for i, node in enumerate(config.nodes):
            await clients[node.name].spawn(cluster.client_nodes[node.name].netns,
                                           _load_argv(config, node, i))
        t0 = loop.time() + config.before_s

        def note(text: str) -> None:
            result.events.append(Event(loop.time() - t0, text))

        for node in config.nodes:
            if node.start_s is None:
                clients[node.name].start()
        note("load starts: " + "; ".join(node.describe() for node in config.nodes
                                         if node.start_s is None))
        progress = loop.create_task(_progress_nodes(clients, label, t0))
        await asyncio.sleep(config.before_s)
        note("SIGTERM to pod A")
        later = [loop.create_task(_drop_pod_a_on(node, cluster, t0, note))
                 for node in config.nodes]
        later += [loop.create_task(_start_at(node, clients[node.name], t0, note))
                  for node in config.nodes if node.start_s is not None]
        await _terminate_and_tear_down(config, setup, cluster, pod_a, result, t0, note)
        await asyncio.gather(*later)
        last = max(max(node.lag_s, node.start_s or 0.0) for node in config.nodes)
        await asyncio.sleep(max(0.0, last - (loop.time() - t0)) + config.tail_s)
        note("load stops: no client starts another request")
        tallies = await asyncio.gather(*(c.stop(config.timeout_s + 5) for c in clients.values()))
        progress.cancel()
    finally:
        for c in clients.values():
            await c.kill()
    total = Tally()
    for name, tally in zip(clients, tallies, strict=True):
        total.add(tally)
        result.losses += [Loss(at - t0, name, client, kind) for at, kind, client in tally.lost]
    result.losses.sort(key=lambda loss: loss.at_s)
    result.count(total)
    return result


def _load_argv(config: Config, node: NodeSpec, index: int) -> list[str]:
    think = config.think_s if node.think_s is None else node.think_s
    return ["--keep-alive", str(node.keep_alive), "--per-request", str(node.per_request),
            "--sparse", str(node.sparse), "--think", str(think),
            "--timeout", str(config.timeout_s), "--seed", str(config.seed * 100 + index)]


def _window(config: Config, setup: str, pod: Pod) -> tuple[float | None, str, str]:
    """SIGTERM to the end of the window, why it ended, and in whose words: drain-proxy's
    own account, the preStop sleep, or 0 for the naive app (it stops accepting at once)."""
    if setup in DRAIN_PROXY_SETUPS:
        return pod.window_report()
    if setup == "prestop-sleep":
        return config.pod_spec(setup).sleep_s, "sleep", ""
    if setup == "naive":
        return 0.0, "none", ""
    return None, "", ""


async def _drop_pod_a_on(node: NodeSpec, cluster: Cluster, t0: float,
                         note: kernel_pods.Note) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + node.lag_s - loop.time()))
    pod_a, pod_b = cluster.pods["A"], cluster.pods["B"]
    await asyncio.to_thread(cluster.load_rules, netns.removal_update([pod_b], [pod_a]),
                            node.name)
    note(f"endpoints update reaches node {node.name}'s kube-proxy: pod B only")


async def _start_at(node: NodeSpec, clients: NodeClients, t0: float,
                    note: kernel_pods.Note) -> None:
    loop = asyncio.get_running_loop()
    assert node.start_s is not None
    await asyncio.sleep(max(0.0, t0 + node.start_s - loop.time()))
    clients.start()
    note(f"load starts: {node.describe()}")


async def _progress_nodes(clients: dict[str, NodeClients], label: str, t0: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        total = Tally()
        for c in clients.values():
            total.add(c.tally)
        print(f"{label} {loop.time() - t0:+5.1f} s  requests {total.requests:>6}  "
              f"lost {total.failed:>4}", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)


async def _drop_pod_a(config: Config, cluster: Cluster, note: kernel_pods.Note) -> None:
    await asyncio.sleep(config.propagation_lag_s)
    pod_a, pod_b = cluster.pods["A"], cluster.pods["B"]
    await asyncio.to_thread(cluster.load_rules, netns.removal_update([pod_b], [pod_a]))
    note("endpoints update reaches kube-proxy: the Service's rules now DNAT to pod B only")


async def _await_exit(config: Config, pod: Pod, note: kernel_pods.Note) -> None:
    """Pod A's termination, bounded like a terminationGracePeriodSeconds (then SIGKILL)."""
    grace = max(config.window_s, config.prestop_s or 0.0) + config.drain_timeout_s + 5
    try:
        await asyncio.wait_for(pod.terminate(note), grace)
    except TimeoutError:
        note(f"pod A still running {grace:g} s after SIGTERM: SIGKILL")
        await pod.kill()


async def _progress(load: Load, label: str, t0: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        tally = load.tally
        print(f"{label} {loop.time() - t0:+5.1f} s  requests {tally.requests:>6}  "
              f"failed {tally.failed:>4}  retried {tally.retries:>3}", file=sys.stderr,
              flush=True)
        await asyncio.sleep(1.0)


def run_setup(config: Config, setup: str, index: int, total: int, run: int = 1) -> Result:
    """A fresh cluster for one setup (no conntrack entry or process carries over)."""
    reason = peer_missing(setup)
    if reason:
        print(f"[{index}/{total}] {setup}: skipped: {reason}", file=sys.stderr)
        return Result(TITLES[setup], skipped=reason, run=run)
    cluster = Cluster(f"kr{os.getpid()}-{index}", ["A", "B"],
                      [node.name for node in config.nodes])
    load_average = os.getloadavg()[0]
    try:
        cluster.create()
        cluster.enter_node()
        result = asyncio.run(rollout(config, setup, cluster,
                                     f"[{index}/{total}] {setup:<20}"))
    finally:
        cluster.destroy()
    result.run, result.load_average = run, load_average
    window = "-" if result.window_s is None else f"{result.window_s:.2f} s"
    print(f"[{index}/{total}] {setup}: {result.requests} requests, {result.failed} lost, "
          f"window {window}, pod A exit {result.exit_s or 0:.2f} s", file=sys.stderr,
          flush=True)
    return result


def peer_missing(setup: str) -> str | None:
    """Why a Traefik or Caddy setup cannot run here (None for the core setups)."""
    if setup in CORE_SETUPS:
        return None
    try:
        import peers
    except ImportError:
        return "benchmarks/peers.py is not on this branch"
    if peers.peer_binary(setup) is None:
        return f"no {setup} binary (pip install {setup}-bin)"
    return None


COLUMNS = ("setup", "requests", "failed", "failed by kind", "success", "retried",
           "served A / B", "pod A exit", "window end")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def format_markdown(results: list[Result], numbered: bool = False) -> str:
    """The comparison table, one row per run; a skipped setup keeps its row, with the
    reason.  ``pod A exit`` and ``window end`` count from pod A's SIGTERM."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        name = f"{r.setup} #{r.run}" if numbered else r.setup
        if r.skipped:
            lines.append(f"| {name} | skipped: {r.skipped} |" + " |" * (len(COLUMNS) - 2))
            continue
        kinds = ", ".join(f"{kind} {n}" for kind, n in r.failures.most_common()) or "-"
        ratio = (r.requests - r.failed) / r.requests if r.requests else None
        lines.append(f"| {name} | {r.requests} | {r.failed} | {kinds} | "
                     f"{format_ratio(ratio)} | {r.retries} | "
                     f"{r.served_by['A']} / {r.served_by['B']} | {_seconds(r.exit_s)} | "
                     f"{_seconds(r.window_s)} |")
    return "\n".join(lines)


SUMMARY_COLUMNS = ("setup", "runs", "runs with loss", "requests", "lost", "lost by kind",
                   "window end median / max", "window ended by", "pod A exit median / max")


def format_summary(results: list[Result]) -> str:
    """One row per setup over its runs (times from pod A's SIGTERM)."""
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |",
             "|---|---:|---:|---:|---:|---|---:|---|---:|"]
    by_setup: dict[str, list[Result]] = {}
    for r in results:
        if not r.skipped:
            by_setup.setdefault(r.setup, []).append(r)
    for setup, runs in by_setup.items():
        kinds: Counter[str] = Counter()
        for r in runs:
            kinds.update(r.failures)
        lost = sum(r.failed for r in runs)
        ends = Counter(r.window_reason or "-" for r in runs)
        lines.append(
            f"| {setup} | {len(runs)} | {sum(1 for r in runs if r.failed)} | "
            f"{sum(r.requests for r in runs)} | {lost} | "
            f"{', '.join(f'{kind} {n}' for kind, n in kinds.most_common()) or '-'} | "
            f"{_spread([r.window_s for r in runs])} | "
            f"{', '.join(f'{why} {n}' for why, n in ends.most_common())} | "
            f"{_spread([r.exit_s for r in runs])} |")
    return "\n".join(lines)


def _spread(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{statistics.median(known):.2f} / {max(known):.2f} s"


def format_losses(results: list[Result], limit: int = 10) -> str:
    """Every run's lost requests (the first ``limit``): when, on which node, how."""
    lines = []
    for r in results:
        for loss in r.losses[:limit]:
            lines.append(f"{r.setup} #{r.run}: {loss.at_s:+.3f} s node {loss.node} "
                         f"{loss.client}: {loss.kind}")
        if len(r.losses) > limit:
            lines.append(f"{r.setup} #{r.run}: ... {len(r.losses) - limit} more")
    return "\n".join(lines)


# (flag, Config field, parser, help)
OPTIONS = [
    ("--propagation-lag", "propagation_lag_s", seconds,
     "after pod A's SIGTERM, the rules keep sending it new connections this long"),
    ("--window", "window_s", seconds,
     "the sidecars' propagation window (adaptive: its maximum), and the preStop sleep "
     "unless --prestop-sleep"),
    ("--prestop-sleep", "prestop_s", seconds, "the preStop sleep"),
    ("--min-window", "min_window_s", seconds,
     "drain-proxy adaptive's minimum window (--min-propagation-window)"),
    ("--drain-timeout", "drain_timeout_s", seconds, "the sidecars' drain timeout"),
    ("--before", "before_s", seconds, "load before pod A's SIGTERM"),
    ("--tail", "tail_s", seconds, "load after pod A exited and the lag is over"),
    ("--teardown", "teardown_s", seconds, "pod A's veth is deleted this long after it exits"),
    ("--keep-alive-clients", "keep_alive_clients", count,
     "clients that stay on their connection until the server closes it"),
    ("--per-request-clients", "per_request_clients", count,
     "clients that open a connection per request"),
    ("--think", "think_s", seconds, "mean pause between a client's requests"),
    ("--service-time", "service_s", seconds, "the app's time per request"),
    ("--timeout", "timeout_s", seconds, "a client gives up on a request (connect included)"),
    ("--max-requests-per-connection", "max_requests_per_connection", count,
     "the sidecars' keep-alive rotation budget"),
    ("--seed", "seed", count, "random seed for the think times"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     allow_abbrev=False)
    defaults = Config()
    for flag, name, parse, help_text in OPTIONS:
        default = getattr(defaults, name)
        shown = "the window" if default is None else f"{default:g}"
        several = NODES_DEFAULTS.get(name)
        if several is not None:
            shown += f"; {several:g} with several nodes"
        parser.add_argument(flag, dest=name, type=parse, default=None,
                            metavar="S" if parse is seconds else "N",
                            help=f"{help_text} (default {shown})")
    parser.add_argument("--setups", type=names_among(ALL_SETUPS), default=None,
                        help=f"comma-separated, run in this order (default with one node: "
                        f"{','.join(ONE_NODE_SETUPS)}, a peer without its binary is skipped; "
                        f"with several: {','.join(NODES_DEFAULTS['setups'])})")  # type: ignore[arg-type]
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default="one-node",
                        help="one-node (default): the clients on the bridge's node; nodes: "
                        + "; ".join(SCENARIOS["nodes"]) + "; sparse-node: the same, with the "
                        "sparse client alone on a node of its own")
    parser.add_argument("--node", dest="nodes", type=parse_node, action="append", default=None,
                        metavar="NAME@LAG:KEY=N,...",
                        help="a client node (repeat for more; replaces the scenario's): "
                        "keys keep-alive, per-request, sparse (client counts), start (its "
                        "clients start this long after SIGTERM), think")
    parser.add_argument("--runs", type=count, default=1, metavar="N",
                        help="repeat each setup N times, fresh namespaces, seeds --seed + i "
                        "(default 1)")
    return parser


def config_from(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The run's configuration: the flags given, else the scenario's defaults, else the
    one-node defaults."""
    nodes = tuple(args.nodes) if args.nodes else tuple(
        parse_node(text) for text in SCENARIOS[args.scenario])
    if len({node.name for node in nodes}) != len(nodes):
        raise SystemExit("kernel rollout: each --node needs a name of its own")
    if len(nodes) > netns.MAX_CLIENT_NODES:
        raise SystemExit(f"kernel rollout: at most {netns.MAX_CLIENT_NODES} client nodes")
    scenario = NODES_DEFAULTS if nodes else {}
    defaults = Config()
    values: dict[str, Any] = {}
    for _, name, _, _ in OPTIONS:
        given = getattr(args, name)
        values[name] = given if given is not None else scenario.get(name, getattr(defaults, name))
    setups = args.setups or list(scenario.get("setups", ONE_NODE_SETUPS))  # type: ignore[call-overload]
    return Config(**values, nodes=nodes), setups


def _terminated(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # unwinds through the finally blocks that delete the namespaces


def main() -> int:
    args = build_parser().parse_args()
    config, setups = config_from(args)
    reason = netns.missing_requirement()
    if reason:
        print(f"kernel rollout unavailable: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    results: list[Result] = []
    total = len(setups) * max(1, args.runs)
    try:
        for run in range(1, max(1, args.runs) + 1):  # setups interleaved: drift hits all alike
            for setup in setups:
                index = len(results) + 1
                results.append(run_setup(replace(config, seed=config.seed + run - 1), setup,
                                         index, total, run))
    except Unavailable as exc:
        print(f"kernel rollout unavailable: {exc}", file=sys.stderr)
        return 2
    except PodFailed as exc:
        print(f"kernel rollout failed: {exc}", file=sys.stderr)
        return 1
    print(describe(config) + "\n")
    if args.runs <= 1:
        for r in results:
            if not r.skipped:
                print(f"### {r.setup}\n\n```\n{format_timeline(r.events)}\n```\n")
    print(format_markdown(results, numbered=args.runs > 1))
    if args.runs > 1:
        print("\n" + format_summary(results))
        averages = [r.load_average for r in results if not r.skipped]
        if averages:
            print(f"\nthe machine's load average (1 min) as a run started: median "
                  f"{statistics.median(averages):.2f}, max {max(averages):.2f} "
                  f"({os.cpu_count()} CPUs)")
    # drain-proxy's own words on its window's end (with several runs, the adaptive ones'
    # only: a fixed window ends the same way every time).
    words = [f"{r.setup} #{r.run}: {r.window_words}" for r in results if r.window_words
             and (args.runs <= 1 or r.window_reason != "fixed")]
    if words:
        print("\nwhy the window ended:\n" + "\n".join(words))
    # One run: every setup's losses; several: drain-proxy's (the others' are in the table).
    losses = format_losses([r for r in results if args.runs <= 1
                            or r.setup.startswith("drain-proxy")])
    if losses:
        print("\nlost requests (seconds from pod A's SIGTERM):\n" + losses)
    return 0


def describe(config: Config) -> str:
    service = f"{netns.SERVICE_IP}:{netns.SERVICE_PORT} (nftables DNAT, conntrack)"
    if not config.nodes:
        return (f"propagation lag {config.propagation_lag_s:g} s, window {config.window_s:g} s, "
                f"{config.keep_alive_clients} keep-alive + {config.per_request_clients} "
                f"per-request clients on {service}")
    sleep = config.window_s if config.prestop_s is None else config.prestop_s
    return (f"window {config.window_s:g} s (adaptive: {config.min_window_s:g} to "
            f"{config.window_s:g} s), preStop sleep {sleep:g} s, think {config.think_s:g} s, "
            f"clients on {service}, never retrying:\n"
            + "\n".join(f"- {node.describe()}" for node in config.nodes))


if __name__ == "__main__":
    raise SystemExit(main())
