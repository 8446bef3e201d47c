"""Closing the listener serves what is already queued in the kernel backlog, and the
clients whose handshake is still completing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.drain.listener import Listener, Pause
from proxy.drain.tracker import ConnectionTracker
from proxy.flags import Address

from conftest import Run
from helpers import CHILD_CWD, Client, app_and_proxy, child_env, eventually

HANDSHAKE_RACE = Path(__file__).parent / "apps" / "handshake_race.py"


def test_connections_waiting_in_the_backlog_are_served_when_the_listener_closes(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with app_and_proxy() as (_app, proxy):
            port = proxy.port
            proxy.listener.pause(Pause.CAPACITY)  # as at --max-connections: new connections queue
            queued = [await Client.open(port) for _ in range(3)]
            answers = [asyncio.get_running_loop().create_task(c.request("GET", f"/q{i}"))
                       for i, c in enumerate(queued)]
            done, _ = await asyncio.wait(answers, timeout=0.2)
            assert not done, "paused: nothing is accepted"
            await proxy.listener.stop_accepting()  # the drain, at the end of the window
            bodies = sorted([(await answer).body for answer in answers])
            assert bodies == [b"GET /q0 0", b"GET /q1 0", b"GET /q2 0"]
            try:
                await Client.open(port)
                raise AssertionError("a closed listener must refuse")
            except ConnectionRefusedError:
                pass
            for client in queued:
                client.close()

    run(scenario())


def _descriptors_of(sock: socket.socket) -> int:
    """How many of this process's descriptors refer to ``sock`` (itself and its dups)."""
    inode = os.fstat(sock.fileno()).st_ino
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.fstat(int(name)).st_ino == inode
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_quick_pause_and_resume_never_leave_a_second_server(run: Run[None]) -> None:
    """Each asyncio server holds a dup of the listening socket; one left behind would go
    on accepting past --max-connections."""

    async def scenario() -> None:
        listener = Listener.bind(Address("127.0.0.1", 0), asyncio.Protocol, ConnectionTracker())
        sock = listener._sock
        assert sock is not None
        await listener.start()
        assert _descriptors_of(sock) == 2  # the socket and the running server's dup
        listener.pause(Pause.CAPACITY)
        listener.resume(Pause.CAPACITY)
        listener.pause(Pause.CAPACITY)
        listener.resume(Pause.CAPACITY)  # a second resume while the first creates its server
        await eventually(lambda: listener.accepting)
        await asyncio.sleep(0.05)  # let any other pending resume run (the bug under test)
        listener.pause(Pause.CAPACITY)
        await eventually(lambda: _descriptors_of(sock) == 1, timeout_s=1)
        listener.close()

    run(scenario())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                    or shutil.which("nft") is None or shutil.which("ip") is None,
                    reason="needs root, unshare, ip and nft (apt-get install nftables) to hold "
                           "a handshake open in a network namespace of its own")
def test_a_client_still_in_its_handshake_when_the_listener_closes_is_served() -> None:
    """The one request in ~100 000 that ``hey`` saw reset at the end of the window: the
    client had its SYN-ACK and had sent its request, the final ACK was not processed
    yet, and the listener closed.  nftables widens that gap from microseconds to as long
    as the scenario needs (``apps/handshake_race.py``)."""
    res = subprocess.run(["unshare", "--net", sys.executable, str(HANDSHAKE_RACE)],
                         capture_output=True, text=True, timeout=30, env=child_env(),
                         cwd=CHILD_CWD)
    assert (res.returncode, res.stdout.strip()) == (0, "served"), res.stdout + res.stderr


DRAIN_RESUME_RACE = Path(__file__).parent / "apps" / "drain_resume_race.py"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                    or shutil.which("nft") is None or shutil.which("ip") is None,
                    reason="needs root, unshare, ip and nft (apt-get install nftables) to hold "
                           "a handshake open in a network namespace of its own")
def test_a_connection_closing_during_the_drain_does_not_resume_accepting(
        loop_kind: str) -> None:
    """The drain's pause and the --max-connections pause are separate reasons: the release
    of a slot by a connection the drain closed must not resume accepting while the drain
    waits for the handshakes under way (``apps/drain_resume_race.py``)."""
    res = subprocess.run(["unshare", "--net", sys.executable, str(DRAIN_RESUME_RACE), loop_kind],
                         capture_output=True, text=True, timeout=30, env=child_env(),
                         cwd=CHILD_CWD)
    assert (res.returncode, res.stdout.strip()) == (0, "ok"), res.stdout + res.stderr
