"""A real gRPC server (grpcio) for the HTTP/2 tests: four methods, one per call kind,
with raw bytes as messages (no generated code needed).

``Echo/ServerStream`` sends ``count`` messages ``interval_ms`` apart, where the request
is ``b"count,interval_ms"``: long enough to stay in flight across a drain.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "test.Echo"
# Retries stay at gRPC's default (on) with no retry policy: then the only calls gRPC
# retries are those it never sent (transparent retry), such as a call queued when a
# GOAWAY arrives; a call the app saw and lost would still fail the test.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


class GrpcApp:
    """The running server: its port, and how many unary calls it answered."""

    def __init__(self) -> None:
        self.port = 0
        self.unary_calls = 0
        self._lock = threading.Lock()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.unary_calls += 1
        peer: str = context.peer()
        return b"echo:" + request + b" from " + peer.encode()


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count, interval_ms = (int(part) for part in request.split(b","))
    for index in range(count):
        if index:
            time.sleep(interval_ms / 1000)
        yield str(index).encode()


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return b"+".join(requests)


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield request.upper()


@contextlib.contextmanager
def grpc_server(workers: int = 16) -> Iterator[GrpcApp]:
    """A running server on 127.0.0.1."""
    app = GrpcApp()
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(app.unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler,))
    app.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield app
    finally:
        server.stop(grace=None)


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


def method(ch: grpc.Channel, kind: str, name: str) -> Any:
    """A callable for ``/test.Echo/<name>``; ``kind`` is the call kind (grpc's names:
    ``unary_unary``, ``unary_stream``, ...), whose multicallable types differ."""
    return getattr(ch, kind)(f"/{SERVICE}/{name}")
