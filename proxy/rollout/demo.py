"""``drain-proxy demo``: a simulated scale-down under load, naive vs drain-proxy, in ~15 s
(and ~20 s more for the gRPC group, when grpcio is installed).

The first command after ``pip install``: it needs no cluster, no app and no
configuration, so a newcomer sees the termination race and what the proxy does
about it before reading any further.  It runs the rollout simulation in this
process at a small scale, on 127.0.0.1 only, and writes no file: a live progress
line on stderr, then the drain-proxy run's timeline and the comparison table on
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn, TextIO

from proxy.rollout import report
from proxy.rollout.pods import ADAPTIVE_MAXIMUM_S, Setup
from proxy.rollout.report import Progress, ScenarioResult
from proxy.rollout.scenario import RolloutConfig, run_rollout
from proxy.server import loop_factory
from proxy.settings import SettingsError

PLAIN_LINE_EVERY_S = 1.0  # progress lines when stderr is not a terminal


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like the proxy's own flags."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; allowed: seconds >= 0") \
            from None
    if not 0 <= value < 60:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; allowed: 0 to 60 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = RolloutConfig()
    parser = _OneLineParser(
        prog="drain-proxy demo", allow_abbrev=False,
        description="Simulate a scale-down under load on 127.0.0.1 and compare a naive app, "
        "an app with a preStop sleep, and drain-proxy in front of the app.")
    parser.add_argument("--propagation-delay", type=_seconds, metavar="S",
                        default=defaults.propagation_delay_s,
                        help="how long kube-proxy keeps routing new connections to the "
                        "terminating pod (default %(default)s)")
    parser.add_argument("--window", type=_seconds, metavar="S", default=defaults.window_s,
                        help="drain-proxy's --propagation-window and the preStop sleep "
                        "(default %(default)s)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop (default %(default)s)")
    parser.add_argument("--no-grpc", action="store_true",
                        help="skip the gRPC group (run when grpcio is installed; ~20 s)")
    return parser


class ProgressPrinter:
    """The live progress line: redrawn in place on a terminal, a plain line now and then
    otherwise (a CI log full of carriage returns is unreadable)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._width = 0
        self._last: tuple[int, float] | None = None  # (setup index, at_s) of the last line

    def __call__(self, progress: Progress) -> None:
        line = report.format_progress(progress)
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width) + ("\n" if progress.done else ""))
            self._width = 0 if progress.done else len(line)
        elif self._due(progress):
            self._stream.write(line + "\n")
            self._last = (progress.index, progress.at_s)
        self._stream.flush()

    def _due(self, progress: Progress) -> bool:
        if progress.done or self._last is None or self._last[0] != progress.index:
            return True
        return progress.at_s - self._last[1] >= PLAIN_LINE_EVERY_S


def render(config: RolloutConfig, results: Sequence[ScenarioResult]) -> str:
    """Everything the demo prints on stdout once the runs are over."""
    shown = next((r for r in results if r.setup == Setup.DRAIN_PROXY.value), results[-1])
    delay, window = f"{config.propagation_delay_s:g} s", f"{config.window_s:g} s"
    intro = (
        "A scale-down under load, simulated in this process on 127.0.0.1. Pods A and B sit "
        "behind a\nService; pod A gets SIGTERM, and kube-proxy keeps routing new connections "
        f"to it for {delay}.\nLoad: {config.keep_alive_clients} keep-alive, "
        f"{config.per_request_clients} connection-per-request and {config.idle_clients} idle "
        "keep-alive clients, plus one slow\ndownload crossing the end of the "
        f"{window} window. Setups: naive (the app exits on SIGTERM),\npreStop sleep (it "
        f"serves {window} more, then exits), drain-proxy (in front of the app), and\n"
        f"drain-proxy adaptive (the same with --adaptive-window, at most "
        f"{ADAPTIVE_MAXIMUM_S:g} s).")
    timeline = (f"Timeline of the {shown.setup} run (from pod A's SIGTERM):\n"
                + report.format_timeline(shown.events))
    table = "\n".join(filter(None, [report.format_table(results),
                                    report.format_causes(results)]))
    notes = (
        "retried: failed on a reused keep-alive connection before any response byte and sent "
        "again;\nRFC 9112 allows that for a GET, a POST would have failed. window: how long "
        "pod A went on\naccepting new connections after SIGTERM. drain: SIGTERM to exit.\n"
        + _next_step(config))
    return "\n\n".join(filter(None, [intro, timeline, table, _window_saved(config, results),
                                      notes])) + "\n"


def _window_saved(config: RolloutConfig, results: Sequence[ScenarioResult]) -> str:
    """The adaptive window next to the fixed one: the time each terminating pod saves."""
    by_setup = {result.setup: result for result in results}
    fixed = by_setup.get(Setup.DRAIN_PROXY.value)
    adaptive = by_setup.get(Setup.DRAIN_PROXY_ADAPTIVE.value)
    if fixed is None or adaptive is None or fixed.window_s is None or adaptive.window_s is None:
        return ""
    return (
        f"The adaptive window ended after {adaptive.window_s:.2f} s, once routing had moved "
        f"(at +{config.propagation_delay_s:g} s):\n"
        f"{fixed.window_s - adaptive.window_s:.2f} s before this run's fixed "
        f"{fixed.window_s:.2f} s window, and {ADAPTIVE_MAXIMUM_S - adaptive.window_s:.2f} s "
        f"before the default {ADAPTIVE_MAXIMUM_S:g} s one.\nThat much sooner, each "
        f"terminating pod exits and gives back its CPU and memory (drain: "
        f"{adaptive.drain_s:.2f} s\nagainst {fixed.drain_s:.2f} s here).")


def _next_step(config: RolloutConfig) -> str:
    if config.window_s > config.propagation_delay_s:
        return ("Next: drain-proxy demo --window 0.5 (a window shorter than the routing "
                "delay), or run the\nproxy in front of your app: drain-proxy --upstream "
                "127.0.0.1:8080")
    return ("The window was not longer than the routing delay, so pod A refused connections "
            "kube-proxy\nstill sent it. Size --propagation-window from the metric "
            "drain_proxy_last_accept_after_drain_start_seconds.")


@contextlib.contextmanager
def _quiet_proxy_logs() -> Iterator[None]:
    """The proxy's per-phase log lines would break the progress line; the timeline has them."""
    logger = logging.getLogger("drain_proxy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str]) -> int:
    try:
        args = build_parser().parse_args(list(argv))
        factory = loop_factory(args.loop)
    except SettingsError as error:
        print(f"drain-proxy demo: error: {error}", file=sys.stderr)
        return 2
    config = RolloutConfig(propagation_delay_s=args.propagation_delay, window_s=args.window)
    with _quiet_proxy_logs(), asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(run_rollout(config, progress=ProgressPrinter(sys.stderr)))
        print("\n" + render(config, results), end="", flush=True)
        if not args.no_grpc:
            print("\n" + _grpc_group(runner, config))
    return 0


def _grpc_group(runner: asyncio.Runner, config: RolloutConfig) -> str:
    """The gRPC group with the same routing delay and window, when grpcio is installed."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC core logs each GOAWAY otherwise
    try:
        from proxy.rollout import grpc_rollout
    except ImportError:
        return ("gRPC group skipped: grpcio is not installed (pip install grpcio, or "
                "drain-proxy demo --no-grpc)")
    grpc_config = grpc_rollout.GrpcConfig(propagation_delay_s=config.propagation_delay_s,
                                          window_s=config.window_s)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    group = runner.run(grpc_rollout.run_grpc_group(grpc_config, progress))
    return grpc_rollout.format_grpc_group(group, grpc_config)
