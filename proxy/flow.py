"""Read flow control: a transport stops reading for any of several reasons at once.

A client connection may stop reading because a pipelined request waits its turn,
because the app is not reading the request body fast enough, because body bytes
arrive while the app connection is still being made, or because bytes after an
Upgrade request pile up; it reads again only when none of the reasons is left.
Each reason is one bit, so pausing twice for one reason and resuming once is right.

Sans-IO but for the transport it is handed: a client connection's reasons are decided
by its state machine (``client_state``), which owns them; the gate only carries them
out (``apply``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio

PIPELINE: Final = 1  # a complete later request waits for the ones before it
APP_FULL: Final = 2  # the other side's socket is full (client: the app's; app: the client's)
CONNECTING: Final = 4  # request body arriving while the app connection is being made
HELD: Final = 8  # too many bytes held after an Upgrade request while the app decides


class ReadGate:
    """Pauses and resumes one transport's reading by reason."""

    __slots__ = ("_reasons", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reasons = 0

    def set(self, reason: int, paused: bool) -> None:
        before = self._reasons
        after = before | reason if paused else before & ~reason
        if after != before:
            self.apply(after)

    def apply(self, reasons: int) -> None:
        """Pause or resume the transport for exactly these reasons."""
        before, after = self._reasons, reasons
        self._reasons = after
        if bool(before) == bool(after):
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if after:
            transport.pause_reading()
        else:
            transport.resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    @property
    def reasons(self) -> int:
        return self._reasons
