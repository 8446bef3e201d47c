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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import NoReturn

import kernel_pods
import netns
from cli_args import count, names_among, seconds
from kernel_load import Load
from kernel_pods import CORE_SETUPS, TITLES, Pod, PodSpec
from netns import Cluster, Unavailable

sys.path.insert(0, str(kernel_pods.APP_SCRIPT.parent.parent))
from proxy.rollout.report import Event, format_ratio, format_timeline

ALL_SETUPS = (*CORE_SETUPS, "traefik", "caddy")


@dataclass(frozen=True, slots=True)
class Config:
    propagation_lag_s: float = 2.0
    window_s: float = 3.0
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


@dataclass
class Result:
    setup: str
    requests: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    exit_s: float | None = None  # pod A's SIGTERM to its last process's exit
    events: list[Event] = field(default_factory=list)
    skipped: str | None = None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


async def rollout(config: Config, setup: str, cluster: Cluster, label: str) -> Result:
    """One setup's run in an entered, empty cluster; the pods are killed however it ends."""
    spec = PodSpec(setup, config.window_s, config.drain_timeout_s,
                   config.max_requests_per_connection, config.service_s)
    pods = {name: Pod(net, spec) for name, net in cluster.pods.items()}
    cluster.load_rules(netns.full_ruleset(list(cluster.pods.values())))
    try:
        for pod in pods.values():
            await pod.start()
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
    await _await_exit(config, pod_a, note)
    result.exit_s = loop.time() - t0
    await asyncio.sleep(config.teardown_s)
    cluster.unplug(cluster.pods["A"])
    note("pod A's sandbox torn down: its veth is gone")
    await endpoints
    await asyncio.sleep(max(0.0, config.propagation_lag_s - (loop.time() - t0)) + config.tail_s)
    note("load stops: no client starts another request")
    await load.stop()
    progress.cancel()
    result.requests, result.retries = load.tally.requests, load.tally.retries
    result.failures, result.served_by = load.tally.failures, load.tally.served_by
    return result


async def _drop_pod_a(config: Config, cluster: Cluster, note: kernel_pods.Note) -> None:
    await asyncio.sleep(config.propagation_lag_s)
    pod_a, pod_b = cluster.pods["A"], cluster.pods["B"]
    await asyncio.to_thread(cluster.load_rules, netns.removal_update([pod_b], [pod_a]))
    note("endpoints update reaches kube-proxy: the Service's rules now DNAT to pod B only")


async def _await_exit(config: Config, pod: Pod, note: kernel_pods.Note) -> None:
    """Pod A's termination, bounded like a terminationGracePeriodSeconds (then SIGKILL)."""
    grace = config.window_s + config.drain_timeout_s + 5
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


def run_setup(config: Config, setup: str, index: int, total: int) -> Result:
    """A fresh cluster for one setup (no conntrack entry or process carries over)."""
    reason = peer_missing(setup)
    if reason:
        print(f"[{index}/{total}] {setup}: skipped: {reason}", file=sys.stderr)
        return Result(TITLES[setup], skipped=reason)
    cluster = Cluster(f"kr{os.getpid()}{index}", ["A", "B"])
    try:
        cluster.create()
        cluster.enter_node()
        return asyncio.run(rollout(config, setup, cluster, f"[{index}/{total}] {setup:<13}"))
    finally:
        cluster.destroy()


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
           "served A / B", "pod A exit")


def format_markdown(results: list[Result]) -> str:
    """The comparison table; a skipped setup keeps its row, with the reason."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.setup} | skipped: {r.skipped} |" + " |" * (len(COLUMNS) - 2))
            continue
        kinds = ", ".join(f"{kind} {n}" for kind, n in r.failures.most_common()) or "-"
        ratio = (r.requests - r.failed) / r.requests if r.requests else None
        exit_s = "-" if r.exit_s is None else f"{r.exit_s:.2f} s"
        lines.append(f"| {r.setup} | {r.requests} | {r.failed} | {kinds} | "
                     f"{format_ratio(ratio)} | {r.retries} | "
                     f"{r.served_by['A']} / {r.served_by['B']} | {exit_s} |")
    return "\n".join(lines)


# (flag, Config field, parser, help)
OPTIONS = [
    ("--propagation-lag", "propagation_lag_s", seconds,
     "after pod A's SIGTERM, the rules keep sending it new connections this long"),
    ("--window", "window_s", seconds, "the sidecars' propagation window, and the preStop sleep"),
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
        parser.add_argument(flag, dest=name, type=parse, default=default,
                            metavar="S" if parse is seconds else "N",
                            help=f"{help_text} (default {default:g})")
    parser.add_argument("--setups", type=names_among(ALL_SETUPS), default=list(ALL_SETUPS),
                        help=f"comma-separated, run in this order (default all: "
                        f"{','.join(ALL_SETUPS)}; a peer without its binary is skipped)")
    return parser


def _terminated(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # unwinds through the finally blocks that delete the namespaces


def main() -> int:
    args = build_parser().parse_args()
    config = Config(**{name: getattr(args, name) for _, name, _, _ in OPTIONS})
    reason = netns.missing_requirement()
    if reason:
        print(f"kernel rollout unavailable: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    results = []
    try:
        for index, setup in enumerate(args.setups, 1):
            results.append(run_setup(config, setup, index, len(args.setups)))
    except Unavailable as exc:
        print(f"kernel rollout unavailable: {exc}", file=sys.stderr)
        return 2
    print(f"propagation lag {config.propagation_lag_s:g} s, window {config.window_s:g} s, "
          f"{config.keep_alive_clients} keep-alive + {config.per_request_clients} per-request "
          f"clients on {netns.SERVICE_IP}:{netns.SERVICE_PORT} (nftables DNAT, conntrack)\n")
    for r in results:
        if not r.skipped:
            print(f"### {r.setup}\n\n```\n{format_timeline(r.events)}\n```\n")
    print(format_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
