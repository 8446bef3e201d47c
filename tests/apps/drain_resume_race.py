"""A connection closing during the drain must not make the listener accept again.

Run as root in a network namespace of its own (``unshare --net``): it brings up that
namespace's loopback and adds nftables rules there, nowhere else.

The drain stops accepting, then waits for the handshakes under way before it closes the
listening socket (``Listener.stop_accepting``).  A connection that closes meanwhile
releases a ``--max-connections`` slot.  That release used to
undo the drain's pause: an asyncio server accepted on the socket again, and what it
accepted was not counted as an adoption, so the drain could end (and the process exit)
between its accept and its register.  nftables holds one handshake in SYN_RECV to keep
the drain in that wait for as long as the scenario needs.

Prints one line and exits 0 when the listener stayed paused and the held client was
served, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from proxy.drain.lifecycle import Phase
from proxy.drain.listener import _handshakes_under_way

from held_handshakes import nft, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers
from helpers import Client, app_and_proxy

HOLD_ACKS = """
table inet drain_resume_race {
    chain out {
        type filter hook output priority 0;
        tcp sport %d tcp dport %d tcp flags & (syn | ack) == ack drop
    }
}
"""


async def scenario() -> str:
    async with app_and_proxy("--propagation-window", "0", "--drain-timeout", "5") as (_, proxy):
        port = proxy.port
        leaving = await Client.open(port)  # a client that connected and leaves in the drain
        held = socket.socket()
        held.bind(("127.0.0.1", 0))  # its port, so that only its ACKs are held
        nft(HOLD_ACKS % (held.getsockname()[1], port))
        held.settimeout(5)
        held.connect(("127.0.0.1", port))  # completes at the SYN-ACK, like any client
        held.sendall(b"GET /held HTTP/1.1\r\nHost: test\r\n\r\n")  # held back with the ACK
        await wait_for("the server side in SYN_RECV", lambda: _handshakes_under_way(port) == 1)

        proxy.coordinator.trigger("test")
        await wait_for("the drain", lambda: proxy.ctx.timeline.phase is Phase.DRAINING)
        await asyncio.sleep(0.05)  # the drain is waiting for the held handshake
        if proxy.listener.accepting:
            return "still accepting during the drain"
        leaving.close()
        await wait_for("the leaving connection gone", lambda: len(proxy.ctx.connections) <= 1)
        await asyncio.sleep(0.05)  # a resumed server starts in a task: give it the time
        accepting = proxy.listener.accepting
        nft("delete table inet drain_resume_race")  # the client's retransmission gets through
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(None, held.recv, 100)
        except OSError as error:
            return f"the held client was not served: {error!r}"
        finally:
            held.close()
        await asyncio.wait_for(proxy.coordinator.wait_drained(), 5)
        if accepting:
            return "a connection closing during the drain made the listener accept again"
        if not answer.startswith(b"HTTP/1.1 200"):
            return f"the held client got {answer!r}"
        return "ok"


def main() -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if sys.argv[1:] == ["uvloop"]:
        import uvloop

        outcome = uvloop.run(scenario())
    else:
        outcome = asyncio.run(scenario())
    print(outcome)
    return 0 if outcome == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
