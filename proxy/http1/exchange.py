"""One request/response exchange on a client connection, and its request-side buffering.

The request body is streamed to the app as it arrives.  Until an app connection is
attached it waits in ``pending`` (bounded: the client connection stops reading past
``MAX_PENDING_BODY_BYTES``).  A copy of everything sent upstream is kept in
``replay`` while it stays small, so that an idempotent request whose pooled
connection turned out dead can be sent once more (RFC 9112 section 9.3.1) without
asking the client to resend.

``started_at`` comes from ``time.monotonic()``, not the event loop's clock: uvloop's
counts whole milliseconds, which would make the sub-millisecond buckets of the
request-duration histogram meaningless.
"""

from __future__ import annotations

import time
from typing import Final

from proxy.http1.http_policy import ForwardRequest
from proxy.http1.upstream import UpstreamConnection

# Read as a C static, not looked up on the time module per call (about 250 instructions).
MONOTONIC: Final = time.monotonic
MAX_PENDING_BODY_BYTES: Final = 256 * 1024  # a few socket reads; beyond it, backpressure
MAX_REPLAY_BYTES: Final = 64 * 1024  # requests larger than this are not retried


class Exchange:
    """One request from its first byte to the end of its response."""

    __slots__ = (
        "detail", "dispatched_at", "error", "finished", "framing_chunked", "head_flushed",
        "head_sent", "pending", "pending_bytes", "replay", "replay_bytes", "request",
        "request_complete", "retried", "sent_bytes", "started_at", "status", "upstream",
        "upstream_s",
    )

    def __init__(self) -> None:
        self.started_at = MONOTONIC()
        self.request: ForwardRequest | None = None  # None until its head is complete
        self.error: bytes | None = None  # a response the proxy must send instead
        self.detail = ""  # why the app failed it: for the access log, not for the client
        self.request_complete = False  # the whole request (body, trailers) was read
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.replay: list[bytes] | None = []
        self.replay_bytes = 0
        self.upstream: UpstreamConnection | None = None
        self.head_sent = False  # the response head is decided (it may still be buffered)
        self.head_flushed = False  # ... and written to the client: an error now must abort
        self.framing_chunked = False  # the response goes to the client chunked
        self.status = 0
        self.sent_bytes = 0  # response body bytes relayed to the client
        self.dispatched_at = 0.0  # access log only: when the request went to the app
        self.upstream_s = 0.0  # access log only: from then to the response head
        self.retried = False
        self.finished = False

    def take_pending(self) -> bytes:
        """The head and any body received so far, to send on a new app connection."""
        assert self.request is not None
        pending = self.pending
        data = b"".join([self.request.head, *pending]) if pending else self.request.head
        pending.clear()
        self.pending_bytes = 0
        self.remember(data)
        return data

    def add_body(self, data: bytes) -> bool:
        """Forward or buffer request body bytes; True when the buffer is full."""
        if self.upstream is not None:
            self.remember(data)
            self.upstream.send(data)
            return False
        self.pending.append(data)
        self.pending_bytes += len(data)
        return self.pending_bytes > MAX_PENDING_BODY_BYTES

    def remember(self, data: bytes) -> None:
        if self.replay is None:
            return
        self.replay_bytes += len(data)
        if self.replay_bytes > MAX_REPLAY_BYTES:
            self.replay = None
        else:
            self.replay.append(data)

    @property
    def replayable(self) -> bool:
        """RFC 9112 9.3.1: an idempotent request, not retried yet, whole and at hand, with
        nothing of its response sent to the client."""
        return (self.request is not None and self.request.idempotent and not self.retried
                and self.request_complete and self.replay is not None and not self.head_sent)

    def replay_bytes_for_retry(self) -> bytes:
        assert self.replay is not None
        return b"".join(self.replay)
