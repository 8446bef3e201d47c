"""The invariants that make a drain lose nothing, checked on the Deployments deploy/ renders:
the Service reaches the proxy, probes and the app's preStop hook reach the admin port, the
grace period covers the drain, and every DRAIN_PROXY_* variable is one that
``proxy.settings.parse_settings`` accepts (the drain token file, a path that exists only in
the pod, is fed to the parser from the rendered Secret).  The drain token, the NetworkPolicy
and the component's grace period are checked in test_deploy_security.py."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.flags import FLAGS
from proxy.settings import SettingsError, parse_settings

from helpers import CHILD_CWD, child_env
from support.deploy import (
    DEPLOY,
    KUBERNETES,
    LAYOUTS,
    NON_ROOT_UID,
    POD_MONITOR,
    PROXY_CONTAINER,
    TOKEN_FILE_ENV,
    Layout,
    container_env,
    each_layout,
    grace_period,
    labels_match,
    parse_proxy_env,
    resolve_port,
)
from support.kustomize import Doc, load_documents, rel


def _start_as_in_the_pod(layout: Layout, directory: Path) -> subprocess.CompletedProcess[str]:
    """``python -m proxy`` with the rendered proxy container's environment and its token file
    as the rendered Secret makes it; on 127.0.0.1 ports of the OS's choosing (flags beat the
    environment).  A proxy that starts is stopped after a few seconds (TimeoutExpired)."""
    env = container_env(layout.proxy)
    path = env[TOKEN_FILE_ENV]
    token_file = directory / "token"
    token_file.write_text(layout.secret_files(layout.proxy)[path])
    return subprocess.run(
        [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        env={**child_env(), **env, TOKEN_FILE_ENV: str(token_file)}, cwd=CHILD_CWD,
        capture_output=True, text=True, timeout=5, check=False)


@each_layout
def test_the_placeholder_token_stops_the_proxy_at_start_up(layout: Layout, tmp_path: Path) -> None:
    """kustomize renders the placeholders of deploy/ without a word, and cannot be made to fail
    on a value: the token every copy of this repository shares must then stop the pod, with one
    line that says what to do, before it protects /drain with a public secret."""
    result = _start_as_in_the_pod(layout, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"drain-proxy: error: --drain-token-file {tmp_path / 'token'}: the placeholder token "
        f"of deploy/ (CHANGE-ME-openssl-rand-hex-32); allowed: a token of your own, such as "
        f"`openssl rand -hex 32` makes"]


def test_placeholder_images_can_never_be_pulled() -> None:
    """An image name under a registry someone else may own (ghcr.io/example) would run that
    someone's image; under the reserved .invalid domain (RFC 2606) the pull fails, visibly."""
    images = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for line in path.read_text().splitlines():
            if re.match(r"^\s*image:", line):
                images.append(line)
    assert len(images) >= 5
    for line in images:
        assert "# PLACEHOLDER" in line, line
        name = line.split("image:")[1].split("#")[0].strip()
        assert name.split("/")[0].endswith(".invalid"), line


def env_lists(node: Any) -> Iterator[list[Doc]]:
    """Every `env` list in a parsed YAML tree, including inline kustomize patches."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield value
            elif key == "patch" and isinstance(value, str):
                yield from env_lists(yaml.safe_load(value))
            else:
                yield from env_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from env_lists(item)


def test_every_drain_proxy_variable_in_deploy_is_a_real_setting() -> None:
    """parse_settings refuses unknown DRAIN_PROXY_* names and bad values (SettingsError)."""
    checked = 0
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for env in env_lists(doc):
                proxy_env = {e["name"]: e for e in env if e["name"].startswith("DRAIN_PROXY_")}
                if proxy_env:  # a token file read as a stand-in: it exists only in the pod
                    parse_proxy_env(container_env({"env": list(proxy_env.values())}))
                    checked += len(proxy_env)
    assert checked >= 20
    # Names in comments, alert texts and the README must be real too, except the examples of
    # what Kubernetes' service links would inject (the hazard the comments warn about).
    defaults = {flag.env_var: flag.default for flag in FLAGS}
    service_links = {"DRAIN_PROXY_SERVICE_HOST", "DRAIN_PROXY_SERVICE_PORT", "DRAIN_PROXY_PORT"}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            for name in set(re.findall(r"\bDRAIN_PROXY_[A-Z][A-Z_]*\b", path.read_text())):
                if name not in service_links:
                    parse_settings([], {name: defaults.get(name, "")})


def test_an_unknown_drain_proxy_variable_is_refused() -> None:
    with pytest.raises(SettingsError):
        parse_settings([], {"DRAIN_PROXY_PROPAGATION_WINDOWS": "10"})
    with pytest.raises(SettingsError):
        parse_settings([], {"DRAIN_PROXY_DRAIN_TIMEOUT": "15s"})


@each_layout
def test_proxy_env_is_accepted_by_the_proxy(layout: Layout) -> None:
    env = container_env(layout.proxy)
    assert {"DRAIN_PROXY_UPSTREAM", "DRAIN_PROXY_PROPAGATION_WINDOW", "DRAIN_PROXY_DRAIN_TIMEOUT",
            "DRAIN_PROXY_TERMINATION_GRACE_PERIOD", TOKEN_FILE_ENV} <= set(env)
    settings = layout.settings
    assert settings.propagation_window_s == 10 and settings.drain_timeout_s == 15
    for container in layout.pod["containers"]:
        if container["name"] != PROXY_CONTAINER:
            assert not any(name.startswith("DRAIN_PROXY_") for name in container_env(container))


@each_layout
def test_sidecar_layout(layout: Layout) -> None:
    if layout.native:
        assert layout.proxy["restartPolicy"] == "Always"
        assert all(c["name"] != PROXY_CONTAINER for c in layout.pod["containers"])
    else:
        assert "restartPolicy" not in layout.proxy
        assert PROXY_CONTAINER not in [c["name"] for c in layout.pod.get("initContainers", [])]


@each_layout
def test_service_sends_traffic_to_the_proxy(layout: Layout) -> None:
    service = layout.one("Service")
    template = layout.one("Deployment")["spec"]["template"]
    assert labels_match(service["spec"]["selector"], template["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    target = port["targetPort"]
    if layout.native:
        # Named ports of native sidecars reach Services only from Kubernetes 1.32.
        assert isinstance(target, int), "native sidecar: targetPort must be a number"
    assert resolve_port(layout.proxy, target) == layout.settings.listen.port
    if isinstance(target, str):
        every_container = layout.pod["containers"] + layout.pod.get("initContainers", [])
        owners = [c["name"] for c in every_container
                  if any(p.get("name") == target for p in c.get("ports", []))]
        assert owners == [PROXY_CONTAINER], f"port name {target!r} must be the proxy's alone"
    assert not service["metadata"]["name"].startswith("drain-proxy")


@each_layout
def test_proxy_forwards_to_the_app_on_localhost(layout: Layout) -> None:
    upstream = layout.settings.upstream
    assert upstream.host == "127.0.0.1"
    assert upstream.port in [p["containerPort"] for p in layout.app["ports"]]


@each_layout
def test_probes_use_the_admin_port(layout: Layout) -> None:
    proxy, admin_port = layout.proxy, layout.settings.admin.port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        http_get = proxy[probe]["httpGet"]
        assert http_get["path"] == path
        assert resolve_port(proxy, http_get["port"]) == admin_port
    declared = {p["containerPort"] for p in proxy["ports"]}
    assert {layout.settings.listen.port, admin_port} <= declared


@each_layout
def test_app_prestop_waits_for_the_drain(layout: Layout) -> None:
    http_get = layout.app["lifecycle"]["preStop"]["httpGet"]
    assert http_get["path"] == "/drain"
    # A number: kubelet resolves a hook's port name among the app container's own ports.
    assert isinstance(http_get["port"], int) and http_get["port"] == layout.settings.admin.port
    assert "host" not in http_get  # the pod's IP, where the proxy's admin port listens
    assert "preStop" not in layout.proxy.get("lifecycle", {})


@each_layout
def test_grace_period_covers_the_drain(layout: Layout) -> None:
    grace = grace_period(layout.pod)
    settings = layout.settings
    assert settings.propagation_window_s + settings.drain_timeout_s + 2 <= grace
    assert settings.drain_budget_s <= grace
    assert settings.termination_grace_period_s == grace


@each_layout
def test_containers_are_locked_down(layout: Layout) -> None:
    pod_context = layout.pod.get("securityContext", {})
    for container in [layout.app, layout.proxy]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context["runAsUser"] == NON_ROOT_UID, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}, container["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]


@each_layout
def test_pod_is_found_by_prometheus(layout: Layout) -> None:
    template = layout.one("Deployment")["spec"]["template"]
    (monitor,) = load_documents(POD_MONITOR)
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    admin = layout.settings.admin.port
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert resolve_port(layout.proxy, endpoint["port"]) == admin
    if layout.annotations_expected:
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(admin)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_overlays_are_complete_deployments() -> None:
    for layout in LAYOUTS[:2]:
        deployment = layout.one("Deployment")
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert labels_match(spec["selector"]["matchLabels"], labels)
        assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert layout.pod["enableServiceLinks"] is False  # no DRAIN_PROXY_* from Service names
        budget = layout.one("PodDisruptionBudget")
        assert labels_match(budget["spec"]["selector"]["matchLabels"], labels)
        assert budget["spec"]["maxUnavailable"] < spec["replicas"]


def test_no_service_name_injects_drain_proxy_variables() -> None:
    """With service links, a Service named drain-proxy* adds DRAIN_PROXY_* variables to pods."""
    for path in DEPLOY.rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Service":
                name = doc["metadata"]["name"].upper().replace("-", "_")
                assert not name.startswith("DRAIN_PROXY"), rel(path)

