"""The app container of a kernel-rollout pod: ``proxy.rollout.app`` as a process of its own.

It answers ``/`` with its pod's name, so a client behind the Service's DNAT (which
only ever sees the virtual IP) can tell which pod served it.  It installs no signal
handler on purpose: SIGTERM kills it the way it kills an app without a graceful
shutdown, and the kernel closes its sockets (a FIN, or a RST for a socket with
unread data).

    python benchmarks/kernel_pod_app.py --listen 10.77.0.11:8080 --name A
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's app

from proxy.rollout.app import App


async def serve(host: str, port: int, name: str, service_s: float, slow_s: float) -> None:
    app = App(service_s, slow_s, body=f"{name}\n".encode())
    await app.start(host, port)
    await asyncio.Event().wait()  # until SIGTERM ends the process


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--name", required=True, help="the pod's name, answered by /")
    parser.add_argument("--service-time", type=float, default=0.002, metavar="S")
    parser.add_argument("--slow", type=float, default=1.5, metavar="S",
                        help="how long /slow holds the second half of its body")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host, int(port), args.name, args.service_time, args.slow))


if __name__ == "__main__":
    main()
