"""Where a Service's traffic lands in a pod: each Service port, resolved to a port number and
the container that declares it, as the endpoints controller would.

A numeric ``targetPort`` is a number on the pod's address whether or not a container declares
it; a named one is looked up among the declared ports of every container, init containers
included (those on native sidecars only from Kubernetes 1.32 on: kubernetes/kubernetes#127958).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from proxy.adopt.cluster import Inventory
from proxy.adopt.pods import Obj, Workload, items, mapping


@dataclass(frozen=True)
class Route:
    """One Service port into one workload's pods."""

    service: Obj
    port: Obj  # the Service's port entry
    workload: Workload
    number: int | None  # the pod port; None for a name no container declares
    container: Obj | None  # the container declaring that port, if one does
    declared: Obj | None  # that container's port entry
    by_name: bool  # targetPort is a port name

    @property
    def label(self) -> str:
        """The Service port as a person names it: its name, else its number."""
        return str(self.port.get("name") or self.port.get("port"))


def routes(inventory: Inventory) -> Iterator[Route]:
    for target in inventory.workloads:
        for service in inventory.services_of(target):
            for port in items(mapping(service.get("spec")).get("ports")):
                yield resolve(service, port, target)


def resolve(service: Obj, port: Obj, target: Workload) -> Route:
    wanted = port.get("targetPort", port.get("port"))
    by_name = isinstance(wanted, str) and not wanted.isdigit()
    for container, declared in target.ports():
        if (declared.get("name") == wanted) if by_name else (
                str(declared.get("containerPort")) == str(wanted)):
            number = declared.get("containerPort")
            return Route(service, port, target, number if isinstance(number, int) else None,
                         container, declared, by_name)
    number = int(wanted) if isinstance(wanted, int) or (
        isinstance(wanted, str) and wanted.isdigit()) else None
    return Route(service, port, target, number, None, None, by_name)
