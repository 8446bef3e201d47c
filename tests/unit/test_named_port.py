"""The named-port takeover: the proxy answers on the name the Services target, and the
app's probes and hooks that named the port still reach the app."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.adopt.named_port import (
    TakeoverProblem,
    app_port_name,
    service_port_name,
    take_over_named_port,
)

from support.deploy import resolve_port


def pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"}, "spec": {
        "containers": [{
            "name": "web", "image": "web:1",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics",
                                                               "containerPort": 9090}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": "http"}},
            "startupProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}},
            "lifecycle": {"preStop": {"httpGet": {"path": "/quit", "port": "http"}}},
        }],
        "initContainers": [{"name": "drain-proxy", "image": "proxy:1", "restartPolicy": "Always",
                            "ports": [{"name": "proxy", "containerPort": 8000},
                                      {"name": "admin", "containerPort": 9901}]}],
    }}


def test_the_proxy_takes_the_name_and_the_app_keeps_its_probes() -> None:
    before = pod()
    after = take_over_named_port(before, app="web", proxy="drain-proxy", name="http",
                                 proxy_port=8000)
    assert before == pod(), "the pod given is not changed"
    app = after["spec"]["containers"][0]
    proxy = after["spec"]["initContainers"][0]
    assert resolve_port(proxy, "http") == 8000  # what a Service's targetPort: http reaches
    assert [p["name"] for p in app["ports"]] == ["app-http", "metrics"]
    assert resolve_port(app, app["readinessProbe"]["httpGet"]["port"]) == 8080
    assert resolve_port(app, app["livenessProbe"]["tcpSocket"]["port"]) == 8080
    assert resolve_port(app, app["lifecycle"]["preStop"]["httpGet"]["port"]) == 8080
    assert app["startupProbe"]["httpGet"]["port"] == "metrics"  # another name: untouched
    assert [p["name"] for p in proxy["ports"]] == ["http", "admin"]


def test_numeric_probe_ports_are_left_alone() -> None:
    given = pod()
    given["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = 8080
    after = take_over_named_port(given, app="web", proxy="drain-proxy", name="http",
                                 proxy_port=8000)
    assert after["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == 8080


def test_the_renamed_port_fits_the_fifteen_characters_of_a_port_name() -> None:
    assert app_port_name("http") == "app-http"
    assert app_port_name("abcdefghijk") == "app-abcdefghijk"
    assert app_port_name("abcdefghijklmno") == "app-abcdefghijk"
    assert app_port_name("abcdefghij-lmno") == "app-abcdefghij"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda p: p["spec"]["containers"][0]["ports"].pop(0), "no port named 'http'"),
    (lambda p: p["spec"]["initContainers"][0]["ports"].pop(0), "has no port 8000"),
    (lambda p: p["spec"]["initContainers"].clear(), "no container 'drain-proxy'"),
    (lambda p: p["spec"]["containers"][0]["ports"][1].update(name="app-http"),
     "already named 'app-http'"),
])
def test_a_pod_it_cannot_change_is_one_line_problem(change: Any, problem: str) -> None:
    given = pod()
    change(given)
    with pytest.raises(TakeoverProblem, match=problem):
        take_over_named_port(copy.deepcopy(given), app="web", proxy="drain-proxy", name="http",
                             proxy_port=8000)


def test_an_invalid_new_name_is_refused() -> None:
    with pytest.raises(TakeoverProblem, match="not a valid port name"):
        take_over_named_port(pod(), app="web", proxy="drain-proxy", name="http",
                             proxy_port=8000, renamed="App_HTTP")


def test_the_name_taken_over_is_the_annotated_one_or_http() -> None:
    assert service_port_name(pod()) == "http"
    annotated = pod()
    annotated["metadata"]["annotations"] = {"drain-proxy/port": "web"}
    assert service_port_name(annotated) == "web"
