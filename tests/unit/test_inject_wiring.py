"""Pod wiring as a pure function of a pod, the app chosen and the options: what an admission
webhook will call on a bare Pod, with no Service to look at."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.adopt import sidecar
from proxy.adopt.wiring import App, Options, WiringError, wire_pod

OPTIONS = Options(native=True, image="proxy:1", token="t0k")
APP = App("app", 3000)


def _pod() -> tuple[dict[str, Any], dict[str, Any]]:
    app = {"name": "app", "image": "app:1",
           "lifecycle": {"postStart": {"exec": {"command": ["x"]}}}}
    return {"name": "p"}, {"containers": [app]}


def _wire(metadata: dict[str, Any], spec: dict[str, Any], app: App = APP,
          options: Options = OPTIONS) -> list[str]:
    said: list[str] = []
    wire_pod(metadata, spec, app, options, said.append)
    return said


def test_a_bare_pod_is_wired_and_its_post_start_kept() -> None:
    metadata, spec = _pod()
    assert _wire(metadata, spec) == []
    (proxy,) = spec["initContainers"]
    env = {e["name"]: e["value"] for e in proxy["env"]}
    assert env[sidecar.UPSTREAM_ENV] == "127.0.0.1:3000" and env[sidecar.GRACE_ENV] == "30"
    lifecycle = spec["containers"][0]["lifecycle"]
    assert lifecycle == {"postStart": {"exec": {"command": ["x"]}},
                         "preStop": sidecar.pre_stop("t0k")}
    assert spec["volumes"] == [sidecar.volume()]
    assert metadata["labels"] == {"drain-proxy/sidecar": "true"}


def test_wiring_a_wired_pod_changes_nothing() -> None:
    metadata, spec = _pod()
    _wire(metadata, spec, options=Options(native=False, image="i", token="t"))
    again = copy.deepcopy((metadata, spec))
    assert _wire(metadata, spec, options=Options(native=False, image="i", token="t")) == []
    assert (metadata, spec) == again


def test_an_existing_proxy_keeps_its_settings_and_the_grace_period_fits_them() -> None:
    metadata, spec = _pod()
    spec["terminationGracePeriodSeconds"] = 30
    spec["initContainers"] = [{"name": "drain-proxy", "image": "mine", "restartPolicy": "Always",
                               "env": [{"name": "DRAIN_PROXY_DRAIN_TIMEOUT", "value": "40"}]}]
    said = _wire(metadata, spec, App("app", 8080), Options(token="t"))  # no image chosen
    assert spec["terminationGracePeriodSeconds"] == 52
    assert said == ["terminationGracePeriodSeconds raised from 30 to 52 (propagation window "
                    "10 s + drain timeout 40 s + 2 s)"]
    (proxy,) = spec["initContainers"]
    assert proxy["image"] == "mine"
    env = {e["name"]: e["value"] for e in proxy["env"]}
    assert env[sidecar.GRACE_ENV] == "52" and env[sidecar.UPSTREAM_ENV] == "127.0.0.1:8080"


def test_a_bad_setting_of_an_existing_proxy_is_a_wiring_error() -> None:
    metadata, spec = _pod()
    spec["containers"].append({"name": "drain-proxy", "image": "mine",
                               "env": [{"name": "DRAIN_PROXY_DRAIN_TIMOUT", "value": "4"}]})
    with pytest.raises(WiringError, match="DRAIN_PROXY_DRAIN_TIMOUT: unknown setting"):
        _wire(metadata, spec)


def test_an_unknown_app_container_is_a_wiring_error() -> None:
    metadata, spec = _pod()
    with pytest.raises(WiringError, match="--app-container"):
        _wire(metadata, spec, App("nope", 80))
