"""What the HTTP/1.1 connections share beyond ``ProxyContext``: the pool of app
connections, who the peers are (for the forwarding headers), and the accounting and
access log of a finished exchange.

HTTP/2 and TCP connections open their own app connections and have no exchanges of
this kind, so they take the plain ``ProxyContext``.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from proxy.context import ProxyContext
from proxy.http1.exchange import MONOTONIC, Exchange
from proxy.http1.http_policy import Peer
from proxy.http1.upstream import UpstreamPool
from proxy.tcp.tunnel import Tunnel
from proxy.telemetry.logs import fields

access_log = logging.getLogger("drain_proxy.access")


class HttpContext(ProxyContext):
    """Shared state of one proxy instance, as its HTTP/1.1 connections see it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pool = UpstreamPool(self.settings, self.limits)
        self._peers: dict[str, Peer] = {}
        # Host for requests that arrive without one (HTTP/1.0).
        self.upstream_authority = str(self.settings.upstream).encode()

    def peer(self, address: object) -> Peer:
        """Who is on the other end of an accepted connection (its address is a tuple for
        TCP), as the header policy needs to know.  Once per connection, remembered per
        address: a client that opens a connection per request pays the lookup once."""
        host = address[0] if isinstance(address, tuple) else "unix"
        peer = self._peers.get(host)
        if peer is None:
            if len(self._peers) >= 4096:
                self._peers.clear()  # bounded: a scan of many addresses cannot grow it
            peer = self._peers[host] = Peer(host.encode(), self._trusts(host),
                                            self.settings.allow_underscores_in_headers)
        return peer

    def _trusts(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False  # a unix socket peer
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
        return any(ip in network for network in self.settings.trusted_proxies)

    def exchange_finished(self, exchange: Exchange, status: int, answered: bool,
                          client_ip: bytes) -> None:
        """An exchange is over: a response of ``status``, or not ``answered`` at all (cut
        by the drain, or dropped behind a closing response): then no response is counted."""
        if exchange.finished:
            return
        exchange.finished = True
        exchange.status = status
        self.requests_in_flight -= 1
        if not answered or (exchange.request is None and status in (0, 499)):
            return  # nothing was answered (the client may have gone away mid-head)
        duration = MONOTONIC() - exchange.started_at
        self.responses.observe(status, duration)
        if self.draining or self.access_log:
            self._response_extras(exchange, duration, client_ip)

    def _response_extras(self, exchange: Exchange, duration_s: float, client_ip: bytes) -> None:
        """What a completed response adds while draining, or with the access log on."""
        if self.draining:
            self.timeline.served_while_draining += 1
            self.metrics.served_while_draining.inc()
        if not self.access_log or exchange.request is None:
            return
        if exchange.status == 101:  # a tunnel starts: its line comes when it ends
            exchange.upstream_s = time.monotonic() - exchange.dispatched_at
            return
        error: dict[str, object] = {"error": exchange.detail} if exchange.detail else {}
        self._access_line(exchange, client_ip, exchange.sent_bytes, duration_s, error)

    def tunnel_ended(self, exchange: Exchange, tunnel: Tunnel, reason: str,
                     client_ip: bytes) -> None:
        """The access log line of an Upgrade, once its tunnel is over: the bytes each way and
        how long it lasted from the request, which a line at the 101 could not know."""
        if self.access_log and exchange.request is not None:
            duration = time.monotonic() - exchange.started_at
            self._access_line(exchange, client_ip, tunnel.upstream.received, duration,
                              {"bytes_from_client": tunnel.client.received,
                               "tunnel_end": reason})

    def _access_line(self, exchange: Exchange, client_ip: bytes, sent: int, duration_s: float,
                     more: dict[str, object]) -> None:
        request = exchange.request
        assert request is not None
        version = "HTTP/1.0" if request.http_10 else "HTTP/1.1"
        access_log.info(
            '%s "%s %s %s" %d %d %.6f %.6f', client_ip.decode(), request.method.decode(),
            request.target.decode("latin-1"), version, exchange.status, sent,
            duration_s, exchange.upstream_s,
            extra=fields(client=client_ip.decode(), method=request.method.decode(),
                         path=request.target.decode("latin-1"), status=exchange.status,
                         bytes=sent, duration_s=round(duration_s, 6),
                         upstream_s=round(exchange.upstream_s, 6), **more))
