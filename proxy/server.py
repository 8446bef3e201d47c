"""Wires one proxy instance together: listener, pool, admin port, drain, signals.

``ProxyServer`` runs inside any event loop, so tests can run it in-process on
asyncio or uvloop; ``run`` is the process entry point that adds signal handlers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import signal
import sys
from collections.abc import Callable

from proxy import __version__, build
from proxy.admin import AdminApp, AdminServer
from proxy.coordinator import DrainCoordinator
from proxy.drain.lifecycle import DrainTimeline
from proxy.drain.listener import Listener
from proxy.drain.rotation import RotationPolicy
from proxy.drain.tracker import Kind
from proxy.flags import Address
from proxy.http1.client import ClientConnection
from proxy.http1.context import HttpContext
from proxy.readiness import check_app
from proxy.settings import Settings, SettingsError
from proxy.tcp.relay import TcpSession
from proxy.telemetry.logs import fields
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("drain_proxy")


class StartupError(Exception):
    """The proxy cannot start with these settings (a port in use, say)."""


class ProxyServer:
    """One running proxy: call ``start``, then ``wait_exit``/``close``."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.propagation_window_max.set(settings.propagation_window_s)
        self.metrics.drain_timeout.set(settings.drain_timeout_s)
        self.metrics.build.info({"version": __version__, "build": build()})
        rotation = RotationPolicy(settings.max_requests_per_connection,
                                  settings.max_connection_age_s, settings.rotation_jitter,
                                  rng if rng is not None else random.Random())
        timeline = DrainTimeline(settings.propagation_window_s, settings.drain_timeout_s,
                                 settings.readiness_on_drain == "fail")
        self.ctx = HttpContext(settings=settings, metrics=self.metrics, timeline=timeline,
                               rotation=rotation)
        try:
            self.listener = Listener.bind(settings.listen, self._protocol_factory(),
                                          self.ctx.connections, self.ctx.make_room)
        except OSError as error:
            raise _cannot_listen("--listen", settings.listen, error) from None
        self.ctx.listener = self.listener
        # Made here, not in start(): signal handlers must exist before start() announces
        # the ports, or a SIGTERM right after the announcement kills the process undrained.
        self.coordinator = DrainCoordinator(self.ctx, self.listener)
        self._admin: AdminServer | None = None
        self.admin_port = 0

    def _protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        if self.settings.mode == "tcp":
            return lambda: TcpSession(self.ctx).client_end
        return lambda: ClientConnection(self.ctx)

    @property
    def port(self) -> int:
        return self.listener.port

    async def start(self) -> None:
        app = AdminApp(self.ctx, self.coordinator, lambda: check_app(self.settings))
        self._admin = AdminServer(app)
        admin = self.settings.admin
        try:
            self.admin_port = await self._admin.start(admin.host, admin.port)
        except OSError as error:
            self.listener.close()
            raise _cannot_listen("--admin", admin, error) from None
        await self.listener.start()
        self._announce()

    def _announce(self) -> None:
        """The effective configuration, in one line."""
        settings = self.settings
        loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") \
            else "asyncio"
        exit_by = settings.propagation_window_s + max(settings.drain_timeout_s,
                                                      settings.tunnel_drain_timeout_s)
        log.info(
            "listening on %s:%d, admin on %s:%d, upstream %s (drain-proxy %s, %s build, %s, "
            "mode %s); window %s, drain timeout %g s, grace period %g s: exit by %g s after "
            "SIGTERM", settings.listen.host, self.port, settings.admin.host, self.admin_port,
            settings.upstream, __version__, build(), loop, settings.mode,
            settings.window_description, settings.drain_timeout_s,
            settings.termination_grace_period_s, exit_by,
            extra=fields(version=__version__, build=build(), loop=loop, mode=settings.mode,
                         port=self.port, admin_port=self.admin_port,
                         upstream=str(settings.upstream),
                         propagation_window_s=settings.propagation_window_s,
                         adaptive_window=settings.adaptive_window,
                         drain_timeout_s=settings.drain_timeout_s,
                         termination_grace_period_s=settings.termination_grace_period_s))

    async def close(self) -> None:
        """Stop everything now (tests and the end of ``run``); no drain."""
        self.coordinator.close()
        self.ctx.upstream_warnings.close()
        self.ctx.capacity_warnings.close()
        self.listener.close()
        if self._admin is not None:
            await self._admin.close()
        for connection in self.ctx.connections.connections(*Kind):
            connection.cut()
        self.ctx.pool.close()
        # Closed transports release their sockets on the next loop iterations;
        # uvloop refuses to close a loop that still has them (EBUSY).
        for _ in range(3):
            await asyncio.sleep(0)


def _cannot_listen(flag: str, address: Address, error: OSError) -> StartupError:
    """One wording for both ports, whatever the error (a name that does not resolve has
    no strerror)."""
    reason = error.strerror or str(error)
    return StartupError(f"{flag} {address}: cannot listen: {reason}")


def _warn_about_budget(settings: Settings) -> None:
    if settings.drain_budget_s > settings.termination_grace_period_s:
        log.warning(
            "propagation window %.1fs + drain timeout %.1fs + 2s margin = %.1fs exceeds the "
            "termination grace period %.1fs: kubelet may SIGKILL the pod mid-drain",
            settings.propagation_window_s, settings.drain_timeout_s, settings.drain_budget_s,
            settings.termination_grace_period_s)


def _reachable_from_other_hosts(host: str) -> bool:
    """Whether a listener on ``host`` can be reached from elsewhere: anything but loopback
    (a wildcard, a pod IP, a name that may resolve to either)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _warn_without_token(settings: Settings, admin_port: int) -> None:
    """Said once the listeners are up (a port that cannot be listened on is the only news
    then) and only where another pod could call /drain: on loopback none can."""
    admin = settings.admin
    if settings.drain_token is None and _reachable_from_other_hosts(admin.host):
        log.warning("no --drain-token: any pod that reaches the admin port %s can drain this "
                    "one with /drain (see deploy/README.md)",
                    Address(admin.host, admin_port))


def _explain_ctrl_c(settings: Settings) -> None:
    """In a terminal, Ctrl-C starts the same drain as SIGTERM and waits out the window: right
    for a pod, a surprise for someone trying the proxy by hand.  Said once, plainly; the
    behaviour stays the same everywhere (a second Ctrl-C already stops at once)."""
    if sys.stdin is not None and sys.stdin.isatty():
        log.info("stdin is a terminal: Ctrl-C drains for the %g s propagation window before "
                 "exiting; press Ctrl-C again to stop at once", settings.propagation_window_s)


async def run(settings: Settings) -> int:
    """Serve until a signal has been received and the drain is over; return the exit code."""
    _warn_about_budget(settings)
    server = ProxyServer(settings)
    coordinator = server.coordinator
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, coordinator.on_signal, signal.Signals(signum).name)
    await server.start()
    _warn_without_token(settings, server.admin_port)
    _explain_ctrl_c(settings)
    await coordinator.wait_exit()
    await server.close()
    code = coordinator.exit_code
    log.info("exiting with code %d", code)
    return code


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when asked for or (``auto``) when importable, else asyncio's own loop."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SettingsError("--loop: invalid value 'uvloop'; uvloop is not installed, "
                                "allowed: auto or asyncio (any case)") from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
