"""The ``drain-proxy`` command: settings, logging, event loop, run.

``drain-proxy demo`` (only as the first argument) runs the rollout simulation
instead, and ``drain-proxy inject`` wires the proxy into Kubernetes manifests;
anything else is the proxy's flags, and a stray positional is still an error there.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from proxy.server import StartupError, loop_factory, run
from proxy.settings import SettingsError, parse_settings, refuse_placeholders
from proxy.telemetry import logs


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"]:
        # Imported here: the sidecar itself never loads the simulation.
        from proxy.rollout.demo import main as demo

        return demo(args[1:])
    if args[:1] == ["inject"]:
        # Imported here: the sidecar itself never loads ruamel.yaml.
        from proxy.adopt.inject import main as inject

        return inject(args[1:])
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
