"""The named-port takeover the injection webhook needs, as a pure function over a pod.

``drain-proxy inject`` edits the Service beside the Deployment so that it targets the
proxy.  A webhook sees only the Pod, so it cannot: instead the proxy takes over the port
*name* the Services target (``targetPort: http``).  The app's port is renamed, the proxy's
traffic port gets the name, and every Service that targets the name reaches the proxy from
then on, without anyone touching it.  The app's probes and lifecycle hooks that named the
port are rewritten to the new name: a named port resolves inside its own container, so
they keep reaching the app, not the proxy (which would answer ready while draining, and
hide a dead app behind a live proxy).

A Service that targets the app's port by *number* is not redirected by this: the webhook's
documentation says so, and ``drain-proxy check`` is where that is found.
"""

from __future__ import annotations

import copy
import re
from typing import Any

Pod = dict[str, Any]

# IANA_SVC_NAME, what Kubernetes accepts as a port name.
_PORT_NAME = re.compile(r"^(?=.*[a-z])(?!-)(?!.*--)[a-z0-9-]{1,15}(?<!-)$")
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HOOKS = ("postStart", "preStop")
_HANDLERS = ("httpGet", "tcpSocket")  # grpc takes a number only
PORT_ANNOTATION = "drain-proxy/port"
DEFAULT_PORT_NAME = "http"


class TakeoverProblem(Exception):
    """Why the port cannot be taken over: one line."""


def service_port_name(pod: Pod) -> str:
    """The port name the pod's Services target, so the one to take over: the annotation
    ``drain-proxy/port``, or ``http``."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return str(annotations.get(PORT_ANNOTATION, DEFAULT_PORT_NAME))


def app_port_name(name: str) -> str:
    """The name the app's port gets: ``app-<name>``, within the 15 characters allowed."""
    return f"app-{name}"[:15].rstrip("-")


def take_over_named_port(pod: Pod, *, app: str, proxy: str, name: str, proxy_port: int,
                         renamed: str | None = None) -> Pod:
    """A copy of ``pod`` in which the port ``name`` of container ``app`` is renamed
    (``renamed``, by default ``app_port_name(name)``), the port ``proxy_port`` of container
    ``proxy`` is named ``name``, and ``app``'s probes and hooks that named ``name`` name
    ``renamed`` instead.  Raises ``TakeoverProblem``."""
    new_name = app_port_name(name) if renamed is None else renamed
    if not _PORT_NAME.match(new_name):
        raise TakeoverProblem(f"{new_name!r} is not a valid port name to rename {name!r} to")
    pod = copy.deepcopy(pod)
    spec = pod.get("spec") or {}
    app_container = _container(spec, app, ("containers",))
    proxy_container = _container(spec, proxy, ("initContainers", "containers"))
    app_ports = app_container.get("ports") or []
    taken = [port for port in app_ports if port.get("name") == name]
    if not taken:
        raise TakeoverProblem(f"container {app!r} has no port named {name!r} for the proxy "
                              f"to take over")
    names = {port.get("name") for c in _all_containers(spec) for port in c.get("ports") or []}
    if new_name in names:
        raise TakeoverProblem(f"a port is already named {new_name!r}: cannot rename "
                              f"{app!r}'s port {name!r} to it")
    listening = [port for port in proxy_container.get("ports") or []
                 if port.get("containerPort") == proxy_port]
    if len(listening) != 1:
        raise TakeoverProblem(f"container {proxy!r} has no port {proxy_port} to name {name!r}")
    taken[0]["name"] = new_name
    listening[0]["name"] = name
    for key in _PROBES:
        _rename_in_handler(app_container.get(key), name, new_name)
    for key in _HOOKS:
        _rename_in_handler((app_container.get("lifecycle") or {}).get(key), name, new_name)
    return pod


def _all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _container(spec: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    for key in keys:
        for container in spec.get(key) or []:
            if container.get("name") == name:
                found: dict[str, Any] = container
                return found
    raise TakeoverProblem(f"the pod has no container {name!r} in {' or '.join(keys)}")


def _rename_in_handler(handler: Any, name: str, new_name: str) -> None:
    if not isinstance(handler, dict):
        return
    for kind in _HANDLERS:
        action = handler.get(kind)
        if isinstance(action, dict) and action.get("port") == name:
            action["port"] = new_name
