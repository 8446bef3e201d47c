"""The Kubernetes manifests of deploy/, and every rendered layout, validated against the
Kubernetes JSON schemas shipped by kubernetes-validate.  Everything here runs offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from support.deploy import (
    DEPLOY,
    LAYOUTS,
    SCHEMA_VERSIONS,
    Layout,
    each_layout,
    kubernetes_validate_utils,
    kustomization_dirs,
    validate_schema,
)
from support.kustomize import load_documents, load_one, rel

# Objects of custom resources: kubernetes-validate has no schema for them.
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")


def _classify_yaml_files() -> dict[str, list[Path]]:
    """Every YAML file under deploy/: a kustomization, a patch, a CRD object or a manifest."""
    patches: set[Path] = set()
    resources: set[Path] = set()
    for directory in kustomization_dirs():
        kustomization = load_one(directory / "kustomization.yaml")
        patches |= {(directory / p["path"]).resolve()
                    for p in kustomization.get("patches", []) if "path" in p}
        resources |= {(directory / r).resolve() for r in kustomization.get("resources", [])}
    classes: dict[str, list[Path]] = {"kustomization": [], "patch": [], "crd": [], "manifest": []}
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        if path.name == "kustomization.yaml":
            classes["kustomization"].append(path)
        elif path.resolve() in patches:
            classes["patch"].append(path)
        elif all(doc["apiVersion"].startswith(CRD_GROUPS) for doc in load_documents(path)):
            classes["crd"].append(path)
        else:
            assert path.resolve() in resources, f"{rel(path)} is in no kustomization"
            classes["manifest"].append(path)
    return classes


YAML_FILES = _classify_yaml_files()


def test_schema_versions_are_shipped_by_kubernetes_validate() -> None:
    shipped = kubernetes_validate_utils().all_versions()
    for version in SCHEMA_VERSIONS:
        assert any(v.startswith(version + ".") for v in shipped), (version, shipped)


def test_every_yaml_file_is_checked() -> None:
    assert len(YAML_FILES["manifest"]) >= 5 and len(YAML_FILES["crd"]) == 3
    assert len(YAML_FILES["patch"]) >= 3


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("path", YAML_FILES["manifest"], ids=rel)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in load_documents(path):
        validate_schema(doc, version, rel(path))



@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@each_layout
def test_rendered_layout_matches_the_kubernetes_schema(layout: Layout, version: str) -> None:
    """The patched objects too: a patch can produce what no file in deploy/ shows."""
    for doc in layout.docs:
        validate_schema(doc, version, layout.name)


def test_a_schema_error_is_caught() -> None:
    """The validation above can fail: a misspelt field is refused."""
    deployment = copy.deepcopy(LAYOUTS[1].one("Deployment"))
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate_utils().ValidationError):
        kubernetes_validate_utils().validate(deployment, SCHEMA_VERSIONS[0], strict=True)
