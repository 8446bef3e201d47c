"""Build hook: compile the modules every request runs through with mypyc, when possible.

drain-proxy is plain, fully typed Python and is correct without this step.  mypyc (part
of mypy) compiles typed modules into C extensions; for the per-request modules below it
halves the Python time of a proxied request (figures in benchmarks/RESULTS.md).  The
compiled module is imported instead of its ``.py`` source, which stays installed beside it.

Compilation is skipped, and the pure-Python package installed, when
``DRAIN_PROXY_NO_EXTENSIONS=1`` is set (use it for editable installs during development:
a compiled module in the source tree would shadow every edit to its ``.py`` file), and,
with a warning, when there is no C compiler or no Python headers or mypyc fails: an
install never fails for want of the speed-up.  ``DRAIN_PROXY_REQUIRE_EXTENSIONS=1``
turns that warning into a failed install, for builds that must ship the compiled
modules (the Docker image).  ``drain-proxy`` logs which build runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

# The per-request path; the rest (settings, admin, drain, metrics) runs rarely.
HOT_MODULES = [
    "proxy/http1/client.py", "proxy/http1/client_state.py", "proxy/http1/client_exchanges.py",
    "proxy/http1/client_requests.py", "proxy/http1/client_forwarding.py",
    "proxy/http1/request_parser.py", "proxy/http1/request_head.py", "proxy/http1/chunked.py",
    "proxy/http1/response_parser.py", "proxy/http1/response_head.py",
    "proxy/http1/exchange.py", "proxy/http1/http_policy.py", "proxy/http1/http_response.py",
    "proxy/http1/upstream.py", "proxy/http1/upstream_state.py", "proxy/http1/context.py",
    "proxy/http2/frames.py", "proxy/http2/session.py", "proxy/http2/goaway.py",
    "proxy/http2/streams.py", "proxy/http2/relay.py",
    "proxy/tcp/tunnel.py", "proxy/tcp/relay.py", "proxy/tcp/quiet.py",
    "proxy/context.py", "proxy/drain/deadline.py", "proxy/drain/rotation.py",
    "proxy/telemetry/stats.py",
    "proxy/app_connect.py", "proxy/limits.py", "proxy/flow.py", "proxy/buffers.py",
    "proxy/transitions.py", "proxy/http1/bytes_calls.py",
]
OPT_OUT = "DRAIN_PROXY_NO_EXTENSIONS"
REQUIRED = "DRAIN_PROXY_REQUIRE_EXTENSIONS"
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)
# A fresh build directory for every run: setuptools and mypyc otherwise reuse ./build,
# so a compile that should fail (no compiler) or should not happen (OPT_OUT) would
# silently ship the compiled modules of an earlier install.
BUILD_DIR = tempfile.mkdtemp(prefix="drain-proxy-build-")
atexit.register(shutil.rmtree, BUILD_DIR, ignore_errors=True)


def warn(message: str) -> None:
    if os.environ.get(REQUIRED) == "1":
        sys.exit(f"drain-proxy build: {message}, and {REQUIRED}=1 forbids the pure-Python "
                 f"fallback")
    print(f"drain-proxy build: {message}; installing the pure-Python package (slower)",
          file=sys.stderr)


def compiled_extensions() -> list[Any]:
    if os.environ.get(OPT_OUT) == "1":
        if os.environ.get(REQUIRED) == "1":
            sys.exit(f"drain-proxy build: {OPT_OUT}=1 and {REQUIRED}=1 contradict each other")
        return []
    print(f"drain-proxy build: compiling {len(HOT_MODULES)} modules with mypyc "
          f"(about a minute; {OPT_OUT}=1 skips it)", file=sys.stderr)
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc is not available")
        return []
    try:
        return list(mypycify(HOT_MODULES, opt_level="3", target_dir=f"{BUILD_DIR}/mypyc"))
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


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt},
      options={"build": {"build_base": BUILD_DIR}})
