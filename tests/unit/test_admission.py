"""The admission decision: which pods are injected, the JSONPatch that does it, and that a
pod it cannot inject is never blocked."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from proxy.adopt.admission import BadReview, NothingToDo, Pod, Result, decide
from proxy.adopt.check import check
from proxy.adopt.findings import ERROR
from proxy.adopt.rules import Options as CheckOptions

from support.admission_reviews import app_pod, patched, response_of, review
from support.deploy import SCHEMA_VERSIONS, resolve_port, validate_schema
from support.pod_wiring import TOKEN, wiring

ENABLED = {"drain-proxy/inject": "enabled"}


def test_an_annotated_pod_is_injected_with_a_patch_that_gives_a_valid_pod() -> None:
    pod = app_pod(ENABLED)
    sent = review(pod)
    decision = decide(sent, wiring)
    assert decision.result is Result.INJECTED
    after = patched(pod, response_of(json.dumps(decision.review).encode(), sent))
    for version in SCHEMA_VERSIONS:
        validate_schema(after, version, "the patched pod")
    (app,) = after["spec"]["containers"]
    (proxy,) = after["spec"]["initContainers"]  # a native sidecar, as inject makes it
    assert proxy["name"] == "drain-proxy" and resolve_port(proxy, "http") == 8000
    assert resolve_port(app, app["readinessProbe"]["httpGet"]["port"]) == 8080
    env = {entry["name"]: entry.get("value") for entry in proxy["env"]}
    assert env["DRAIN_PROXY_UPSTREAM"] == "127.0.0.1:8080"
    drain = app["lifecycle"]["preStop"]["httpGet"]
    assert drain["path"] == "/drain" and drain["httpHeaders"] == [
        {"name": "Authorization", "value": f"Bearer {TOKEN}"}]
    assert decide(review(after), wiring).result is Result.ALREADY_INJECTED
    found = check([after], CheckOptions(kubernetes_version=(1, 29)))
    assert not [f for f in found if f.severity == ERROR], found


@pytest.mark.parametrize("annotations", [None, {}, {"drain-proxy/inject": "disabled"},
                                         {"drain-proxy/inject": "yes"}])
def test_a_pod_not_opted_in_is_allowed_with_no_patch(annotations: dict[str, str] | None) -> None:
    sent = review(app_pod(annotations))
    decision = decide(sent, wiring)
    assert decision.result is Result.NOT_SELECTED
    assert set(response_of(json.dumps(decision.review).encode(), sent)) == {"uid", "allowed"}


@pytest.mark.parametrize(("annotations", "result"), [
    (None, Result.INJECTED), (ENABLED, Result.INJECTED),
    ({"drain-proxy/inject": "disabled"}, Result.NOT_SELECTED)])
def test_in_an_enabled_namespace_a_pod_opts_out(annotations: dict[str, str] | None,
                                                 result: Result) -> None:
    decision = decide(review(app_pod(annotations)), wiring, namespace_enabled=True)
    assert decision.result is result


@pytest.mark.parametrize(("operation", "kind"), [("UPDATE", "Pod"), ("CREATE", "Service")])
def test_only_pod_creates_are_mutated(operation: str, kind: str) -> None:
    decision = decide(review(app_pod(ENABLED), operation=operation, kind=kind), wiring)
    assert decision.result is Result.NOT_SELECTED and "patch" not in decision.review["response"]


def test_the_annotated_port_name_is_the_one_taken_over() -> None:
    pod = app_pod(ENABLED | {"drain-proxy/port": "web"})
    pod["spec"]["containers"][0]["ports"][0]["name"] = "web"
    pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "web"
    sent = review(pod)
    after = patched(pod, response_of(json.dumps(decide(sent, wiring).review).encode(),
                                     sent))
    (app,) = after["spec"]["containers"]
    (proxy,) = after["spec"]["initContainers"]
    assert resolve_port(proxy, "web") == 8000 and app["ports"][0]["name"] == "app-web"
    assert resolve_port(app, app["readinessProbe"]["httpGet"]["port"]) == 8080


def test_a_pod_it_cannot_wire_is_allowed_unchanged_with_a_warning() -> None:
    pod = app_pod(ENABLED)
    pod["spec"]["containers"][0]["ports"][0]["name"] = "web"  # no port named http
    sent = review(pod)
    decision = decide(sent, wiring)
    assert decision.result is Result.PROBLEM
    response = response_of(json.dumps(decision.review).encode(), sent)
    assert "patch" not in response
    assert response["warnings"] == [
        "drain-proxy not injected: no containers have a port named 'http': name the app's "
        "port 'http' as the Services' targetPort does, or set the pod annotation "
        "drain-proxy/port to its name"]


def test_a_wiring_that_raises_still_allows_the_pod() -> None:
    def broken(pod: Pod) -> Any:
        raise KeyError("spec")

    decision = decide(review(app_pod(ENABLED)), broken)
    assert decision.result is Result.PROBLEM
    assert decision.review["response"]["warnings"] == [
        "drain-proxy not injected: the pod wiring failed: KeyError: 'spec'"]


def test_the_mutator_gets_its_own_copy() -> None:
    seen: list[Pod] = []

    def spoiler(pod: Pod) -> NothingToDo:
        pod["spec"].clear()
        seen.append(pod)
        return NothingToDo("spoilt")

    pod = app_pod(ENABLED)
    snapshot = copy.deepcopy(pod)
    decide(review(pod), spoiler)
    assert pod == snapshot and seen[0]["spec"] == {}


@pytest.mark.parametrize(("body", "problem"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
     "not an AdmissionReview admission.k8s.io/v1"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
     "no request with a uid"),
])
def test_a_body_that_is_no_admission_review_is_a_bad_review(body: bytes, problem: str) -> None:
    with pytest.raises(BadReview, match=problem):
        decide(body, wiring)
