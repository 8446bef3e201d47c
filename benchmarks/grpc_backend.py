"""The gRPC app of ``bench_h2.py``: a grpcio server whose ``/bench.Echo/Unary`` returns the
request message, on ``127.0.0.1:PORT`` (``python grpc_backend.py PORT``)."""

from __future__ import annotations

import sys
from concurrent import futures

import grpc


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def main() -> None:
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(_echo)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
