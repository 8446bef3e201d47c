"""The webhook's pod wiring: what ``drain-proxy inject`` does to a pod template, done to a
Pod at admission (the ``admission.Mutator`` the webhook serves with).

A webhook sees the Pod and never the Service, so it cannot ask which port the Service
targets: it takes the port *named* as the Services target it (``http``, or the pod's
``drain-proxy/port`` annotation), wires the proxy in front of that port with
``wiring.wire_pod`` (the same code as ``inject``), then gives the proxy that port name
(``named_port.take_over_named_port``), so a Service whose ``targetPort`` is the name
reaches the proxy with no change to the Service.  A numeric ``targetPort`` still reaches
the app: ``drain-proxy check`` reports those (``numeric-target-port``), and only
``inject`` can fix them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from proxy.adopt import sidecar
from proxy.adopt.admission import Mutated, MutationResult, NothingToDo, Pod, Problems
from proxy.adopt.named_port import TakeoverProblem, service_port_name, take_over_named_port
from proxy.adopt.targets import looks_non_http
from proxy.adopt.wiring import App, Options, WiringError, find_proxy, wire_pod

MODE_ANNOTATION = "drain-proxy/mode"  # http or tcp, where the port name does not tell


def pod_mutator(options: Options, say: Callable[[str], None]) -> Callable[[Pod], MutationResult]:
    """The webhook's mutator for these options; ``say`` hears the notes ``inject`` would
    print (a grace period raised, a hook replaced)."""
    def mutate(pod: Pod) -> MutationResult:
        return inject_pod(pod, options, say)
    return mutate


def inject_pod(pod: Pod, options: Options, say: Callable[[str], None]) -> MutationResult:
    """``pod`` with the sidecar wired in front of its Service's named port; NothingToDo for
    a pod that has the sidecar; Problems, one line each, for one that cannot be wired."""
    pod = copy.deepcopy(pod)
    metadata: dict[str, Any] = pod.setdefault("metadata", {})
    spec: dict[str, Any] = pod.setdefault("spec", {})
    if find_proxy(spec) is not None:
        return NothingToDo(f"it has a {sidecar.CONTAINER_NAME} container already")
    name = service_port_name(pod)
    owners = [(container, port) for container in spec.get("containers") or []
              for port in container.get("ports") or [] if port.get("name") == name]
    if len(owners) != 1:
        return Problems((f"{len(owners) or 'no'} containers have a port named {name!r}: name "
                         f"the app's port {name!r} as the Services' targetPort does, or set "
                         f"the pod annotation drain-proxy/port to its name",))
    container, port = owners[0]
    mode = (metadata.get("annotations") or {}).get(MODE_ANNOTATION) or options.mode
    if mode not in (None, "http", "tcp"):
        return Problems((f"annotation {MODE_ANNOTATION}: {mode!r}; allowed: http or tcp",))
    not_http = looks_non_http(None, name) if mode is None else None
    if not_http is not None:
        return Problems((f"port {name!r} does not look like HTTP ({not_http}): annotate the "
                         f"pod {MODE_ANNOTATION}: tcp (or http)",))
    app = App(str(container.get("name")), int(port.get("containerPort", 0)))
    try:
        wire_pod(metadata, spec, app, Options(options.native, options.image, options.token,
                                              mode), say)
        wired = take_over_named_port(pod, app=app.container, proxy=sidecar.CONTAINER_NAME,
                                     name=name, proxy_port=sidecar.PROXY_PORT)
    except (WiringError, TakeoverProblem) as problem:
        return Problems((str(problem),))
    return Mutated(wired)
