"""Connecting to the app, and the ways an exchange with it fails.

Every protocol the proxy serves (HTTP/1.1 through the pool, HTTP/2 and TCP each with a
connection of their own) connects to the app the same way, within
``--upstream-connect-timeout``, and reports a failure as an ``UpstreamFailure`` with
a ``Failure``: its ``label`` counts it in ``drain_proxy_upstream_errors_total`` and its
``status`` is what a client is told when nothing of a response reached it yet.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Final

from proxy.settings import Settings


class Failure(enum.Enum):
    """Why an exchange with the app failed."""

    REFUSED = "refused"  # the connection could not be made
    CONNECT_TIMEOUT = "connect_timeout"
    CLOSED = "closed"  # EOF before the response was complete
    RESET = "reset"  # RST
    TIMEOUT = "timeout"  # no response head, or no response byte for too long
    STALLED = "stalled"  # the app stopped reading the request body
    PROTOCOL = "protocol"  # the app's response is not valid HTTP/1.1
    TOO_LARGE = "too_large"  # a response head or trailers over --max-response-header-bytes

    @property
    def label(self) -> str:
        """Its drain_proxy_upstream_errors_total reason."""
        return _LABELS[self]

    @property
    def status(self) -> int:
        """What the client is told when nothing of the response was sent yet."""
        return 504 if _LABELS[self] == "timeout" else 502


_LABELS: Final = {
    Failure.REFUSED: "connect", Failure.CONNECT_TIMEOUT: "timeout", Failure.CLOSED: "reset",
    Failure.RESET: "reset", Failure.TIMEOUT: "timeout", Failure.STALLED: "timeout",
    Failure.PROTOCOL: "protocol", Failure.TOO_LARGE: "too_large",
}
class UpstreamFailure(Exception):
    """An exchange with the app failed: what happened, and what the retry rule needs."""

    def __init__(self, failure: Failure, detail: str, reused: bool = False,
                 response_bytes: bool = False) -> None:
        super().__init__(detail)
        self.failure = failure
        self.reused = reused  # on a pooled connection
        self.response_bytes = response_bytes  # after some byte of a response arrived


async def connect_to_app(settings: Settings, protocol: asyncio.BaseProtocol) -> None:
    """Connect ``protocol`` to the app (TCP or unix socket) within the connect timeout;
    UpstreamFailure REFUSED (502) or CONNECT_TIMEOUT (504).  Used by the pool and by
    TCP mode."""
    loop = asyncio.get_running_loop()
    address = settings.upstream
    try:
        async with asyncio.timeout(settings.upstream_connect_timeout_s):
            if address.unix_path is not None:
                await loop.create_unix_connection(lambda: protocol, address.unix_path)
            else:
                await loop.create_connection(lambda: protocol, address.host, address.port)
    except TimeoutError:
        raise UpstreamFailure(Failure.CONNECT_TIMEOUT, "connecting to the app timed out") \
            from None
    except OSError as error:
        raise UpstreamFailure(Failure.REFUSED, f"cannot connect to the app: {error}") from None
