"""Wiring one pod: the proxy beside a chosen app container, and the app's ``preStop`` to it.

A pure function of a pod (its metadata and spec, changed in place), the app container and
port already chosen, and the options: it knows nothing of Services or workloads, so that
``inject`` (which chooses the app from the Services of its input) and an admission webhook
(which sees a bare Pod) wire pods the same way.  Wiring a pod that is already wired changes
nothing; one wired wrong (another upstream, a grace period too short, no ``preStop``) comes
out repaired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping, MutableSequence
from dataclasses import dataclass
from typing import Any

from proxy.adopt import sidecar
from proxy.adopt.manifests import append, block, put
from proxy.settings import Settings, SettingsError, parse_settings

Node = MutableMapping[str, Any]


class WiringError(Exception):
    """The pod cannot be wired as it is: one line saying why and what settles it."""


@dataclass(frozen=True)
class Options:
    """What the user chose for every pod: layout, image, token, and the proxy's mode
    (None: not chosen, the proxy's default, http).  An image not chosen is the placeholder
    for a new proxy, and leaves an existing proxy's image as it is."""

    native: bool = True
    image: str | None = None
    token: str = ""
    mode: str | None = None


@dataclass(frozen=True)
class App:
    """The container the proxy fronts, and the port it serves on."""

    container: str
    port: int


def find_proxy(spec: Node) -> tuple[Node, bool] | None:
    """The proxy container of a pod spec, and whether it is a native sidecar."""
    for key, native in (("initContainers", True), ("containers", False)):
        for entry in spec.get(key) or []:
            if entry.get("name") == sidecar.CONTAINER_NAME:
                return entry, native
    return None


def proxy_settings(proxy: Node) -> Settings:
    """The settings an existing proxy container starts with, from its literal environment.
    The token file exists only in the pod, and is not needed to size the grace period."""
    env = {entry["name"]: str(entry["value"]) for entry in proxy.get("env") or []
           if "value" in entry and entry.get("name") != sidecar.TOKEN_FILE_ENV}
    try:
        return parse_settings([], env)
    except SettingsError as error:
        raise WiringError(f"its {sidecar.CONTAINER_NAME} container: {error}") from None


def wire_pod(metadata: Node, spec: Node, app: App, options: Options,
             say: Callable[[str], None]) -> None:
    """Wire the pod in place; ``say`` hears what the user should know (a hook replaced, the
    grace period raised).  Raises WiringError when the app container is not in the pod, or
    a proxy already there has a setting the proxy refuses."""
    containers = spec.get("containers") or []
    named = [c for c in containers if c.get("name") == app.container]
    if not named:
        raise WiringError(f"no container {app.container!r}; choose one with --app-container")
    for node in (spec, spec.get("containers"), named[0], spec.get("initContainers"),
                 spec.get("volumes")):
        block(node)  # what is added to them is too much for one line
    found = find_proxy(spec)
    if found is None:
        new = sidecar.container(options.image or sidecar.DEFAULT_IMAGE, options.native,
                                app.port, sidecar.KUBERNETES_DEFAULT_GRACE_S, options.mode)
        _add(spec, "initContainers" if options.native else "containers", new)
        found = find_proxy(spec)  # the node it became, which can carry comments
        assert found is not None
    elif options.image is not None and found[0].get("image") != options.image:
        found[0]["image"] = options.image
    proxy = found[0]
    settings = proxy_settings(proxy)
    grace = _fit_grace_period(spec, settings, say)
    _set_env(proxy, sidecar.UPSTREAM_ENV, f"127.0.0.1:{app.port}")
    _set_env(proxy, sidecar.GRACE_ENV, str(grace))
    _set_env(proxy, sidecar.TOKEN_FILE_ENV, sidecar.TOKEN_FILE)
    if options.mode is not None:
        _set_env(proxy, sidecar.MODE_ENV, options.mode)
    _ensure_named(proxy, "volumeMounts", sidecar.volume_mount())
    _ensure_named(spec, "volumes", sidecar.volume())
    _set_pre_stop(named[0], options.token, say)
    key, value = sidecar.POD_LABEL
    labels = metadata.get("labels")
    if labels is None:
        put(metadata, "labels", {})
        labels = metadata["labels"]
    if labels.get(key) != value:
        put(labels, key, value)


def _fit_grace_period(spec: Node, settings: Settings, say: Callable[[str], None]) -> int:
    """The pod's grace period, raised to window + drain timeout + 2 s when shorter: kubelet
    kills the pod at its end, drain or no drain."""
    grace = spec.get("terminationGracePeriodSeconds")
    current = sidecar.KUBERNETES_DEFAULT_GRACE_S if grace is None else int(grace)
    needed = math.ceil(settings.drain_budget_s)
    if current >= needed:
        return current
    put(spec, "terminationGracePeriodSeconds", needed)
    say(f"terminationGracePeriodSeconds raised from {current} to {needed} "
        f"(propagation window {settings.propagation_window_s:g} s + drain timeout "
        f"{max(settings.drain_timeout_s, settings.tunnel_drain_timeout_s):g} s + "
        f"{sidecar.GRACE_MARGIN_S} s)")
    return needed


def _set_pre_stop(app: Node, token: str, say: Callable[[str], None]) -> None:
    """The app's ``preStop`` calls ``/drain``, merged into its ``lifecycle``: a ``postStart``
    stays; another ``preStop`` is replaced (the app's hook must be the drain), and said."""
    hook = sidecar.pre_stop(token)
    lifecycle = app.get("lifecycle")
    if lifecycle is None:
        put(app, "lifecycle", {"preStop": hook})
        return
    existing = lifecycle.get("preStop")
    if existing is not None and _plain(existing) == hook:
        return
    if existing is not None and not calls_drain(existing):
        what = ", ".join(str(key) for key in existing) or "empty"
        say(f"container {app.get('name')!r}: its preStop ({what}) replaced by the call to "
            f"{sidecar.DRAIN_PATH}; move what it did into the app's SIGTERM handler, which "
            f"runs after the drain")
    put(lifecycle, "preStop", hook)


def calls_drain(hook: Any) -> bool:
    """Whether a hook is a call to the proxy's ``/drain`` (ours, perhaps with another token)."""
    http_get = hook.get("httpGet") if isinstance(hook, MutableMapping) else None
    return isinstance(http_get, MutableMapping) and http_get.get("path") == sidecar.DRAIN_PATH


def _set_env(container: Node, name: str, value: str) -> None:
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            if entry.get("value") != value or "valueFrom" in entry:
                entry.pop("valueFrom", None)
                put(entry, "value", value)
            return
    _add(container, "env", {"name": name, "value": value})


def _add(node: Node, key: str, item: Any) -> None:
    """Append to the list ``node[key]``, made with the item when there is none."""
    if node.get(key) is None:
        put(node, key, [item])
    else:
        append(node[key], item)


def _ensure_named(node: Node, key: str, wanted: dict[str, Any]) -> None:
    """Add ``wanted`` unless an entry of its name is there (the user's own is kept)."""
    if not any(entry.get("name") == wanted["name"] for entry in node.get(key) or []):
        _add(node, key, wanted)


def _plain(node: Any) -> Any:
    """A YAML node as plain dicts and lists, to compare with what we would write."""
    if isinstance(node, MutableMapping):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, MutableSequence):
        return [_plain(value) for value in node]
    return node
