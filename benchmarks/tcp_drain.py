"""TCP mode across a drain with real Postgres and Redis clients: closed between messages, or cut?

Starts PostgreSQL and Redis on 127.0.0.1 (temporary directories, OS-assigned free ports) and,
for each ``--python`` (a python with a drain-proxy build installed: before and after a change),
runs each workload through ``python -m proxy --mode tcp``, sends the proxy SIGTERM mid-run and
counts how each client's connection ended:

* ``pgbench-paced``: pgbench clients running a TPC-B-like script that pauses 20 ms between the
  statements of a transaction (an app working inside it: shorter than the proxy's 0.1 s quiet
  period) and thinks 100 to 300 ms between transactions (an app serving its own requests);
* ``pgbench-full``: pgbench's built-in ``tpcb-like`` at full speed, no pause anywhere;
* ``redis-full``: redis-benchmark at full speed, one process per client (redis-benchmark
  exits at its first error, so one process per client shows how each one's connection ended).

pgbench aborts a client whose connection ends, cleanly or not, and says in which command: at
``BEGIN`` it was between transactions, later it was inside one.  libpq words an EOF and a
reset alike ("server closed the connection unexpectedly"); the server tells them apart, and
counts the transactions it rolled back (``xact_rollback``).  hiredis does tell them apart:
"Server closed the connection" (EOF) or "Connection reset by peer".

    python benchmarks/tcp_drain.py --python before=../base/.venv/bin/python \\
        --python after=.venv/bin/python

Needs pgbench and a PostgreSQL server (Debian: apt-get install postgresql; as root the server
runs as the ``postgres`` user) and redis-server with redis-benchmark (apt-get install
redis-server redis-tools).  Prints a Markdown table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cli_args import count, names_among, seconds
from targets import free_port, stop, wait_for_200

WORKLOADS = ("pgbench-paced", "pgbench-full", "redis-full")
# The script of pgbench-paced; BEGIN and END are found by their text, so the classification
# follows any edit here.
PACED_SCRIPT = """\
\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
\\set think random(100, 300)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
\\sleep 20 ms
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
\\sleep 20 ms
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
\\sleep 20 ms
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
\\sleep 20 ms
INSERT INTO pgbench_history VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
\\sleep :think ms
"""
# pgbench's built-in tpcb-like: four \set, then BEGIN (command 4) ... END (command 10).
BUILTIN_BEGIN, BUILTIN_END = 4, 10
ABORTED = re.compile(r"client (\d+) (?:script \d+ )?aborted in command (\d+)")
ABORT_DETAIL = re.compile(r"aborted in command \d+ \(SQL\) of script \d+; ([a-z ]+)")
PROXY_CUT = re.compile(r"tunnel drain deadline: cut (\d+) tunnels")
PROXY_CLOSED = re.compile(r"phase drained .* closed_by_drain=(\d+)")


def log(message: str) -> None:
    print(f"tcp_drain: {message}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """How one workload's clients ended through one build."""

    build: str
    workload: str
    clients: int
    between: int = 0  # ended between transactions (pgbench: at BEGIN) / with an EOF (redis)
    inside: int = 0  # ended inside a transaction (pgbench) / with a reset (redis)
    errors: Counter[str] = field(default_factory=Counter)  # client messages, counted
    rolled_back: int | None = None  # the server's xact_rollback delta (Postgres)
    open_at_eof: int | None = None  # server log: EOF with an open transaction (Postgres)
    resets: int | None = None  # server log: reset by the client side (Postgres)
    proxy_closed: str = "?"  # the proxy's own count of connections closed by the drain
    proxy_cut: str = "0"  # tunnels the proxy cut at the deadline (none: no line, so 0)
    exit_s: float = 0.0  # SIGTERM to the proxy's exit (the longest of the runs)

    def add(self, other: Outcome) -> None:
        """Sum another run of the same build and workload into this one."""
        self.clients += other.clients
        self.between += other.between
        self.inside += other.inside
        self.errors.update(other.errors)
        if self.rolled_back is not None and other.rolled_back is not None:
            self.rolled_back += other.rolled_back
        if self.open_at_eof is not None and other.open_at_eof is not None:
            self.open_at_eof += other.open_at_eof
        if self.resets is not None and other.resets is not None:
            self.resets += other.resets
        self.proxy_closed = _sum(self.proxy_closed, other.proxy_closed)
        self.proxy_cut = _sum(self.proxy_cut, other.proxy_cut)
        self.exit_s = max(self.exit_s, other.exit_s)


def _sum(a: str, b: str) -> str:
    return str(int(a) + int(b)) if a.isdigit() and b.isdigit() else "?"


# -- the servers -----------------------------------------------------------------------------
def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or in Debian's versioned directory."""
    found = shutil.which(name)
    if found is None:
        candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
        found = candidates[-1] if candidates else None
    return found


def missing_tools(workloads: list[str]) -> str | None:
    """The first missing tool, with the package to install, or None."""
    needs = []
    if any(w.startswith("pgbench") for w in workloads):
        needs += [("pgbench", "postgresql"), ("initdb", "postgresql"),
                  ("postgres", "postgresql"), ("psql", "postgresql-client")]
    if any(w.startswith("redis") for w in workloads):
        needs += [("redis-server", "redis-server"), ("redis-benchmark", "redis-tools")]
    for tool, package in needs:
        if postgres_bin(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


# PostgreSQL's server programs run as ``postgres`` when we are root (initdb refuses root).
PG_USER = "postgres" if os.geteuid() == 0 else None


@dataclass
class Postgres:
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def sql(self, query: str) -> str:
        return subprocess.run(
            [str(postgres_bin("psql")), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", "-Atc", query, "postgres"],
            capture_output=True, text=True, check=True, timeout=30).stdout.strip()

    def log_counts(self, start: int) -> tuple[int, int]:
        """Log lines since byte ``start``: EOFs with an open transaction, and resets."""
        text = self.log_path.read_bytes()[start:].decode(errors="replace")
        return text.count("with an open transaction"), text.count("reset by peer")


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    home = Path(tempfile.mkdtemp(prefix="tcp-drain-pg-"))
    if PG_USER is not None:
        user = pwd.getpwnam(PG_USER)
        os.chown(home, user.pw_uid, user.pw_gid)
    port, data, log_path = free_port(), home / "data", home / "server.log"
    subprocess.run([str(postgres_bin("initdb")), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync", "--no-instructions"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, user=PG_USER, group=PG_USER)
    settings = ["listen_addresses=127.0.0.1", f"unix_socket_directories={home}", "fsync=off",
                "synchronous_commit=off", "full_page_writes=off", "max_connections=100"]
    with log_path.open("wb") as server_log:
        process = subprocess.Popen(
            [str(postgres_bin("postgres")), "-D", str(data), "-p", str(port),
             *[arg for s in settings for arg in ("-c", s)]],
            stdout=server_log, stderr=server_log, user=PG_USER, group=PG_USER)
    server = Postgres(port, log_path, process)
    try:
        until(lambda: _answers(server), 30, "PostgreSQL did not start")
        subprocess.run([str(postgres_bin("pgbench")), "-i", "-q", "-s", "1", "-h", "127.0.0.1",
                        "-p", str(port), "-U", "postgres", "postgres"], check=True,
                       capture_output=True, timeout=120)
        yield server
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)


def _answers(server: Postgres) -> bool:
    try:
        return server.sql("select 1") == "1"
    except subprocess.CalledProcessError:
        return False


@contextmanager
def redis_server() -> Iterator[int]:
    home = Path(tempfile.mkdtemp(prefix="tcp-drain-redis-"))
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(home), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                     text=True).stdout.strip() == "PONG", 30,
              "redis-server did not start")
        yield port
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)


def until(condition: Callable[[], bool], timeout_s: float, failure: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.1)


# -- the proxy and the run -------------------------------------------------------------------
@contextmanager
def proxy(python: str, upstream: int, args: argparse.Namespace) -> Iterator[ProxyRun]:
    port, admin = free_port(), free_port()
    with tempfile.TemporaryFile() as log_file:
        process = subprocess.Popen(
            [python, "-m", "proxy", "--mode", "tcp", "--listen", f"127.0.0.1:{port}",
             "--upstream", f"127.0.0.1:{upstream}", "--admin", f"127.0.0.1:{admin}",
             "--propagation-window", str(args.window), "--drain-timeout", str(args.deadline),
             "--tunnel-drain-timeout", str(args.deadline),
             *(["--tcp-rotate-idle", str(args.tcp_rotate_idle)] if args.tcp_rotate_idle
               else [])],
            cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=log_file,
            env={k: v for k, v in os.environ.items() if not k.startswith("DRAIN_PROXY_")})
        try:
            wait_for_200(admin, "/readyz", 15)
            yield ProxyRun(port, process, log_file)
        finally:
            stop(process)


@dataclass
class ProxyRun:
    port: int
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]

    def drain(self, outcome: Outcome, timeout_s: float) -> None:
        """SIGTERM, then wait for the exit and read what the proxy counted."""
        signalled = time.monotonic()
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout_s)
        outcome.exit_s = time.monotonic() - signalled
        self.log_file.seek(0)
        text = self.log_file.read().decode(errors="replace")
        if match := PROXY_CLOSED.search(text):
            outcome.proxy_closed = match[1]
        if match := PROXY_CUT.search(text):
            outcome.proxy_cut = match[1]


def run_pgbench(build: str, python: str, workload: str, db: Postgres,
                args: argparse.Namespace, script: Path) -> Outcome:
    outcome = Outcome(build, workload, args.clients)
    if workload == "pgbench-paced":
        source, begin, end = ["-f", str(script)], *sql_span(PACED_SCRIPT)
    else:
        source, begin, end = ["-b", "tpcb-like"], BUILTIN_BEGIN, BUILTIN_END
    rolled_back = int(db.sql("select xact_rollback from pg_stat_database where datname = "
                             "'postgres'"))
    log_start = db.log_path.stat().st_size
    with proxy(python, db.port, args) as relay:
        bench = subprocess.Popen(
            [str(postgres_bin("pgbench")), "-n", "-h", "127.0.0.1", "-p", str(relay.port), "-U",
             "postgres", "-c", str(args.clients), "-j", str(args.clients), "-T",
             str(args.duration), *source, "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(args.sigterm_after)  # the schedule under test: load, then SIGTERM
        relay.drain(outcome, args.window + args.deadline + 30)
        _, stderr = bench.communicate(timeout=args.duration + 60)
    if bench.returncode == 1:  # 2: some client aborted, which is what is measured here
        raise RuntimeError(f"pgbench failed: {stderr[-1000:]}")
    for _, command in ABORTED.findall(stderr):
        if int(command) == begin:
            outcome.between += 1
        elif begin < int(command) <= end:
            outcome.inside += 1
    # pgbench's threads write their lines at once, sometimes into each other: find, not split.
    outcome.errors.update(f"aborted: {detail}" for detail in ABORT_DETAIL.findall(stderr))
    until(lambda: db.sql("select count(*) from pg_stat_activity where application_name = "
                         "'pgbench'") == "0", 30, "pgbench's backends did not end")
    outcome.rolled_back = int(db.sql("select xact_rollback from pg_stat_database where "
                                     "datname = 'postgres'")) - rolled_back
    outcome.open_at_eof, outcome.resets = db.log_counts(log_start)
    return outcome


def sql_span(script: str) -> tuple[int, int]:
    """The command numbers of BEGIN and END in a pgbench script (one command a line)."""
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    return lines.index("BEGIN;"), lines.index("END;")


def run_redis(build: str, python: str, port: int, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(build, "redis-full", args.clients)
    with proxy(python, port, args) as relay:
        clients = [subprocess.Popen(
            ["redis-benchmark", "-h", "127.0.0.1", "-p", str(relay.port), "-c", "1", "-n",
             "1000000000", "-t", "set", "-q"],  # one test: no reconnect between tests
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(args.clients)]
        time.sleep(args.sigterm_after)  # the schedule under test: load, then SIGTERM
        relay.drain(outcome, args.window + args.deadline + 30)
        messages = [finish(client) for client in clients]
    for message in messages:
        if "Server closed the connection" in message:
            outcome.between += 1
        elif "reset" in message.lower():
            outcome.inside += 1
    outcome.errors.update(m.splitlines()[-1] for m in messages if m)
    return outcome


def finish(client: subprocess.Popen[str]) -> str:
    """A redis-benchmark client's last words; one still running after the drain is stopped
    (by its PID) and says so."""
    try:
        return client.communicate(timeout=30)[1].strip()
    except subprocess.TimeoutExpired:
        stop(client)
        client.communicate()
        return "still running after the drain (stopped)"


# -- output ----------------------------------------------------------------------------------
def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    lines = [
        f"{args.runs} run(s) of {args.clients} clients per workload and build through "
        f"`python -m proxy --mode tcp`, SIGTERM "
        f"{args.sigterm_after:g} s into the run; --propagation-window {args.window:g}, "
        f"--tunnel-drain-timeout {args.deadline:g}"
        + (f", --tcp-rotate-idle {args.tcp_rotate_idle:g}" if args.tcp_rotate_idle else ""),
        "",
        "| build | workload | clients | ended between transactions (pgbench: at BEGIN; "
        "redis: EOF) | ended inside a transaction (pgbench) / by a reset (redis) "
        "| client errors | server: transactions rolled back | server log: lost in a "
        "transaction / resets | proxy: closed at a quiet moment / cut | SIGTERM to exit (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        server = "n/a" if o.rolled_back is None else str(o.rolled_back)
        logged = "n/a" if o.open_at_eof is None else f"{o.open_at_eof} / {o.resets}"
        errors = "; ".join(f"{n}x {message}" for message, n in sorted(o.errors.items()))
        lines.append(
            f"| {o.build} | {o.workload} | {o.clients} | {o.between} | {o.inside} "
            f"| {errors or 'none'} | {server} | {logged} "
            f"| {o.proxy_closed} / {o.proxy_cut} | {o.exit_s:.2f} |")
    return "\n".join(lines)


def build_arg(text: str) -> tuple[str, str]:
    """``NAME=PYTHON`` (or a bare python, named by its position)."""
    name, _, python = text.rpartition("=")
    found = shutil.which(python)
    if found is None:
        raise argparse.ArgumentTypeError(f"{python}: not an executable python")
    return name, os.path.abspath(found)  # the proxy starts in another directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", type=build_arg, action="append", default=[],
                        metavar="[NAME=]PYTHON",
                        help="a python with drain-proxy installed; repeat to compare builds "
                             "(default: this python)")
    parser.add_argument("--workloads", type=names_among(WORKLOADS), default=list(WORKLOADS),
                        help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--clients", type=count, default=8)
    parser.add_argument("--runs", type=count, default=1,
                        help="runs of each workload per build, summed in its row (default 1)")
    parser.add_argument("--duration", type=count, default=20,
                        help="pgbench -T, seconds: longer than the drain (default 20)")
    parser.add_argument("--sigterm-after", type=seconds, default=3.0)
    parser.add_argument("--window", type=seconds, default=1.0, help="--propagation-window")
    parser.add_argument("--deadline", type=seconds, default=5.0, help="--tunnel-drain-timeout")
    parser.add_argument("--tcp-rotate-idle", type=seconds, default=0.0,
                        help="passed on when set: the quiet period of builds that have one")
    args = parser.parse_args()
    builds = [(name or f"build {n}", python)
              for n, (name, python) in enumerate(args.python or [("", sys.executable)], 1)]
    if (problem := missing_tools(args.workloads)) is not None:
        print(f"tcp_drain: {problem}", file=sys.stderr)
        return 2
    if args.sigterm_after + args.window + args.deadline >= args.duration:
        print("tcp_drain: --duration must outlast SIGTERM plus the window and the deadline",
              file=sys.stderr)
        return 2
    outcomes = run_all(builds, args)
    print(table(outcomes, args))
    return 0


def run_all(builds: list[tuple[str, str]], args: argparse.Namespace) -> list[Outcome]:
    """Every workload through every build, ``--runs`` times, runs of a row summed."""
    outcomes: dict[tuple[str, str], Outcome] = {}

    def record(outcome: Outcome) -> None:
        key = (outcome.workload, outcome.build)
        if key in outcomes:
            outcomes[key].add(outcome)
        else:
            outcomes[key] = outcome

    pg_workloads = [w for w in args.workloads if w.startswith("pgbench")]
    if pg_workloads:
        with postgres_server() as db, tempfile.NamedTemporaryFile(
                "w", suffix=".sql") as script:
            script.write(PACED_SCRIPT)
            script.flush()
            os.chmod(script.name, 0o644)  # read by pgbench; the server never reads it
            for run, workload, (name, python) in _schedule(pg_workloads, builds, args.runs):
                log(f"{workload} through {name}, run {run}")
                record(run_pgbench(name, python, workload, db, args, Path(script.name)))
    if "redis-full" in args.workloads:
        with redis_server() as port:
            for run, _, (name, python) in _schedule(["redis-full"], builds, args.runs):
                log(f"redis-full through {name}, run {run}")
                record(run_redis(name, python, port, args))
    return list(outcomes.values())


def _schedule(workloads: list[str], builds: list[tuple[str, str]],
              runs: int) -> Iterator[tuple[int, str, tuple[str, str]]]:
    """Builds alternate within each run, so a slow spell of the machine hits both."""
    for workload in workloads:
        for run in range(1, runs + 1):
            for build in builds:
                yield run, workload, build


if __name__ == "__main__":
    sys.exit(main())
