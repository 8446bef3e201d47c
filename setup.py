"""Build hook: compile the modules every request runs through with mypyc, when possible.

drain-proxy is plain, fully typed Python and is correct without this step.  mypyc (part
of mypy) compiles typed modules into C extensions; for the per-request modules below it
halves the Python time of a proxied request (figures in benchmarks/RESULTS.md).  The
compiled module is imported instead of its ``.py`` source, which stays installed beside it.

Compilation is skipped, and the pure-Python package installed, when
``DRAIN_PROXY_NO_EXTENSIONS=1`` is set (use it for editable installs during development:
a compiled module in the source tree would shadow every edit to its ``.py`` file), and,
with a warning, when there is no C compiler or no Python headers or mypyc fails: an
install never fails for want of the speed-up.  ``drain-proxy`` logs which build runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

# The per-request path; the rest (settings, admin, drain, metrics) runs rarely.
HOT_MODULES = [
    "proxy/client.py", "proxy/upstream.py", "proxy/exchange.py", "proxy/http_policy.py",
    "proxy/deadline.py", "proxy/rotation.py", "proxy/tunnel.py", "proxy/tcp.py",
]
OPT_OUT = "DRAIN_PROXY_NO_EXTENSIONS"
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)


def warn(message: str) -> None:
    print(f"drain-proxy build: {message}; installing the pure-Python package (slower)",
          file=sys.stderr)


def compiled_extensions() -> list[Any]:
    if os.environ.get(OPT_OUT) == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc is not available")
        return []
    try:
        return list(mypycify(HOT_MODULES, opt_level="3"))
    except (SystemExit, Exception) as error:  # mypyc reports type errors with SystemExit
        warn(f"mypyc failed ({error!r})")
        return []


class OptionalBuildExt(build_ext):
    """Build the extensions, or leave none behind if any of them cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as error:
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []
            warn(f"cannot compile the C extensions ({error})")


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
