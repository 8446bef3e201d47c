"""A stand-in for the pod wiring of ``drain-proxy inject``, for the webhook's tests.

It stands in for the real wiring until that lands: it does what the ``Mutator`` contract
(proxy/adopt/admission.py) asks, in the smallest honest way.  It leaves alone a pod that
already has a ``drain-proxy`` container, adds one (with its traffic port) to any other, and
takes over the named port the Services target (``service_port_name``) with the real
``take_over_named_port``.  The preStop, the token and the grace period that the real wiring
adds are left out: the webhook only carries them in its patch.
"""

from __future__ import annotations

from proxy.adopt.admission import Mutated, MutationResult, NothingToDo, Pod, Problems
from proxy.adopt.named_port import TakeoverProblem, service_port_name, take_over_named_port

PROXY = "drain-proxy"
PROXY_PORT = 8000


def stand_in_wiring(pod: Pod) -> MutationResult:
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if any(container.get("name") == PROXY for container in containers):
        return NothingToDo("the pod already has a drain-proxy container")
    if not spec.get("containers"):
        return Problems(("the pod has no containers",))
    app = spec["containers"][0]["name"]
    spec["containers"].append({
        "name": PROXY,
        "image": "registry.example.invalid/drain-proxy:0.1.0",
        "ports": [{"containerPort": PROXY_PORT, "name": "proxy"}],
    })
    try:
        return Mutated(take_over_named_port(pod, app=app, proxy=PROXY,
                                            name=service_port_name(pod), proxy_port=PROXY_PORT))
    except TakeoverProblem as problem:
        return Problems((str(problem),))
