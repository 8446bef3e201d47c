"""The sidecar ``drain-proxy inject`` writes is the one deploy/'s component adds: the same
container, token volume, app hook and Secret, so the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from proxy.adopt import sidecar
from proxy.settings import parse_settings

COMPONENT = (Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "components"
             / "drain-proxy-sidecar")


def _load(name: str) -> Any:
    return yaml.safe_load((COMPONENT / name).read_text())


def test_the_container_is_the_components() -> None:
    pod = _load("sidecar.yaml")["spec"]["template"]["spec"]
    (shipped,) = pod["initContainers"]
    assert sidecar.container(sidecar.DEFAULT_IMAGE, True, 8080, 30) == shipped


def test_the_classic_container_differs_only_in_its_restart_policy() -> None:
    native = sidecar.container("image", True, 3000, 45)
    classic = sidecar.container("image", False, 3000, 45)
    assert native.pop("restartPolicy") == "Always"
    assert classic == native


def test_the_volume_label_hook_and_secret_are_the_components() -> None:
    patch = _load("sidecar.yaml")["spec"]["template"]
    assert patch["spec"]["volumes"] == [sidecar.volume()]
    assert patch["metadata"]["labels"] == dict([sidecar.POD_LABEL])
    (op,) = _load("app-prestop.yaml")
    token = "CHANGE-ME-openssl-rand-hex-32"
    assert op["value"] == {"preStop": sidecar.pre_stop(token)}
    assert sidecar.secret(token, None) == _load("drain-token-secret.yaml")


def test_the_proxy_accepts_the_environment_it_is_given() -> None:
    container = sidecar.container("image", True, 3000, 45, mode="tcp")
    env = {e["name"]: e["value"] for e in container["env"]
           if e["name"] != sidecar.TOKEN_FILE_ENV}
    settings = parse_settings([], env)
    assert (settings.upstream.port, settings.termination_grace_period_s) == (3000, 45)
    assert (settings.listen.port, settings.admin.port) == (sidecar.PROXY_PORT, sidecar.ADMIN_PORT)
    assert settings.mode == "tcp"
