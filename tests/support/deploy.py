"""What the tests of deploy/ share: where its files are, the deployable layouts rendered
(``Layout``, ``LAYOUTS``, ``each_layout``), the proxy's settings as the pod would give them,
and validation against the Kubernetes JSON schemas shipped by kubernetes-validate."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import posixpath
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pytest

from proxy.flags import FLAGS
from proxy.settings import Settings, SettingsError, parse_settings

from support.kustomize import ROOT, Doc, render

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS_RULE = DEPLOY / "prometheus" / "prometheusrule.yaml"
POD_MONITOR = DEPLOY / "prometheus" / "podmonitor.yaml"
DASHBOARD = DEPLOY / "grafana" / "drain-proxy-dashboard.json"

# Native sidecars are on by default from 1.29 (beta) and GA in 1.33: validate against both.
SCHEMA_VERSIONS = ("1.29", "1.33")
PROXY_CONTAINER = "drain-proxy"
NON_ROOT_UID = 65532
# The proxy reads its drain token from this file, a Secret mounted in its container.
TOKEN_FILE_ENV = "DRAIN_PROXY_DRAIN_TOKEN_FILE"
# What the pod gets when it sets no terminationGracePeriodSeconds.
KUBERNETES_DEFAULT_GRACE_S = 30


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


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

each_layout = pytest.mark.parametrize("layout", LAYOUTS, ids=[layout.name for layout in LAYOUTS])


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


@cache
def kubernetes_validate_utils() -> Any:
    """kubernetes_validate.utils: validate(), all_versions(), ValidationError (no type hints)."""
    return importlib.import_module("kubernetes_validate.utils")


def validate_schema(doc: Doc, version: str, where: str) -> None:
    kubernetes_validate = kubernetes_validate_utils()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{where} ({doc['kind']}) against Kubernetes {version}: {error.message} "
                    f"at {'/'.join(map(str, error.path))}")
