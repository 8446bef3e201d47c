"""Manifests read as users have them and written back: unchanged documents verbatim,
changed ones with their comments and key order, errors with the file and the line."""

from __future__ import annotations

import io
from typing import Any

import pytest

from proxy.adopt.manifests import ManifestError, append, parse, put, read, split, write

STREAM = """\
# a leading comment
apiVersion: v1
kind: Service
metadata: {name: web}   # flow style, kept as written
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web  # the app
  labels:
    app: web
spec:
  replicas: 2
--- # a note after the separator
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: one
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: two
...
"""


def test_documents_are_split_at_separators_with_the_line_each_starts_on() -> None:
    starts = [line for line, _ in split(STREAM)]
    assert starts == [1, 6, 14]


def test_a_list_yields_its_items_and_a_plain_document_itself() -> None:
    documents = parse(STREAM, "app.yaml")
    names = [[o["metadata"]["name"] for o in d.objects()] for d in documents]
    assert names == [["web"], ["web"], ["one", "two"]]


def test_unchanged_documents_come_out_as_they_came_in() -> None:
    out = io.StringIO()
    write(parse(STREAM, "app.yaml"), out)
    assert out.getvalue().replace("---\n", "") == STREAM.replace("---\n", "").replace(
        "--- # a note after the separator\n", "# a note after the separator\n").replace(
        "...\n", "")


def test_a_changed_document_keeps_its_comments_and_key_order() -> None:
    documents = parse(STREAM, "app.yaml")
    deployment = documents[1]
    deployment.data["spec"]["replicas"] = 3
    deployment.data["spec"]["minReadySeconds"] = 5
    deployment.changed = True
    text = deployment.render()
    assert "name: web  # the app" in text
    assert text.index("replicas: 3") < text.index("minReadySeconds: 5")
    assert list(parse(text, "again")[0].data) == ["apiVersion", "kind", "metadata", "spec"]


@pytest.mark.parametrize(("text", "line"), [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n", 4),
    ("apiVersion: v1\n---\nkind: Pod\n  bad: indent\n", 4),
])
def test_invalid_yaml_names_the_file_and_line(text: str, line: int) -> None:
    with pytest.raises(ManifestError, match=rf"^pod\.yaml:{line}: "):
        parse(text, "pod.yaml")


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"^x\.yaml:1: a Kubernetes object is a mapping"):
        parse("- a\n- b\n", "x.yaml")


def test_stdin_is_read_when_no_file_is_given_or_for_a_dash() -> None:
    documents = read([], io.StringIO("kind: Pod\n"))
    assert documents[0].source == "<stdin>" and documents[0].data["kind"] == "Pod"
    assert read(["-"], io.StringIO("kind: Pod\n"))[0].source == "<stdin>"


def test_a_missing_file_is_one_line_naming_it(tmp_path: object) -> None:
    with pytest.raises(ManifestError, match=r"^/nonexistent/app\.yaml: cannot read: "):
        read(["/nonexistent/app.yaml"])


BLOCK_WITH_TRAILING_LINES = """\
spec:
  containers:
    - name: app
      ports:
        - containerPort: 8080  # the app

  # the volumes of the app
  volumes:
    - name: v
      emptyDir: {}
# the end of the file
"""


def test_a_key_added_goes_below_the_comment_lines_that_follow_its_mapping() -> None:
    (document,) = parse(BLOCK_WITH_TRAILING_LINES, "pod.yaml")
    spec = document.data["spec"]
    put(spec["containers"][0], "lifecycle", {"preStop": {"exec": {"command": ["x"]}}})
    append(spec["volumes"], {"name": "w", "emptyDir": {}})
    put(spec, "initContainers", [{"name": "proxy"}])
    document.changed = True
    lines = document.render().splitlines()
    assert lines.index("        - containerPort: 8080  # the app") \
        < lines.index("      lifecycle:") < lines.index("  # the volumes of the app") \
        < lines.index("  volumes:") < lines.index("    - name: w") \
        < lines.index("  initContainers:") < lines.index("# the end of the file")
    assert lines[-1] == "# the end of the file"


def test_put_and_append_change_plain_dicts_and_lists_plainly() -> None:
    node: dict[str, Any] = {"a": [1]}
    put(node, "b", {"c": 2})
    append(node["a"], 3)
    assert node == {"a": [1, 3], "b": {"c": 2}}
