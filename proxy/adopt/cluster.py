"""Every object of the inputs together, and which of them select which: a Service's or a
PodDisruptionBudget's selector against a workload's pod template, in one namespace.

Inputs are one set, as ``kubectl apply -f a.yaml -f b.yaml`` would send them: a Service in one
file routes to a Deployment in another.  Objects without a namespace are in ``default``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.adopt.pods import Obj, Workload, items, mapping, ref, workload


def labels_match(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """A Service's selector: every pair present; an empty one selects no pod (its endpoints
    are managed by hand)."""
    return bool(selector) and all(
        key in labels and str(labels[key]) == str(value) for key, value in selector.items())


def selector_matches(selector: Obj, labels: Mapping[str, Any]) -> bool:
    """A LabelSelector (``matchLabels`` and ``matchExpressions``); an empty one selects every
    pod of the namespace, as a policy/v1 PodDisruptionBudget's does."""
    for key, value in mapping(selector.get("matchLabels")).items():
        if key not in labels or str(labels[key]) != str(value):
            return False
    for expression in items(selector.get("matchExpressions")):
        key, operator = str(expression.get("key")), expression.get("operator")
        values = {str(v) for v in expression.get("values") or []}
        present = key in labels
        if operator == "In" and not (present and str(labels[key]) in values):
            return False
        if operator == "NotIn" and present and str(labels[key]) in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


@dataclass
class Inventory:
    """The objects of the inputs that the rules look at, sorted by what they are."""

    workloads: list[Workload] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    budgets: list[Obj] = field(default_factory=list)  # PodDisruptionBudgets
    secrets: list[Obj] = field(default_factory=list)

    @classmethod
    def of(cls, objects: Iterable[Obj]) -> Inventory:
        inventory = cls()
        for obj in objects:
            kind = obj.get("kind")
            if kind == "Service":
                inventory.services.append(obj)
            elif kind == "PodDisruptionBudget":
                inventory.budgets.append(obj)
            elif kind == "Secret":
                inventory.secrets.append(obj)
            elif (found := workload(obj)) is not None:
                inventory.workloads.append(found)
        return inventory

    def services_of(self, target: Workload) -> list[Obj]:
        """The Services whose selector picks the workload's pods."""
        return [service for service in self.services
                if ref(service).namespace == target.ref.namespace
                and labels_match(mapping(mapping(service.get("spec")).get("selector")),
                                 target.labels)]

    def has_budget(self, target: Workload) -> bool:
        return any(ref(budget).namespace == target.ref.namespace
                   and selector_matches(mapping(mapping(budget.get("spec")).get("selector")),
                                        target.labels)
                   for budget in self.budgets)
