"""Is the app behind us able to serve?  The app half of ``/readyz``.

Without ``--readiness-path`` a TCP connect to the app is the test (zero
configuration, catches a crashed or not-yet-listening app).  With it, ``GET PATH``
on the app must answer 2xx: the app's own notion of ready, parsed with h11.
Every probe is made fresh so that ``/readyz`` flips within one probe of the app
going away; the kubelet's probe period bounds the cost.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

from proxy.settings import Settings

PROBE_TIMEOUT_S = 1.0  # below the kubelet's default probe timeout (1 s) plus margin


async def _open(settings: Settings) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = settings.upstream
    if address.unix_path is not None:
        return await asyncio.open_unix_connection(address.unix_path)
    return await asyncio.open_connection(address.host, address.port)


async def _http_status(settings: Settings, path: str,
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    connection = h11.Connection(h11.CLIENT)
    host = str(settings.upstream)
    request = h11.Request(method="GET", target=path.encode(),
                          headers=[("Host", host), ("Connection", "close"),
                                   ("User-Agent", "drain-proxy-readiness")])
    writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            return int(event.status_code)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the app closed the connection without a response")


async def check_app(settings: Settings) -> str | None:
    """None when the app is ready, else a one-line reason."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await _open(settings)
            try:
                if settings.readiness_path is None:
                    return None
                status = await _http_status(settings, settings.readiness_path, reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return "app readiness check timed out"
    except (OSError, h11.ProtocolError) as error:
        return f"app not reachable: {error}"
    if 200 <= status < 300:
        return None
    return f"app readiness path answered {status}"
