"""The app behind the drain-under-load benchmark, served by uvicorn.

Each request takes 0 to ``DRAIN_APP_DELAY_MS`` ms (default 0: answered at once).  A POST
(the eager clients') gets its head at once and its body 0 to ``DRAIN_APP_SPLIT_MS`` ms
later (default 0), so that some responses are under way when the drain begins: their
heads said nothing of closing, which is the case a drain must not cut short.  ``/stats``
answers, straight from the app, the CLOCK_MONOTONIC time of the last
response it sent, which the benchmark compares with the proxy's exit time.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
last_response_at = 0.0
MAX_DELAY_S = float(os.environ.get("DRAIN_APP_DELAY_MS", "0")) / 1000
MAX_SPLIT_S = float(os.environ.get("DRAIN_APP_SPLIT_MS", "0")) / 1000


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    global last_response_at
    if scope["type"] != "http":
        return
    if scope["path"] == "/stats":
        body = f"{last_response_at:.6f}".encode()
    else:
        if MAX_DELAY_S:
            await asyncio.sleep(random.uniform(0, MAX_DELAY_S))
        body = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    if MAX_SPLIT_S and scope["method"] == "POST":
        await asyncio.sleep(random.uniform(0, MAX_SPLIT_S))  # the head is out already
    await send({"type": "http.response.body", "body": body})
    if scope["path"] != "/stats":
        last_response_at = time.monotonic()
