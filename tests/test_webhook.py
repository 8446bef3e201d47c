"""``drain-proxy webhook`` over real TLS on 127.0.0.1: AdmissionReviews as the API server
sends them, health, metrics, bad bodies, certificate rotation, and the command itself."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest

from proxy.adopt.webhook import MAX_BODY, CertificateFiles, Metrics, WebhookApp, WebhookServer

from conftest import Run
from support.admission_reviews import app_pod, patched, response_of, review
from support.certificates import client_context, der, make_certificate, replace_file
from support.deploy import SCHEMA_VERSIONS, validate_schema
from support.pod_wiring import IMAGE, TOKEN, wiring

TIMEOUT_S = 10.0
ENABLED = {"drain-proxy/inject": "enabled"}


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    peer_certificate: bytes


async def https(port: int, context: ssl.SSLContext, method: str, target: str,
                body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """One request on a new TLS connection, as the API server makes it."""
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                       server_hostname="127.0.0.1")
        try:
            peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            connection = h11.Connection(h11.CLIENT)
            all_headers = [("Host", f"127.0.0.1:{port}"), *headers]
            if method == "POST":
                all_headers += [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))]
            writer.write(connection.send(h11.Request(method=method, target=target,
                                                     headers=all_headers)))
            if body:
                writer.write(connection.send(h11.Data(data=body)))
            if method == "POST":
                writer.write(connection.send(h11.EndOfMessage()))
            response: h11.Response | None = None
            received = bytearray()
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    received += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            assert response is not None
            return Answer(response.status_code, dict(response.headers), bytes(received), peer)
        finally:
            # At once, even with a body the server did not read (413) still in the buffer.
            writer.transport.abort()


@dataclass
class Running:
    port: int
    context: ssl.SSLContext
    cert: Path
    key: Path


@asynccontextmanager
async def webhook(directory: Path) -> AsyncIterator[Running]:
    cert, key = make_certificate(directory, "first")
    server = WebhookServer(WebhookApp(wiring, Metrics()), CertificateFiles(cert, key))
    port = await server.start("127.0.0.1", 0)
    try:
        yield Running(port, client_context(cert), cert, key)
    finally:
        await server.close()


def test_an_annotated_pod_is_injected_over_tls(run: Run[None], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with webhook(tmp_path) as hook:
            pod = app_pod(ENABLED)
            sent = review(pod)
            answer = await https(hook.port, hook.context, "POST", "/mutate?timeout=5s", sent)
            assert answer.status == 200 and answer.headers[b"content-type"] == b"application/json"
            after = patched(pod, response_of(answer.body, sent))
            for version in SCHEMA_VERSIONS:
                validate_schema(after, version, "the patched pod")
            assert [c["name"] for c in after["spec"]["containers"]] == ["web"]
            assert [c["name"] for c in after["spec"]["initContainers"]] == ["drain-proxy"]
            sent_again = review(after)
            again = await https(hook.port, hook.context, "POST", "/mutate", sent_again)
            assert "patch" not in response_of(again.body, sent_again)  # never twice

    run(scenario())


def test_an_unannotated_pod_is_allowed_with_no_patch(run: Run[None], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with webhook(tmp_path) as hook:
            sent = review(app_pod())
            answer = await https(hook.port, hook.context, "POST", "/mutate?timeout=5s", sent)
            assert answer.status == 200
            assert set(response_of(answer.body, sent)) == {"uid", "allowed"}
            namespace = await https(hook.port, hook.context, "POST",
                                    "/mutate/namespace?timeout=5s", sent)
            assert "patch" in response_of(namespace.body, sent)

    run(scenario())


def test_bad_bodies_get_400_and_the_server_goes_on(run: Run[None], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with webhook(tmp_path) as hook:
            bad = await https(hook.port, hook.context, "POST", "/mutate", b"{not json")
            assert bad.status == 400 and bad.body.startswith(b"bad request: the body is not JSON")
            other = await https(hook.port, hook.context, "POST", "/mutate",
                                b'{"kind": "Pod", "apiVersion": "v1"}')
            assert other.status == 400
            large = await https(hook.port, hook.context, "POST", "/mutate",
                                b" " * (MAX_BODY + 1))
            assert large.status == 413
            sent = review(app_pod(ENABLED))
            good = await https(hook.port, hook.context, "POST", "/mutate?timeout=5s", sent)
            assert "patch" in response_of(good.body, sent)
            metrics = (await https(hook.port, hook.context, "GET", "/metrics")).body.decode()
            assert _sample(metrics, "bad_request") == 2 and _sample(metrics, "injected") == 1
            assert _sample(metrics, "problem") == 0

    run(scenario())


def test_health_metrics_and_other_paths(run: Run[None], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with webhook(tmp_path) as hook:
            health = await https(hook.port, hook.context, "GET", "/healthz")
            assert (health.status, health.body) == (200, b"ok\n")
            assert (await https(hook.port, hook.context, "GET", "/mutate")).status == 405
            assert (await https(hook.port, hook.context, "POST", "/healthz", b"{}")).status == 405
            assert (await https(hook.port, hook.context, "GET", "/nope")).status == 404
            await https(hook.port, hook.context, "POST", "/mutate", review(app_pod()))
            metrics = await https(hook.port, hook.context, "GET", "/metrics")
            assert metrics.headers[b"content-type"].startswith(b"text/plain")
            assert _sample(metrics.body.decode(), "not_selected") == 1

    run(scenario())


def test_a_client_without_tls_or_http_does_not_stop_the_server(run: Run[None],
                                                               tmp_path: Path) -> None:
    async def scenario() -> None:
        async with webhook(tmp_path) as hook:
            reader, writer = await asyncio.open_connection("127.0.0.1", hook.port)
            writer.write(b"POST /mutate HTTP/1.1\r\nHost: x\r\n\r\n")  # no TLS
            async with asyncio.timeout(TIMEOUT_S):
                await reader.read()  # the server ends the connection
            writer.close()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", hook.port, ssl=hook.context, server_hostname="127.0.0.1")
            writer.write(b"POST /mutate HTTP/1.1\r\nContent-Length: x\r\n\r\n")
            async with asyncio.timeout(TIMEOUT_S):
                answer = await reader.read()
            writer.transport.abort()
            assert answer.startswith(b"HTTP/1.1 400 ")
            sent = review(app_pod(ENABLED))
            good = await https(hook.port, hook.context, "POST", "/mutate?timeout=5s", sent)
            assert "patch" in response_of(good.body, sent)

    run(scenario())


def _sample(metrics: str, result: str) -> float:
    found = re.search(rf'^drain_proxy_webhook_admissions_total{{result="{result}"}} (\S+)$',
                      metrics, re.MULTILINE)
    assert found, metrics
    return float(found[1])


def test_a_renewed_certificate_is_served_without_a_restart(run: Run[None],
                                                           tmp_path: Path) -> None:
    async def scenario() -> None:
        async with webhook(tmp_path) as hook:
            second_cert, second_key = make_certificate(tmp_path, "second")
            both = client_context(hook.cert, second_cert)
            first = await https(hook.port, both, "GET", "/healthz")
            assert first.peer_certificate == der(hook.cert)
            replace_file(second_key, hook.key)
            replace_file(second_cert, hook.cert)
            renewed = await https(hook.port, both, "GET", "/healthz")
            assert renewed.status == 200 and renewed.peer_certificate == der(second_cert)
            # A pair that does not match (a renewal seen half-written) keeps the last good one.
            third_cert, third_key = make_certificate(tmp_path, "third")
            replace_file(third_cert, hook.cert)
            for _ in range(2):
                kept = await https(hook.port, both, "GET", "/healthz")
                assert kept.status == 200 and kept.peer_certificate == der(second_cert)
            replace_file(third_key, hook.key)  # the renewal completes
            third = await https(hook.port, client_context(third_cert), "GET", "/healthz")
            assert third.peer_certificate == der(third_cert)

    run(scenario())


# --- the command --------------------------------------------------------------------------


def _command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "webhook", *flags]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path, "cli")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


WIRING_FLAGS = ("--drain-token-file", "{token}", "--image", IMAGE)


@pytest.mark.parametrize(("flags", "problem"), [
    ((), "the following arguments are required: --listen, --tls-cert, --tls-key, "
         "--drain-token-file, --image"),
    (("--listen", "nowhere"), "argument --listen: 'nowhere' is not HOST:PORT"),
    (("--listen", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{missing}",
      *WIRING_FLAGS), "cannot read {missing}: No such file or directory"),
    (("--listen", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{cert}", *WIRING_FLAGS),
     "cannot load {cert} with {cert}: "),
    (("--listen", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{key}", *WIRING_FLAGS,
      "--bogus"), "unrecognized arguments: --bogus"),
    (("--listen", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{key}",
      "--drain-token-file", "{placeholder}", "--image", IMAGE),
     "--drain-token-file {placeholder}: the placeholder token of deploy/"),
    (("--listen", "127.0.0.1:0", "--tls-cert", "{cert}", "--tls-key", "{key}", *WIRING_FLAGS,
      "--shutdown-delay", "-1"), "argument --shutdown-delay: '-1': allowed: seconds from 0"),
])
def test_bad_flags_are_one_line_and_exit_2(flags: tuple[str, ...], problem: str,
                                           certificate: tuple[Path, Path], token_file: Path,
                                           tmp_path: Path) -> None:
    placeholder = tmp_path / "placeholder"
    placeholder.write_text("CHANGE-ME-openssl-rand-hex-32\n")
    names = {"cert": str(certificate[0]), "key": str(certificate[1]),
             "missing": str(tmp_path / "missing.key"), "token": str(token_file),
             "placeholder": str(placeholder)}
    result = subprocess.run(_command(*(flag.format(**names) for flag in flags)),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "drain-proxy webhook: error: " + problem.format(**names)), result.stderr


@pytest.fixture
def started(certificate: tuple[Path, Path], token_file: Path
            ) -> Iterator[tuple[subprocess.Popen[str], int]]:
    cert, key = certificate
    process = subprocess.Popen(_command("--listen", "127.0.0.1:0", "--tls-cert", str(cert),
                                        "--tls-key", str(key), "--drain-token-file",
                                        str(token_file), "--image", IMAGE,
                                        "--shutdown-delay", "60"),
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr

    def pump() -> None:  # the pipe never fills, and the log lines can be waited for
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)$", line.rstrip())
            if found:
                break
        yield process, int(found[1])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=TIMEOUT_S)
        reader.join(timeout=TIMEOUT_S)  # it reads to the end of what the process wrote
        stderr.close()


def test_the_command_serves_and_stops_on_sigterm(
        started: tuple[subprocess.Popen[str], int], certificate: tuple[Path, Path]) -> None:
    """SIGTERM: not ready at once, still answering admissions through the shutdown delay
    (the endpoints are still sending here), gone at the second signal."""
    process, port = started
    context = client_context(certificate[0])

    async def scenario() -> dict[str, Any]:
        health = await https(port, context, "GET", "/healthz")
        assert health.status == 200
        assert (await https(port, context, "GET", "/readyz")).status == 200
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT_S
        while (await https(port, context, "GET", "/readyz")).status != 503:
            assert time.monotonic() < deadline, "still ready after SIGTERM"
        sent = review(app_pod(ENABLED))
        answer = await https(port, context, "POST", "/mutate?timeout=5s", sent)
        response: dict[str, Any] = response_of(answer.body, sent)
        return response

    response = asyncio.run(scenario())
    assert response["allowed"] and response["patchType"] == "JSONPatch", response
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=TIMEOUT_S) == 0

