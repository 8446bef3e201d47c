"""The same small app for gunicorn (WSGI) and uvicorn (ASGI), run as real servers.

``POST /upload`` is refused with 401 before any of its body is read, and the connection
is kept alive: what an app does when authentication fails on an upload.  Every other
request is answered with its method, path and Cookie, so a test can tell whose request
the app believed it was answering.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any


def describe(method: str, path: str, cookie: str) -> bytes:
    return f"{method} {path} cookie={cookie}".encode()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/upload":
        start_response("401 Unauthorized", [("Content-Length", "0")])
        return [b""]
    body = describe(environ["REQUEST_METHOD"], environ["PATH_INFO"],
                    environ.get("HTTP_COOKIE", "-"))
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def asgi(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/upload":
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    cookie = dict(scope["headers"]).get(b"cookie", b"-").decode()
    body = describe(scope["method"], scope["path"], cookie)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
