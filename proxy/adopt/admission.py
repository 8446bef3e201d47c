"""The admission decision of ``drain-proxy webhook``, sans-IO: AdmissionReview in, out.

The API server sends a Pod as it is about to be created; this module decides whether to
inject the sidecar, asks the ``Mutator`` (the pod wiring ``drain-proxy inject`` uses) for
the mutated pod, and answers with the difference as a JSONPatch.  The webhook runs with
``failurePolicy: Ignore``, so it never blocks a pod either: a pod it cannot inject is
allowed as it is, with the reason in the response's ``warnings`` (kubectl prints them).
Only a body that is not an AdmissionReview at all is refused (``BadReview``, HTTP 400).
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import jsonpatch

API_VERSION = "admission.k8s.io/v1"
ANNOTATION = "drain-proxy/inject"  # on a pod; the same key as a namespace label
ENABLED = "enabled"
DISABLED = "disabled"

Pod = dict[str, Any]


@dataclass(frozen=True)
class Mutated:
    """The pod with the sidecar wired in."""

    pod: Pod


@dataclass(frozen=True)
class NothingToDo:
    """The pod already has the sidecar (or needs nothing): allowed as it is."""

    reason: str


@dataclass(frozen=True)
class Problems:
    """Why the pod cannot be injected: one line each, shown to whoever creates the pod."""

    problems: tuple[str, ...]


MutationResult = Mutated | NothingToDo | Problems

Mutator = Callable[[Pod], MutationResult]
"""The pod wiring, as the webhook calls it: ``mutator(pod) -> MutationResult``.

``pod`` is the Pod object of the AdmissionReview (``apiVersion``, ``kind``, ``metadata``,
``spec``; on a create through a controller ``metadata.name`` may be empty and only
``generateName`` set).  It is the mutator's own deep copy: it may change it in place and
return it inside ``Mutated``.  The mutator must:

* return ``NothingToDo`` when the pod already has a container named ``drain-proxy`` (in
  ``containers`` or ``initContainers``): the webhook never injects twice, and a pod
  re-sent to it (``reinvocationPolicy``, a second webhook entry) must come out unchanged;
* otherwise wire the sidecar exactly as ``drain-proxy inject`` wires a pod template (the
  proxy container, the app's preStop, the drain token, the grace period), and then take
  over the named port the Services target (``service_port_name(pod)``) with
  ``take_over_named_port`` (proxy/adopt/named_port.py): a webhook sees
  the Pod, never the Service, so the proxy must answer on the port *name* the Service's
  ``targetPort`` names, and the app's probes that named it must still reach the app;
* return ``Problems`` (one line each, no trailing period needed) instead of raising for a
  pod it cannot wire: a pod with no named port to take over, a port conflict, and so on.

Raising is still survived (the webhook answers allowed, with a warning), but is a bug.
"""


class Result(Enum):
    """What an admission came to: the ``result`` label of the admissions counter."""

    INJECTED = "injected"
    ALREADY_INJECTED = "already_injected"
    NOT_SELECTED = "not_selected"  # not a pod create, or not opted in
    PROBLEM = "problem"  # the mutator could not wire it: allowed unchanged, with a warning
    BAD_REQUEST = "bad_request"  # not an AdmissionReview: HTTP 400


class BadReview(Exception):
    """A body that is not an AdmissionReview ``admission.k8s.io/v1`` request: one line."""


@dataclass(frozen=True)
class Decision:
    """The AdmissionReview to answer with, and what it came to."""

    review: dict[str, Any]
    result: Result
    patch: list[dict[str, Any]] = field(default_factory=list)


def parse_review(body: bytes) -> dict[str, Any]:
    """The ``request`` of an AdmissionReview body; ``BadReview`` for anything else."""
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadReview(f"the body is not JSON: {error}") from None
    if not isinstance(review, dict):
        raise BadReview("the body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadReview(f"not an AdmissionReview {API_VERSION}: apiVersion "
                        f"{review.get('apiVersion')!r}, kind {review.get('kind')!r}")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("the AdmissionReview has no request with a uid")
    return request


def decide(body: bytes, mutator: Mutator, *, namespace_enabled: bool = False) -> Decision:
    """Answer one AdmissionReview.  ``namespace_enabled``: the request came through the
    webhook entry whose ``namespaceSelector`` picks namespaces labelled
    ``drain-proxy/inject: enabled``, so a pod there is injected unless it opts out with the
    annotation ``drain-proxy/inject: disabled``.  Raises ``BadReview``."""
    request = parse_review(body)
    pod = request.get("object")
    kind = request.get("kind") or {}
    if (request.get("operation") != "CREATE" or not isinstance(pod, dict)
            or kind.get("group") != "" or kind.get("kind") != "Pod"):
        return _answer(request, Result.NOT_SELECTED)
    if not _selected(pod, namespace_enabled):
        return _answer(request, Result.NOT_SELECTED)
    try:
        outcome = mutator(copy.deepcopy(pod))
    except Exception as error:  # a bug in the wiring must not block pods (failurePolicy Ignore)
        outcome = Problems((f"the pod wiring failed: {type(error).__name__}: {error}",))
    if isinstance(outcome, NothingToDo):
        return _answer(request, Result.ALREADY_INJECTED)
    if isinstance(outcome, Problems):
        warnings = [f"drain-proxy not injected: {problem}" for problem in outcome.problems]
        return _answer(request, Result.PROBLEM, warnings=warnings)
    patch = jsonpatch.make_patch(pod, outcome.pod).patch
    return _answer(request, Result.INJECTED, patch=patch)


def _selected(pod: Pod, namespace_enabled: bool) -> bool:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    value = annotations.get(ANNOTATION) if isinstance(annotations, dict) else None
    if namespace_enabled:
        return value != DISABLED
    return value == ENABLED


def _answer(request: dict[str, Any], result: Result, *, patch: list[dict[str, Any]] | None = None,
            warnings: list[str] | None = None) -> Decision:
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode("ascii")
    if warnings:
        response["warnings"] = warnings
    review = {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
    return Decision(review, result, patch or [])

