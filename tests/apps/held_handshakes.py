"""What the scripts that hold a TCP handshake open in a network namespace share: nftables
rules loaded from a script, and a poll with a deadline."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable


def nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


async def wait_for(condition: str, probe: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await asyncio.sleep(0.005)
