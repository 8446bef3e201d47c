"""The settings that every request reads, held by a compiled class.

``Settings`` is a pure-Python frozen dataclass (it is built once, from flags and the
environment, and most of it is read at start-up).  A read of one of its fields from the
compiled per-request code is a generic attribute lookup; a read from this class is a
field access.  The upstream pool builds the one instance from the settings at start-up,
and the proxy context shares it; the values never change after that.
"""

from __future__ import annotations

from proxy.settings import Settings


class RequestLimits:
    """Timeouts and head limits, as the per-request code reads them."""

    __slots__ = ("body_timeout_s", "header_timeout_s", "idle_timeout_s", "max_header_bytes",
                 "max_header_count", "max_request_line_bytes", "max_response_header_bytes",
                 "upstream_idle_timeout_s", "upstream_timeout_s")

    def __init__(self, settings: Settings) -> None:
        self.header_timeout_s: float = settings.header_timeout_s
        self.body_timeout_s: float = settings.body_timeout_s
        self.idle_timeout_s: float = settings.idle_timeout_s
        self.upstream_timeout_s: float = settings.upstream_timeout_s
        self.upstream_idle_timeout_s: float = settings.upstream_idle_timeout_s
        self.max_request_line_bytes: int = settings.max_request_line_bytes
        self.max_header_bytes: int = settings.max_header_bytes
        self.max_header_count: int = settings.max_header_count
        self.max_response_header_bytes: int = settings.max_response_header_bytes
