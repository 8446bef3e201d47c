"""Which tools and CPUs the run has, and the one-line machine description printed with results.

Numbers from a benchmark mean little without the machine and the tool versions behind them, so
the description goes at the top of the output and into the JSON, ready for RESULTS.md.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SBIN = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # nginx and haproxy live in /usr/sbin


@dataclass(frozen=True)
class Tools:
    """Paths of the optional tools, None when absent; found once so every module agrees."""

    nginx: str | None
    haproxy: str | None
    wrk: str | None

    @classmethod
    def find(cls) -> Tools:
        """Look in PATH (and sbin, which a non-root PATH often lacks)."""
        return cls(shutil.which("nginx", path=SBIN), shutil.which("haproxy", path=SBIN),
                   shutil.which("wrk"))


@dataclass(frozen=True)
class Pinning:
    """Where servers (app + proxy under test) and the load generator run; None: unpinned."""

    server_cpu: str | None
    load_cpu: str | None

    @classmethod
    def choose(cls) -> Pinning:
        """Separate cores so the load generator never steals CPU from what it measures.

        The app shares the proxy's core, as a sidecar shares its pod's CPU.  Needs taskset and
        at least 2 usable CPUs; otherwise nothing is pinned.
        """
        cpus = sorted(os.sched_getaffinity(0))
        if shutil.which("taskset") is None or len(cpus) < 2:
            return cls(None, None)
        return cls(str(cpus[0]), str(cpus[1]))

    def describe(self) -> str:
        """What was pinned where, in words."""
        if self.server_cpu is None:
            return "nothing pinned (taskset missing or fewer than 2 usable CPUs)"
        return (f"load generator on CPU {self.load_cpu}, app + proxy under test on CPU "
                f"{self.server_cpu} (taskset -c)")


def version(argv: list[str]) -> str:
    """First version-looking token of a tool's `-v` output (nginx prints it on stderr)."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(r"\d+\.\d+[\w.+~-]*", res.stdout + res.stderr)
    return m[0] if m else "?"


def first_value(path: str, key: str, sep: str) -> str | None:
    """Value of the first `key<sep>value` line of a text file; None if there is none."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(sep, 1)[1].strip().strip('"')
    return None


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo (x86), else whatever platform knows."""
    return (first_value("/proc/cpuinfo", "model name", ":") or platform.processor()
            or platform.machine())


def os_name() -> str:
    """PRETTY_NAME from /etc/os-release, e.g. `Debian GNU/Linux 12 (bookworm)`."""
    return first_value("/etc/os-release", "PRETTY_NAME=", "=") or platform.system()


def package(name: str) -> str:
    """Installed version of a Python package drain-proxy runs on, or `absent`."""
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} absent"


def proxy_home() -> Path:
    """Where `python -m proxy` is started: outside the source tree when drain-proxy is
    installed, so the benchmark measures the installed build (compiled where possible)."""
    try:
        importlib.metadata.distribution("drain-proxy")
    except importlib.metadata.PackageNotFoundError:
        return Path(__file__).resolve().parent.parent
    return Path(tempfile.gettempdir())


UNKNOWN_BUILD = "drain-proxy build unknown"


def proxy_build(python: str = sys.executable, cwd: Path | None = None) -> str:
    """`drain-proxy 0.1.0 (compiled)`, as `python -m proxy` started in `cwd` (by default
    where the benchmarks start it) will import it; UNKNOWN_BUILD when it cannot."""
    probe = "import proxy; print(proxy.__version__, proxy.build())"
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run([python, "-c", probe], cwd=cwd or proxy_home(), text=True,
                             capture_output=True, timeout=30, check=True).stdout
        release, build = out.split()
        return f"drain-proxy {release} ({build})"
    return UNKNOWN_BUILD


def describe(tools: Tools, pinning: Pinning) -> str:
    """One line: CPU, cores, OS, kernel, Python (+ uvloop), tools, pinning."""
    usable = len(os.sched_getaffinity(0))
    parts = [cpu_model(), f"{os.cpu_count()} CPUs ({usable} usable)", os_name(),
             f"kernel {platform.release()}",
             f"Python {platform.python_version()} ({package('uvloop')})",
             proxy_build()]
    for name, path in (("nginx", tools.nginx), ("HAProxy", tools.haproxy), ("wrk", tools.wrk)):
        parts.append(f"{name} {version([path, '-v'])}" if path else f"{name} absent")
    return ", ".join(parts) + f"; pinning: {pinning.describe()}"
