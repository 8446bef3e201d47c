"""The drain under a real load generator, in a loop: does any client see an error?

Each run starts uvicorn and the installed drain-proxy in front of it, runs
``hey -z 20s -c 50`` against the proxy, and beside it 6 eager connections
(``eager_client.py``: raw-socket POSTs, never retried, the next request written the
moment a response ends, or 5 ms later for half of them; the app sends their heads 0 to
5 ms before their bodies, so that some are under way at the trigger), and sends the
proxy SIGTERM 5 s in.  A run passes when every response is a 200, the only client errors are
"connection refused" (the listener closed at the end of the propagation window, so
clients go elsewhere), no eager request met an EOF or a reset, the proxy exits 0, and
it exits within 1 s of the last response the app sent.  hey's transport reconnects and
retries quietly; the eager clients show what a client that does not would lose.

    python benchmarks/drain_under_load.py                 # 20 runs, about 8 minutes
    python benchmarks/drain_under_load.py --runs 3 --duration 10 --sigterm-after 3

Needs ``hey`` (Debian: apt-get install hey) and uvicorn (the test extra, or pip install
uvicorn).  Prints a Markdown table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from eager_client import EagerClients, EagerCounts
from machine import proxy_build, proxy_home
from targets import free_port, stop, wait_for_200

HERE = Path(__file__).resolve().parent
ERROR_LINE = re.compile(r"^\s*\[(\d+)\]\s+(.*)$")
STATUS_LINE = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses")


@dataclass
class RunResult:
    ok: int = 0
    other_status: int = 0
    refused: int = 0
    other_errors: int = 0
    error_kinds: str = ""
    exit_code: int | None = None
    drain_s: float = 0.0  # SIGTERM to exit
    after_last_response_ms: float = 0.0  # exit minus the app's last response
    cut: str = "?"  # requests cut, from the proxy's "phase drained" line
    eager: EagerCounts | None = None

    @property
    def passed(self) -> bool:
        eager_clean = self.eager is not None and self.eager.lost == 0 \
            and self.eager.other_status == 0
        return (self.other_status == 0 and self.other_errors == 0 and self.exit_code == 0
                and eager_clean and 0 <= self.after_last_response_ms <= 1000)


def app_last_response(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/stats")
    return float(connection.getresponse().read())


def parse_hey(output: str, result: RunResult) -> None:
    section = ""
    kinds: list[str] = []
    for line in output.splitlines():
        if line.startswith("Status code distribution"):
            section = "status"
        elif line.startswith("Error distribution"):
            section = "errors"
        elif section == "status" and (match := STATUS_LINE.match(line)):
            if match[1] == "200":
                result.ok += int(match[2])
            else:
                result.other_status += int(match[2])
        elif section == "errors" and (match := ERROR_LINE.match(line)):
            count, message = int(match[1]), match[2]
            if "connection refused" in message:
                result.refused += count
            else:
                result.other_errors += count
                kinds.append(f"{count}x {message[-60:]}")
    result.error_kinds = "; ".join(kinds)


def one_run(args: argparse.Namespace, log_dir: Path, number: int) -> RunResult:
    app_port, port, admin = free_port(), free_port(), free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--port", str(app_port), "--app-dir", str(HERE),
         "--log-level", "warning", "--no-access-log", "drain_app:app"],
        env={**os.environ, "DRAIN_APP_DELAY_MS": str(args.app_delay_ms),
             "DRAIN_APP_SPLIT_MS": str(args.split_ms)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy_log = log_dir / f"proxy-{number}.log"
    with proxy_log.open("w") as log:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}",
             "--upstream", f"127.0.0.1:{app_port}", "--admin", f"127.0.0.1:{admin}",
             "--propagation-window", str(args.window), "--drain-timeout", str(args.drain_timeout),
             *(["--adaptive-window"] if args.adaptive else [])],
            cwd=proxy_home(), stdout=subprocess.DEVNULL, stderr=log)
    result = RunResult()
    try:
        wait_for_200(app_port, "/stats", 15)
        wait_for_200(admin, "/readyz", 15)
        hey = subprocess.Popen(
            [args.hey, "-z", f"{args.duration}s", "-c", str(args.connections),
             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
        eager = EagerClients(port, args.eager, args.eager_pause_ms)
        eager.start()
        exited = threading.Event()
        exited_at = [0.0]

        def wait_for_exit() -> None:
            proxy.wait()
            exited_at[0] = time.monotonic()
            exited.set()

        threading.Thread(target=wait_for_exit, daemon=True).start()
        time.sleep(args.sigterm_after)  # the schedule under test: load, then SIGTERM
        signalled = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        output, _ = hey.communicate(timeout=args.duration + 60)
        result.eager = eager.stop()
        exited.wait(timeout=args.window + args.drain_timeout + 30)
        result.exit_code = proxy.returncode
        result.drain_s = exited_at[0] - signalled
        result.after_last_response_ms = (exited_at[0] - app_last_response(app_port)) * 1000
        parse_hey(output, result)
        if match := re.findall(r"phase drained .* cut=(\d+)", proxy_log.read_text()):
            result.cut = match[-1]
    finally:
        stop(proxy)
        stop(app)
    return result


def table(results: list[RunResult], args: argparse.Namespace) -> str:
    lines = [
        f"`hey -z {args.duration}s -c {args.connections}` through drain-proxy to uvicorn, SIGTERM "
        f"after {args.sigterm_after} s; --propagation-window {args.window}"
        f"{' --adaptive-window' if args.adaptive else ''}, --drain-timeout "
        f"{args.drain_timeout}; app delay 0 to {args.app_delay_ms:g} ms; {proxy_build()}",
        "",
        "| run | 200 responses | other status | refused (after the window) | other errors "
        "| eager 200 | eager lost | requests cut | exit code | SIGTERM to exit (s) "
        "| exit after last response (ms) | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, r in enumerate(results, 1):
        eager = r.eager or EagerCounts()
        lines.append(
            f"| {number} | {r.ok} | {r.other_status} | {r.refused} | {r.other_errors} "
            f"| {eager.ok} | {eager.lost + eager.other_status} | {r.cut} "
            f"| {r.exit_code} | {r.drain_s:.2f} | {r.after_last_response_ms:.0f} "
            f"| {'yes' if r.passed else 'NO'} |")
    passed = sum(r.passed for r in results)
    eager_lost = sum((r.eager or EagerCounts()).lost for r in results)
    lines += ["", f"**{passed} of {len(results)} runs passed**; client errors other than "
              f"connection refused: {sum(r.other_errors for r in results)}; non-200: "
              f"{sum(r.other_status for r in results)}; eager requests lost: {eager_lost} "
              f"({args.eager} eager connections, half pausing {args.eager_pause_ms:g} ms)."]
    lines += [f"- run {n}: {r.error_kinds}" for n, r in enumerate(results, 1) if r.error_kinds]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--duration", type=int, default=20, help="hey -z, seconds")
    parser.add_argument("--connections", type=int, default=50, help="hey -c")
    parser.add_argument("--sigterm-after", type=float, default=5.0, help="seconds into the load")
    parser.add_argument("--window", type=float, default=10.0, help="--propagation-window")
    parser.add_argument("--drain-timeout", type=float, default=15.0)
    parser.add_argument("--adaptive", action="store_true",
                        help="--adaptive-window (the load sends throughout, so the window "
                             "runs to its maximum: this checks the decision under load)")
    parser.add_argument("--app-delay-ms", type=float, default=0.0,
                        help="each app response takes 0 to this many ms (default 0)")
    parser.add_argument("--eager", type=int, default=6,
                        help="eager raw-socket connections beside hey (default 6)")
    parser.add_argument("--eager-pause-ms", type=float, default=5.0,
                        help="pause of half the eager connections between requests")
    parser.add_argument("--split-ms", type=float, default=5.0,
                        help="the app sends an eager response's body 0 to this many ms after "
                             "its head (default 5)")
    args = parser.parse_args()
    args.hey = shutil.which("hey")
    if args.hey is None:
        print("drain_under_load: hey is not installed (apt-get install hey)", file=sys.stderr)
        return 2
    if args.sigterm_after + args.window >= args.duration:
        print("drain_under_load: the load must outlast SIGTERM plus the window", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="drain-under-load-") as tmp:
        for number in range(1, args.runs + 1):
            result = one_run(args, Path(tmp), number)
            results.append(result)
            print(f"run {number}/{args.runs}: {'pass' if result.passed else 'FAIL'} "
                  f"({result.ok} ok, {result.other_errors} errors, "
                  f"{(result.eager or EagerCounts()).lost} eager lost, exit {result.exit_code}, "
                  f"{result.after_last_response_ms:.0f} ms after the last response)",
                  file=sys.stderr)
    print(table(results, args))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
