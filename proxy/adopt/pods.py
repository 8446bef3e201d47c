"""Pods as manifests describe them: the pod template of each workload kind, the drain-proxy
sidecar in it, and the settings that sidecar would start with, as far as a manifest says.

The settings come from the proxy's own parser (``parse_settings``) fed with the container's
``args`` and literal ``env`` values, so defaults and validation are the proxy's, never a copy.
What a manifest cannot tell (``valueFrom``, ``envFrom``, a shell as the command) is named in
``Sidecar.unknown`` and left at the proxy's defaults: the checks say so instead of guessing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.flags import ENV_PREFIX
from proxy.settings import Settings, SettingsError, parse_settings

PROXY_NAME = "drain-proxy"
DEFAULT_NAMESPACE = "default"
# What the pod gets when it sets no terminationGracePeriodSeconds.
KUBERNETES_DEFAULT_GRACE_S = 30.0
TOKEN_FILE_FLAG = "--drain-token-file"
TOKEN_FILE_ENV = ENV_PREFIX + "DRAIN_TOKEN_FILE"

# Where each workload kind keeps its pod spec, and whether ``spec.replicas`` counts its pods.
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
_REPLICATED = frozenset({"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"})

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Ref:
    """Which object a finding is about."""

    kind: str
    name: str
    namespace: str


def ref(obj: Obj) -> Ref:
    metadata = mapping(obj.get("metadata"))
    return Ref(str(obj.get("kind", "")), str(metadata.get("name", "")),
               str(metadata.get("namespace") or DEFAULT_NAMESPACE))


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one: manifests may leave out anything."""
    return value if isinstance(value, Mapping) else {}


def _entries(value: Any) -> list[Any]:
    """The entries of a list field, or none (a manifest may put anything there)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def items(value: Any) -> list[Mapping[str, Any]]:
    """The mappings of a list field, or none."""
    return [item for item in _entries(value) if isinstance(item, Mapping)]


def drain_proxy_words(container: Obj) -> list[str] | None:
    """The words drain-proxy starts with in ``container``: its ``args`` (the image's entry
    point is drain-proxy), after the command's own when ``command`` runs drain-proxy; None
    when ``command`` runs something else."""
    args = [str(word) for word in _entries(container.get("args"))]
    command = [str(word) for word in _entries(container.get("command"))]
    if not command:
        return args
    return command[1:] + args if PROXY_NAME in posixpath.basename(command[0]) else None


# Commands the drain-proxy image also runs that are not the sidecar (the injection
# webhook's Deployment runs the same image with ``webhook``).
TOOL_COMMANDS = frozenset({"check", "demo", "inject", "webhook"})


def is_proxy(container: Obj) -> bool:
    """The sidecar: named drain-proxy, or run from an image whose name says drain-proxy,
    unless it runs one of the image's other commands."""
    image = str(container.get("image") or "").split("@")[0]
    last = image.rsplit("/", 1)[-1].split(":")[0]
    words = drain_proxy_words(container) or []
    if words[:1] and words[0] in TOOL_COMMANDS:
        return False
    return container.get("name") == PROXY_NAME or PROXY_NAME in last


def runs_webhook(container: Obj) -> bool:
    """``drain-proxy webhook``, which keeps answering through its own shutdown delay."""
    return (drain_proxy_words(container) or [])[:1] == ["webhook"]


@dataclass(frozen=True)
class Sidecar:
    """The drain-proxy container of a pod, and what it would start with."""

    container: Obj
    in_init: bool  # an initContainers entry
    native: bool  # ... with restartPolicy: Always, so a native sidecar
    settings: Settings  # the proxy's defaults where ``refused`` or ``unknown`` says so
    refused: str | None  # why the proxy would refuse these flags and variables
    unknown: tuple[str, ...]  # what the manifest does not tell
    token_file: str | None


@dataclass(frozen=True)
class Workload:
    """An object that makes pods, with its pod template."""

    ref: Ref
    replicas: int | None  # None: a kind whose pod count is not spec.replicas
    labels: Mapping[str, Any]  # the pod template's
    pod: Obj  # the pod spec
    sidecar: Sidecar | None

    @property
    def grace_period_s(self) -> float:
        value = self.pod.get("terminationGracePeriodSeconds")
        return float(value) if isinstance(value, int | float) else KUBERNETES_DEFAULT_GRACE_S

    @property
    def apps(self) -> list[Obj]:
        """The pod's main containers other than the proxy."""
        return [c for c in items(self.pod.get("containers")) if not is_proxy(c)]

    def ports(self) -> Iterator[tuple[Obj, Obj]]:
        """(container, port) for every declared port, init containers included."""
        for key in ("initContainers", "containers"):
            for container in items(self.pod.get(key)):
                for port in items(container.get("ports")):
                    yield container, port


def workload(obj: Obj) -> Workload | None:
    """The workload ``obj`` is, or None for an object that makes no pods."""
    path = _POD_SPEC_PATHS.get(str(obj.get("kind")))
    if path is None:
        return None
    node: Any = obj
    for key in path[:-1]:
        node = mapping(node).get(key)
    template = mapping(node)
    pod = mapping(template.get(path[-1]))
    labels = mapping(mapping(obj.get("metadata") if len(path) == 1 else template.get(
        "metadata")).get("labels"))
    replicas: int | None = None
    if obj.get("kind") in _REPLICATED:
        count = mapping(obj.get("spec")).get("replicas", 1)
        replicas = count if isinstance(count, int) else None
    return Workload(ref(obj), replicas, labels, pod, _sidecar(pod))


def _sidecar(pod: Obj) -> Sidecar | None:
    for key in ("initContainers", "containers"):
        for container in items(pod.get(key)):
            if is_proxy(container):
                in_init = key == "initContainers"
                return Sidecar(container, in_init,
                               in_init and container.get("restartPolicy") == "Always",
                               *static_settings(container))
    return None


def static_settings(container: Obj) -> tuple[Settings, str | None, tuple[str, ...], str | None]:
    """(settings, why refused, what is unknown, token file) of a proxy container.

    The token file exists only in the pod: its path is taken out before parsing (the parser
    would read it) and returned apart."""
    unknown: list[str] = []
    env: dict[str, str] = {}
    for entry in items(container.get("env")):
        name = str(entry.get("name", ""))
        if "value" in entry:
            value = entry["value"]
            env[name] = "" if value is None else str(value)
        elif name.startswith(ENV_PREFIX):
            env.pop(name, None)
            unknown.append(f"{name} (valueFrom)")
    if container.get("envFrom"):
        unknown.append("envFrom")
    words = drain_proxy_words(container)
    if words is None:
        unknown.append(f"the command {str(_entries(container.get('command'))[0])!r}")
    argv, token_file = _without_token_file(words or [])
    token_file = token_file or env.pop(TOKEN_FILE_ENV, None) or None
    env.pop(TOKEN_FILE_ENV, None)
    try:
        return parse_settings(argv, env), None, tuple(unknown), token_file
    except SettingsError as error:
        return parse_settings([], {}), str(error), tuple(unknown), token_file


def _without_token_file(argv: list[str]) -> tuple[list[str], str | None]:
    kept: list[str] = []
    path: str | None = None
    words = iter(argv)
    for word in words:
        if word == TOKEN_FILE_FLAG:
            path = next(words, "")
        elif word.startswith(TOKEN_FILE_FLAG + "="):
            path = word.partition("=")[2]
        else:
            kept.append(word)
    return kept, path
