"""The image, built from the real Dockerfile and run, where no Docker engine runs.

test_deploy_image.py's image test needs a Docker engine and skips without one, as on CI. This test
builds the same, unchanged Dockerfile with buildah (chroot isolation, vfs storage, a private
store in a temporary directory: see image_build.py), on the official bases where a registry
answers and on a debootstrap stand-in where none does, and runs the image the way the
manifests run the proxy (image_run.py): as 65532, read-only root filesystem, no capabilities,
in front of a real HTTP app. It checks that mypyc compiled the per-request modules (the image
must never ship the slower pure-Python build unnoticed), that the final stage carries no pip,
no compiler and no shell-form entrypoint, and that SIGTERM drains the proxy to exit code 0.
It prints the image's size (indicative only on the stand-in base). It takes a few minutes:
debootstrap, the build with mypyc, and the run. Everything it made is removed at the end.
"""

from __future__ import annotations

import ast
import http.client
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import image_build
import image_run

ROOT = Path(__file__).resolve().parent.parent
APP_BODY = b"answered by the app behind the image\n"
WINDOW_S = 3


def hot_modules() -> set[str]:
    """The modules setup.py compiles with mypyc (dotted names, ``proxy.http1.client``),
    read from its HOT_MODULES list."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "HOT_MODULES"):
            paths: list[str] = ast.literal_eval(node.value)
            return {".".join(Path(path).with_suffix("").parts) for path in paths}
    raise AssertionError("setup.py has no HOT_MODULES")


class _AppHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(APP_BODY)))
        self.end_headers()
        self.wfile.write(APP_BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def app_server() -> Iterator[int]:
    """A real HTTP server on 127.0.0.1, on a port the system picks: the app in the pod."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AppHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    """One HTTP/1.1 request on a keep-alive connection: status, headers (lower-cased), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read().decode(errors="replace")
    finally:
        connection.close()


def wait_for_status(port: int, path: str, status: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if get(port, path)[0] == status:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{path} never answered {status}"
        time.sleep(0.2)


def check_build_log(log: str) -> str:
    """mypyc compiled every per-request module into the wheel the image installed; the
    evidence, from the build log."""
    compiling = re.search(r"drain-proxy build: compiling \d+ modules with mypyc.*", log)
    assert compiling, log[-4000:]
    assert "pure-Python" not in log, "the build fell back to the pure-Python package"
    built = set(re.findall(r"building '([\w.]+)' extension", log))
    assert any(name.endswith("__mypyc") for name in built), sorted(built)  # mypyc's runtime
    missing = hot_modules() - built
    assert not missing, f"no extension built for {sorted(missing)}:\n{log[-4000:]}"
    wheel = re.search(r"Created wheel for drain-proxy: filename=(drain_proxy-\S+\.whl)", log)
    assert wheel, log[-4000:]
    assert re.fullmatch(r"drain_proxy-[^-]+-cp311-cp311-linux_\w+\.whl", wheel[1]), wheel[1]
    modules = sorted(name for name in built if name.startswith("proxy."))
    return "\n".join([compiling[0].strip(), f"built {len(built)} extensions: mypyc's runtime "
                      f"and {', '.join(modules)}", wheel[0]])


def check_config(config: dict[str, Any]) -> None:
    assert config["User"] == f"{image_run.NON_ROOT}:{image_run.NON_ROOT}"
    entrypoint = config["Entrypoint"]
    # Exec form: the argv itself, no shell in between to swallow SIGTERM.
    assert entrypoint == ["drain-proxy"], entrypoint
    assert config.get("Cmd") in (None, []), config.get("Cmd")
    assert config["StopSignal"] == "SIGTERM"
    assert {"8000/tcp", "9901/tcp"} <= set(config["ExposedPorts"])


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_image_builds_and_drains_without_a_docker_engine(capsys: pytest.CaptureFixture[str],
                                                          ) -> None:
    reason = image_build.missing_prerequisites()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    tag = f"drain-proxy:test-{uuid.uuid4().hex[:8]}"
    with image_build.workspace() as buildah:
        with image_build.timed("bases", timings):
            try:
                bases = image_build.provide_bases(buildah)
            except image_build.Unavailable as unavailable:
                pytest.skip(str(unavailable))
        with image_build.timed("build", timings):
            evidence = check_build_log(image_build.build_image(buildah, ROOT, tag))
        config = image_run.image_config(buildah, tag)
        check_config(config)
        size = image_run.image_size(buildah, tag)

        container = buildah("from", "--pull=never", "--name", f"drain-proxy-{tag[-8:]}", tag)
        root = buildah.rootfs(container)
        inside = image_run.look_inside(root)
        assert not inside.compilers, f"build tools in the final image: {inside.compilers}"
        assert not inside.venv_pip, f"pip or setuptools in the virtualenv: {inside.venv_pip}"
        missing = hot_modules() - inside.compiled_modules
        assert not missing, f"not compiled in the image: {sorted(missing)}"
        # drain-proxy check, inject and webhook run from the image: the adopt extra is in it.
        assert {"ruamel", "jsonpatch.py"} <= inside.packages, sorted(inside.packages)
        # Built in the first stage, the virtualenv runs on the final stage's Python.
        assert inside.interpreter_target is not None, (
            f"the virtualenv's python ({inside.interpreter}) leads to nothing in the image")
        assert inside.interpreter_target.name == "python3.11", inside.interpreter_target

        env = {"DRAIN_PROXY_LISTEN": "127.0.0.1:0", "DRAIN_PROXY_ADMIN": "127.0.0.1:0",
               "DRAIN_PROXY_PROPAGATION_WINDOW": str(WINDOW_S), "DRAIN_PROXY_DRAIN_TIMEOUT": "5",
               "DRAIN_PROXY_TERMINATION_GRACE_PERIOD": "30"}
        entrypoint = list(config["Entrypoint"])
        with (image_build.timed("run", timings), app_server() as app_port,
              image_run.running_proxy(buildah, container, entrypoint,
                                      env | {"DRAIN_PROXY_UPSTREAM": f"127.0.0.1:{app_port}"},
                                      ) as proxy):
            status = proxy.status()
            assert status["Uid"].split() == [str(image_run.NON_ROOT)] * 4, status["Uid"]
            assert status["Gid"].split() == [str(image_run.NON_ROOT)] * 4, status["Gid"]
            assert int(status["CapEff"], 16) == 0, status["CapEff"]
            assert "ro" in proxy.root_mount_options(), "the root filesystem is writable"

            wait_for_status(proxy.admin_port, "/livez", 200, 30)
            wait_for_status(proxy.admin_port, "/readyz", 200, 30)
            code, headers, body = get(proxy.port, "/")
            assert (code, body) == (200, APP_BODY.decode()), (code, body)
            assert headers.get("connection") != "close", headers
            metrics = get(proxy.admin_port, "/metrics")[2]
            assert re.search(r'^drain_proxy_build_info\{[^}]*build="compiled"', metrics,
                             re.MULTILINE), metrics
            assert re.search(r'^drain_proxy_requests_total\{[^}]*code="200"[^}]*\} 1\.0$',
                             metrics, re.MULTILINE), metrics

            proxy.signal(signal.SIGTERM)  # kubelet's stop; buildah would not forward it
            wait_for_status(proxy.admin_port, "/readyz", 503, WINDOW_S / 2)
            code, headers, body = get(proxy.port, "/")  # the window: served, told to leave
            assert (code, headers.get("connection")) == (200, "close"), (code, headers)
            exit_code = proxy.wait(WINDOW_S + 30)
            log = proxy.log_text()
            assert exit_code == 0, log
            assert "phase drained" in log and "exiting with code 0" in log, log
            assert "Traceback" not in log and " ERROR " not in log, log

    with capsys.disabled():
        print(f"\nimage on the {bases} bases: {size} (buildah images); files "
              f"{inside.total_bytes / 1e6:.1f} MB, of which the virtualenv "
              f"{inside.venv_bytes / 1e6:.1f} MB; pip in the base: {inside.base_pip or 'none'}; "
              f"shells in the base: {inside.shells or 'none'}; venv python -> "
              f"{inside.interpreter} -> /{inside.interpreter_target.relative_to(root)}")
        print("build log: " + evidence.replace("\n", "\n           "))
        print("seconds: " + ", ".join(f"{key} {value:.0f}" for key, value in timings.items()))
