"""Latency/throughput/CPU benchmark: drain-proxy vs nginx, haproxy, Traefik, Caddy; nginx stream.

A proxy's cost is what it *adds* over calling the app directly, so every proxy fronts the same
fixed-cost app and is compared with `direct`.  Runs are interleaved (A B C A B C) within each
(connections, body) cell so drift hits all targets alike; medians + req/s spread stop one outlier
from deciding.  CPU per request matters because a sidecar's CPU is the real bill, which req/s
hides when the load generator is the limit.

This file is the command and the measuring loop; the parts live next to it: `targets.py` starts
the servers, `load.py` generates load, `report.py` and `chart.py` write the results,
`machine.py` describes the machine, `app.py` is the fallback app.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import machine
import report
from app import BODIES, Body
from load import LoadGen, Sample
from targets import ALL_TARGETS, Servers, Target, cpu_ticks, with_baseline

OUT = Path(__file__).resolve().parent / "out"
CHART_HINT = "chart skipped: matplotlib not installed (pip install '.[bench]')"


def measure(t: Target, load: LoadGen, conns: int, body: Body, duration_s: int) -> Sample:
    """One load run; proxy CPU ticks after minus before, per request -> CPU us/request."""
    before = cpu_ticks(t.cpu_pid) if t.cpu_pid else 0
    s = load.run(t.port, body.path, conns, duration_s)
    if t.proc is not None and t.proc.poll() is not None:
        raise RuntimeError(f"{t.name} died during the run (rc={t.proc.returncode})")
    if not s.requests:
        raise RuntimeError("no request completed")
    if t.cpu_pid:
        ticks = cpu_ticks(t.cpu_pid) - before
        s.cpu_us_per_req = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / s.requests
    if s.errors:
        print(f"  warning: {t.name} c={conns} {body.name}: {s.errors} errors", file=sys.stderr)
    return s


def run_cell(targets: list[Target], load: LoadGen, conns: int, body: Body,
             args: argparse.Namespace) -> None:
    """A discarded warm-up round (pools, caches), then `repeat` interleaved rounds A B C A B C."""
    for i in range(-1 if args.warmup else 0, args.repeat):
        for t in [t for t in targets if not t.error]:
            print(f"[c={conns} {body.name} rep {i + 1}/{args.repeat}] {t.name}", file=sys.stderr)
            try:
                s = measure(t, load, conns, body, args.duration if i >= 0 else args.warmup)
            except (RuntimeError, OSError, ValueError) as exc:
                t.error = f"failed: {exc}".replace("|", "/")[:200]
            else:
                t.samples.setdefault((conns, body.name), []).extend([s] if i >= 0 else [])


def ints(s: str) -> list[int]:
    """argparse type: comma-separated integers."""
    return [int(x) for x in s.split(",")]


def names(s: str) -> list[str]:
    """argparse type: comma-separated names."""
    return s.split(",")


def parse_args() -> argparse.Namespace:
    """The CLI; --quick is a short smoke run."""
    p = argparse.ArgumentParser(description="drain-proxy latency/CPU benchmark")
    p.add_argument("--connections", type=ints, default=[1, 16, 64],
                   help="keep-alive connections, comma-separated (default 1,16,64)")
    p.add_argument("--bodies", type=names, default=list(BODIES),
                   help=f"response bodies, comma-separated (default {','.join(BODIES)})")
    p.add_argument("--targets", type=names, default=ALL_TARGETS, help="default: all")
    p.add_argument("--duration", type=int, default=5, help="seconds per run (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="seconds of discarded warm-up per target and cell; 0: none (default 1)")
    p.add_argument("--load-client", choices=["auto", "wrk", "python"], default="auto",
                   help="auto: wrk if installed, else the built-in Python client")
    p.add_argument("--app", choices=["auto", "nginx", "python"], default="auto",
                   help="auto: nginx if installed, else the built-in Python app")
    p.add_argument("--out", type=Path, default=OUT,
                   help="directory for bench_latency.json and bench_latency.png "
                        "(default benchmarks/out)")
    p.add_argument("--quick", action="store_true", help="smoke run: --duration 2 --repeat 1")
    p.add_argument("--baseline", metavar="PYTHON",
                   help="another build's python (a venv's bin/python after `pip install .`): "
                        "each drain-proxy target is also run with it, as <target>@baseline, "
                        "in turn with the others in every repetition")
    args = p.parse_args()
    if args.quick:
        args.duration, args.repeat = 2, 1
    for name, given, known in (("targets", args.targets, ALL_TARGETS),
                               ("bodies", args.bodies, list(BODIES))):
        if bad := set(given) - set(known):
            p.error(f"unknown {name} {sorted(bad)}; choose from {known}")
    args.baseline_build = None
    if args.baseline is not None:
        args.baseline_build = machine.proxy_build(args.baseline, Path(tempfile.gettempdir()))
        if args.baseline_build == machine.UNKNOWN_BUILD:
            p.error(f"--baseline {args.baseline}: that python cannot import an installed "
                    "drain-proxy (give a venv's bin/python after `pip install .`)")
        args.targets = with_baseline(args.targets)
    return args


def choose(path: str | None, choice: str, flag: str) -> str | None:
    """The tool to use: None means the built-in Python one; a forced but missing tool exits."""
    if choice == "python":
        return None
    if path is None and choice != "auto":
        raise SystemExit(f"{flag} {choice}: {choice} is not installed")
    return path


def save_chart(path: Path, med: report.Medians, targets: list[Target], args: argparse.Namespace,
               title: str) -> None:
    """The PNG, or a hint on stderr when matplotlib is missing: the tables never depend on it."""
    if importlib.util.find_spec("matplotlib") is None:
        print(CHART_HINT, file=sys.stderr)
        return
    from chart import write_chart
    write_chart(path, med, targets, args.connections, [BODIES[b] for b in args.bodies], title)
    print(f"chart: {path}", file=sys.stderr)


def measure_all(targets: list[Target], load: LoadGen, args: argparse.Namespace) -> None:
    """Every cell in turn (connections outer, bodies inner), after a time estimate on stderr."""
    live = sum(not t.error for t in targets)
    cells = len(args.connections) * len(args.bodies)
    seconds = live * cells * (args.repeat * args.duration + args.warmup)
    print(f"{live} targets x {cells} cells: about {seconds / 60:.1f} min", file=sys.stderr)
    for conns in args.connections:
        for body in args.bodies:
            run_cell(targets, load, conns, BODIES[body], args)


def publish(targets: list[Target], meta: dict[str, Any], args: argparse.Namespace) -> None:
    """The header lines and tables on stdout, then the JSON and the chart in --out."""
    med = report.medians(targets)
    bodies = [BODIES[b] for b in args.bodies]
    print("\n".join(f"{k}: {meta[k]}" for k in ("machine", "app", "load", "baseline")
                    if k in meta) + "\n\n"
          + report.tables(targets, med, args.connections, bodies), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "bench_latency.json", meta, targets, med)
    print(f"json: {args.out / 'bench_latency.json'}", file=sys.stderr)
    title = (f"latency percentiles, median of {args.repeat} interleaved {args.duration} s runs "
             f"(lower is better); app: {meta['app']}; {meta['machine']}")
    save_chart(args.out / "bench_latency.png", med, targets, args, title)


def run(args: argparse.Namespace, tools: machine.Tools, pin: machine.Pinning,
        servers: Servers) -> None:
    """Start the app and every target, measure, publish."""
    load = LoadGen(choose(tools.wrk, args.load_client, "--load-client"), pin.load_cpu)
    app = servers.start_app(use_nginx=choose(tools.nginx, args.app, "--app") is not None)
    targets = [servers.start_target(name) for name in args.targets]
    measure_all(targets, load, args)
    meta: dict[str, Any] = {
        "machine": machine.describe(tools, pin), "app": app,
        "load": f"{load.describe()}, {args.duration} s x {args.repeat} interleaved, "
                f"{args.warmup} s warm-up; medians, spread = min-max req/s",
        "connections": args.connections, "bodies": args.bodies}
    if args.baseline is not None:
        meta["baseline"] = f"@baseline rows: {args.baseline} ({args.baseline_build})"
    publish(targets, meta, args)


def main() -> None:
    """Run the benchmark and always stop what it started."""
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally block runs
    tools, pin = machine.Tools.find(), machine.Pinning.choose()
    servers = Servers(tools.nginx, tools.haproxy, pin.server_cpu, args.baseline)
    try:
        run(args, tools, pin, servers)
    finally:
        servers.close()


if __name__ == "__main__":
    main()
