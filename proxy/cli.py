"""The ``drain-proxy`` command: settings, logging, event loop, run.

``drain-proxy demo`` (only as the first argument) runs the rollout simulation
instead; ``inject`` wires the proxy into Kubernetes manifests, ``check`` checks them and
``webhook`` serves the injection webhook (``proxy.adopt``); anything else is the proxy's
flags, and a stray positional is still an error there.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence

from proxy.server import StartupError, loop_factory, run
from proxy.settings import SettingsError, parse_settings, refuse_placeholders
from proxy.telemetry import logs


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"]:
        # Imported here: the sidecar itself never loads the simulation.
        from proxy.rollout.demo import main as demo

        return demo(args[1:])
    if args[:1] in (["check"], ["inject"], ["webhook"]):
        try:
            command = _adopt_command(args[0])
        except ModuleNotFoundError as error:  # the adopt extra is not installed
            print(f"drain-proxy {args[0]}: error: {error}; install drain-proxy[adopt]",
                  file=sys.stderr)
            return 2
        return command(args[1:])
    try:
        settings = parse_settings(args)
        refuse_placeholders(settings)
        factory = loop_factory(settings.loop)
    except SettingsError as error:
        print(f"drain-proxy: error: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(run(settings))
        except StartupError as error:
            print(f"drain-proxy: error: {error}", file=sys.stderr)
            return 2


def _adopt_command(name: str) -> Callable[[Sequence[str]], int]:
    """Imported only when asked for: the sidecar never loads the adopt extra's dependencies
    (ruamel.yaml, jsonpatch)."""
    if name == "check":
        from proxy.adopt.check import main as check

        return check
    if name == "inject":
        from proxy.adopt.inject import main as inject

        return inject
    from proxy.adopt.webhook import main as webhook

    return webhook
