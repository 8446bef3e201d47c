"""A client whose handshake is completing when the listener stops accepting is served.

Run as root in a network namespace of its own (``unshare --net``): it brings up that
namespace's loopback and adds nftables rules there, nowhere else.

A client is connected as soon as it has the SYN-ACK and sends its request at once; the
server only makes the connection when the final ACK arrives.  On loopback that gap
lasts microseconds, so under load (``hey`` against a drain) a client lands in it about
once in a hundred thousand connections and, if the socket closes then, is reset.  Here
nftables holds the client's ACKs back, which keeps the server side in SYN_RECV for as
long as the scenario needs, then lets them through once ``stop_accepting`` has begun.

Prints one line and exits 0 when the client got its answer, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

from proxy.drain.listener import Listener, _handshakes_under_way
from proxy.drain.tracker import ConnectionTracker
from proxy.flags import Address

from held_handshakes import nft, wait_for

HOLD_ACKS = """
table inet handshake_race {
    chain out {
        type filter hook output priority 0;
        tcp dport %d tcp flags & (syn | ack) == ack drop
    }
}
"""


class Answer(asyncio.Protocol):
    """Answers the first bytes it gets with ``served`` and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"served")
        self.transport.close()


async def scenario() -> str:
    listener = Listener.bind(Address("127.0.0.1", 0), Answer, ConnectionTracker())
    await listener.start()
    port = listener.port
    nft(HOLD_ACKS % port)
    client = socket.socket()
    client.settimeout(5)
    client.connect(("127.0.0.1", port))  # completes at the SYN-ACK, like any client
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # held back with the ACK
    await wait_for("the server side in SYN_RECV", lambda: _handshakes_under_way(port) == 1)

    stopping = asyncio.get_running_loop().create_task(listener.stop_accepting())
    await asyncio.sleep(0)  # stop_accepting runs up to its first wait
    if stopping.done():
        return "stop_accepting closed the socket with a handshake under way"
    nft("delete table inet handshake_race")  # the client's retransmission gets through

    loop = asyncio.get_running_loop()
    try:
        answer = await loop.run_in_executor(None, client.recv, 100)
    except OSError as error:
        return f"the client was not served: {error!r}"
    finally:
        client.close()
    await asyncio.wait_for(stopping, timeout=5)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "the listener still accepts after stop_accepting"
    except ConnectionRefusedError:
        pass
    return answer.decode()


def main() -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    outcome = asyncio.run(scenario())
    print(outcome)
    return 0 if outcome == "served" else 1


if __name__ == "__main__":
    sys.exit(main())
