"""Real parts for the integration tests: an app, clients, and a proxy in-process.

Everything listens on 127.0.0.1 with OS-assigned ports.  The app parses what it
receives with h11, an implementation independent of the proxy's llhttp, and
keeps the raw bytes so that every test can check that both parsers read the
forwarded requests the same way (``assert_parsers_agree``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self

import h11
import httptools
from hypothesis import strategies as st

from proxy.server import ProxyServer
from proxy.settings import parse_settings
from proxy.telemetry.metrics import Metrics

Header = tuple[bytes, bytes]
Reply = tuple[int, list[tuple[str, str]], bytes]
IO_TIMEOUT_S = 5.0


@dataclass
class ParsedRequest:
    method: bytes
    target: bytes
    headers: list[Header]
    body: bytes
    trailers: list[Header] = field(default_factory=list)


# -- the differential parse check --------------------------------------------------------------
class _LlhttpCollector:
    def __init__(self) -> None:
        self.requests: list[ParsedRequest] = []
        self._url = b""
        self._headers: list[Header] = []
        self._trailers: list[Header] | None = None  # a list once the head is complete
        self._body = b""
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._trailers = b"", [], b"", None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._headers if self._trailers is None else self._trailers
        fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._trailers = []

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.requests.append(ParsedRequest(method, self._url, self._headers, self._body,
                                           self._trailers or []))


def parse_with_llhttp(raw: bytes) -> list[ParsedRequest]:
    collector = _LlhttpCollector()
    collector.parser.feed_data(raw)
    return collector.requests


def parse_with_h11(raw: bytes) -> list[ParsedRequest]:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(raw)  # no EOF: a request cut short (aborted) is simply not listed
    requests: list[ParsedRequest] = []
    current: ParsedRequest | None = None
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Request):
            current = ParsedRequest(event.method, event.target, list(event.headers), b"")
        elif isinstance(event, h11.Data):
            assert current is not None
            current.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert current is not None
            current.trailers = list(event.headers)
            requests.append(current)
            _answer_so_h11_can_continue(connection)
        else:
            return requests


def _answer_so_h11_can_continue(connection: h11.Connection) -> None:
    connection.send(h11.Response(status_code=204, headers=[]))
    connection.send(h11.EndOfMessage())
    connection.start_next_cycle()


def assert_parsers_agree(raw: bytes) -> list[ParsedRequest]:
    """Both parsers must see the same requests in what the app received."""
    by_llhttp = parse_with_llhttp(raw)
    by_h11 = parse_with_h11(raw)
    assert by_llhttp == by_h11, f"parsers disagree on {raw!r}"
    return by_llhttp


# -- the app ----------------------------------------------------------------------------------
Handler = Callable[[ParsedRequest], Awaitable[Reply]]


async def echo_handler(request: ParsedRequest) -> Reply:
    """Answers with what it understood: method, target and body length."""
    text = f"{request.method.decode()} {request.target.decode()} {len(request.body)}"
    return 200, [("Content-Type", "text/plain")], text.encode()


@dataclass
class App:
    """An HTTP/1.1 app on h11 that records the raw bytes of every connection."""

    handler: Handler = echo_handler
    raw_by_connection: list[bytearray] = field(default_factory=list)
    requests: list[ParsedRequest] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    record: bool = True  # keep raw bytes and requests (off for long runs)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start_unix(self, path: str) -> Self:
        self.server = await asyncio.start_unix_server(self._serve, path)
        return self

    @property
    def connections(self) -> int:
        return len(self.raw_by_connection)

    async def start(self, port: int = 0) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self

    async def stop(self) -> None:
        """Close everything and let each connection handler end by itself."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=IO_TIMEOUT_S)

    def check_parsers_agree(self) -> None:
        for raw in self.raw_by_connection:
            assert_parsers_agree(bytes(raw))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = bytearray()
        if self.record:
            self.raw_by_connection.append(raw)
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        connection = h11.Connection(h11.SERVER)
        # RuntimeError: uvloop's answer to a write on a transport the peer reset.
        with contextlib.suppress(ConnectionError, h11.ProtocolError, RuntimeError):
            while await self._serve_one(connection, reader, writer, raw):
                connection.start_next_cycle()
        writer.close()
        self.writers.discard(writer)

    async def _serve_one(self, connection: h11.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, raw: bytearray) -> bool:
        request: ParsedRequest | None = None
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if self.record:
                    raw += data
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                request = ParsedRequest(event.method, event.target, list(event.headers), b"")
                if connection.they_are_waiting_for_100_continue:
                    writer.write(connection.send(
                        h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                assert request is not None
                request.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        assert request is not None
        if self.record:
            self.requests.append(request)
        status, headers, body = await self.handler(request)
        framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers)
        if not framed and status >= 200 and status not in (204, 304):
            headers = [*headers, ("Content-Length", str(len(body)))]
        out = connection.send(h11.Response(status_code=status, headers=headers))
        if request.method != b"HEAD" and body:
            out += connection.send(h11.Data(data=body))
        writer.write(out + connection.send(h11.EndOfMessage()))
        await writer.drain()
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE


# -- clients ----------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: list[Header]
    body: bytes

    def header(self, name: str) -> bytes | None:
        wanted = name.lower().encode()
        return next((v for n, v in self.headers if n.lower() == wanted), None)


class Client:
    """A keep-alive HTTP/1.1 client on h11, over one real connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str = "GET", target: str = "/",
                      headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                      ) -> Response:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        fields = [("Host", "test.local"), *(headers or [])]
        if body and not any(n.lower() in ("content-length", "transfer-encoding")
                            for n, _ in fields):
            fields.append(("Content-Length", str(len(body))))
        out = self.h11.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            out += self.h11.send(h11.Data(data=body))
        out += self.h11.send(h11.EndOfMessage())
        self.writer.write(out)
        return await self.read_response()

    async def read_response(self) -> Response:
        response: Response | None = None
        async with asyncio.timeout(IO_TIMEOUT_S):
            while True:
                try:
                    event = self.h11.next_event()
                except h11.RemoteProtocolError as error:  # the connection ended mid-response
                    raise ConnectionError(str(error)) from error
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.reader.read(65536))
                elif isinstance(event, h11.Response):
                    response = Response(event.status_code, list(event.headers), b"")
                elif isinstance(event, h11.Data):
                    assert response is not None
                    response.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    return response
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("closed before a response")

    async def is_closed_by_peer(self) -> bool:
        """True when the server has closed the connection (EOF within the timeout)."""
        async with asyncio.timeout(IO_TIMEOUT_S):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


async def raw_exchange(port: int, data: bytes, timeout_s: float = IO_TIMEOUT_S) -> bytes:
    """Send raw bytes, then read until the server closes; a reset raises."""
    received, reset = await raw_exchange_ending(port, data, timeout_s)
    if reset:
        raise ConnectionResetError(f"reset after {len(received)} bytes: {received[:200]!r}")
    return received


async def raw_exchange_ending(port: int, data: bytes,
                              timeout_s: float = IO_TIMEOUT_S) -> tuple[bytes, bool]:
    """Send raw bytes, then read until the server closes; also say whether it ended with a
    reset (RST), which is how a proxy must show that what the client got is incomplete."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        return bytes(received), True
    finally:
        writer.close()
    return bytes(received), False


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_app(script: Script, backlog: int = 100,
                       sock: socket.socket | None = None) -> AsyncIterator[int]:
    """A raw-socket app running ``script`` for every connection; yields its port, and
    at the end waits for every connection's script to finish.  ``sock``: an unbound
    socket to listen on, for a test that sets its options (a small receive buffer)."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await script(reader, writer)
        writer.close()

    if sock is None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=backlog)
    else:
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(serve, sock=sock, backlog=backlog)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if tasks:
            await asyncio.wait(tasks, timeout=IO_TIMEOUT_S)


# -- the proxy in-process ------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def running_proxy(upstream: str, *flags: str,
                        metrics: Metrics | None = None) -> AsyncIterator[ProxyServer]:
    argv = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", upstream,
            "--log-level", "debug", *flags]
    server = ProxyServer(parse_settings(argv, {}), metrics=metrics)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def app_and_proxy(*flags: str, handler: Handler = echo_handler,
                        ) -> AsyncIterator[tuple[App, ProxyServer]]:
    """An app and a proxy in front of it; checks the parsers agree at the end."""
    app = await App(handler).start()
    try:
        async with running_proxy(f"127.0.0.1:{app.port}", *flags) as proxy:
            yield app, proxy
    finally:
        await app.stop()
    app.check_parsers_agree()


async def eventually(condition: Callable[[], bool], timeout_s: float = IO_TIMEOUT_S) -> None:
    """Poll ``condition`` until it holds, failing after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def eventually_async(probe: Callable[[], Awaitable[object]], expected: object,
                           timeout_s: float = IO_TIMEOUT_S) -> None:
    """Await ``probe()`` until it returns ``expected``, failing after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (value := await probe()) != expected:
        assert loop.time() < deadline, f"still {value!r}, wanted {expected!r}"
        await asyncio.sleep(0.01)


def sample(proxy: ProxyServer, name: str, labels: dict[str, str] | None = None) -> float:
    value = proxy.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# -- the proxy as a real process ----------------------------------------------------------------
_LISTENING = re.compile(rb"listening on [\d.]+:(\d+), admin on [\d.]+:(\d+)")


class ProxyProcess:
    """``python -m proxy`` in a subprocess, on OS-assigned ports read from its log."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.port = 0
        self.admin_port = 0
        self.log: list[bytes] = []
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, upstream_port: int, *flags: str) -> ProxyProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--upstream", f"127.0.0.1:{upstream_port}", *flags,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=child_env(), cwd=CHILD_CWD)
        proxy = cls(process)
        await proxy._wait_listening()
        return proxy

    async def _wait_listening(self) -> None:
        assert self.process.stderr is not None
        async with asyncio.timeout(10):
            while True:
                line = await self.process.stderr.readline()
                assert line, f"proxy exited before listening: {b''.join(self.log)!r}"
                self.log.append(line)
                if match := _LISTENING.search(line):
                    self.port, self.admin_port = int(match[1]), int(match[2])
                    break
        self._pump = asyncio.get_running_loop().create_task(self._pump_log())

    async def _pump_log(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout_s: float = 30) -> int:
        """The exit code, once the process has exited; its log must be free of tracebacks
        and errors (``Fatal error on transport`` included): no input may cause them."""
        async with asyncio.timeout(timeout_s):
            code = await self.process.wait()
        if self._pump is not None:
            await self._pump
        text = self.log_text()
        assert "Traceback" not in text and " ERROR " not in text, text
        return code

    def log_text(self) -> str:
        return b"".join(self.log).decode(errors="replace")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.wait()


# ``python -m proxy`` children run the installed drain-proxy, like the in-process tests
# (``build_under_test``); they start outside the source tree, which would otherwise come
# first on their sys.path.
CHILD_CWD = tempfile.gettempdir()


def child_env() -> dict[str, str]:
    """The environment of a ``python -m proxy`` child: no DRAIN_PROXY_* settings leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DRAIN_PROXY_")}


CHUNK_EXTENSIONS = [b"", b";a", b";a=b", b';a="q\\"s"', b";a=b;c", b';n="x y"']
CHUNK_TRAILERS = [(b"X-T", b"1"), (b"Checksum", b"abc def"), (b"x-empty", b"")]


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]]:
    """A chunked body as sent (sizes in either case, extensions, trailers), its data and
    its trailers as they must be read: for the request and the response parsers' models."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=24), max_size=4))
    wire = []
    for piece in chunks:
        size = b"%x" % len(piece)
        size = draw(st.sampled_from([size, size.upper(), b"00" + size]))
        wire.append(size + draw(st.sampled_from(CHUNK_EXTENSIONS)) + b"\r\n" + piece + b"\r\n")
    trailers = tuple(draw(st.lists(st.sampled_from(CHUNK_TRAILERS), max_size=2)))
    wire.append(b"0" + draw(st.sampled_from(CHUNK_EXTENSIONS)) + b"\r\n")
    wire += [name + b": " + value + b"\r\n" for name, value in trailers]
    wire.append(b"\r\n")
    return b"".join(wire), b"".join(chunks), trailers


def mutated(data: st.DataObject, raw: bytes, meaningful: bytes, lines: bool = True) -> bytes:
    """``raw`` with one to three bytes (drawn from ``meaningful``) deleted, replaced or
    inserted, or, with ``lines``, a line doubled: the mutations the fuzz tests feed the
    parsers, near the bytes that decide framing."""
    kinds = ["delete", "replace", "insert", "duplicate"] if lines else ["delete", "replace",
                                                                        "insert"]
    for _ in range(data.draw(st.integers(1, 3))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(kinds))
        byte = bytes([data.draw(st.sampled_from(meaningful))])
        if kind == "delete":
            raw = raw[:at] + raw[at + 1:]
        elif kind == "replace":
            raw = raw[:at] + byte + raw[at + 1:]
        elif kind == "insert":
            raw = raw[:at] + byte + raw[at:]
        else:
            end = raw.find(b"\r\n", at)
            raw = raw[:at] + (raw[at:end + 2] if end >= 0 else b"") + raw[at:]
    return raw

