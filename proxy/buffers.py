"""Memory per connection: one shared read buffer, and small write buffers.

A peer that reads slowly (a client on a slow link, an app busy elsewhere) makes the
proxy hold what it read from the other side until the peer takes it.  With plain
protocols, asyncio and uvloop read up to 256 KiB at a time into a new bytes object,
and a transport buffers up to 64 KiB before it asks its producer to pause: a slow
reader could pin about 320 KiB, 1000 of them 300 MiB, in a sidecar limited to 128 MiB.

So every connection reads through ``asyncio.BufferedProtocol`` into one buffer of
``READ_BYTES`` that all connections share (the loop reads one socket at a time, and
each read is parsed or copied before the next), and every transport pauses its
producer as soon as anything waits to be sent (``WRITE_HIGH_BYTES`` is 0).  What waits
for a slow peer is then at most one read, and about 60 KiB of RSS per slow reader with
the objects around it (measured in benchmarks/bench_memory.py).  Smaller reads would cost
more system calls on large bodies.
"""

from __future__ import annotations

import asyncio
import mmap
from typing import Final

READ_BYTES: Final = 64 * 1024
WRITE_HIGH_BYTES: Final = 0
WRITE_LOW_BYTES: Final = 0

# The one read buffer.  An anonymous mapping rather than a bytearray because slicing an
# mmap gives bytes: a relay's copy of a read in one step (``SharedCopyProtocol``).
SHARED_MAP: Final = mmap.mmap(-1, READ_BYTES, flags=mmap.MAP_PRIVATE)
# The same memory as a memoryview, so a read is sliced without a copy.
SHARED_READ: Final = memoryview(SHARED_MAP)


class SharedReadProtocol(asyncio.BufferedProtocol):
    """A protocol that reads into ``SHARED_READ`` and hands each read to ``data_received``
    as a view of it, valid only until ``data_received`` returns: what must outlive the call
    (held bytes, bytes a transport may keep) is copied there, e.g. ``data.tobytes()``."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return SHARED_READ  # one read at a time, handled before the next (see above)

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(SHARED_READ[:nbytes])

    def data_received(self, data: memoryview | bytes) -> None:
        raise NotImplementedError


class SharedCopyProtocol(asyncio.BufferedProtocol):
    """A protocol that reads into ``SHARED_MAP`` and hands each read to ``data_received``
    as bytes, a copy: for a relay, whose peer's transport may keep what it cannot send yet,
    and for HTTP/1.1 clients and app connections, whose parsers need the bytes of a head
    anyway and pass on a body that fills a read as this same object.

    Slicing the mmap copies in one C call.  A view of ``SHARED_READ`` sliced, then copied
    with ``tobytes``, costs a memoryview object and a method call more on every read: about
    1,500 of a relayed round trip's 11,000 instructions (``bench_instructions.py --mode tcp``).
    A bytes object also saves uvloop wrapping the data in a memoryview to send it."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> mmap.mmap:
        return SHARED_MAP  # one read at a time, copied before the next (see above)

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(SHARED_MAP[:nbytes])

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError


def limit_writes(transport: asyncio.Transport) -> None:
    """Make a transport ask its producer to pause at WRITE_HIGH_BYTES buffered (uvloop's
    transports are not asyncio subclasses, hence no isinstance check)."""
    transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES, low=WRITE_LOW_BYTES)
