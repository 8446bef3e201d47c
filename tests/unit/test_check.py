"""drain-proxy check's rules, one small manifest each (tests/manifests/check/<id>.yaml):
the finding its file is named after appears, the well-wired manifest has none, and every
rule id is documented in deploy/README.md's table."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from proxy.adopt.check import check, main, objects
from proxy.adopt.findings import ERROR, INFO, WARNING, Finding
from proxy.adopt.manifests import parse, read
from proxy.adopt.pods import is_proxy, runs_webhook
from proxy.adopt.rules import RULES, Options

ROOT = Path(__file__).resolve().parent.parent.parent
MANIFESTS = ROOT / "tests" / "manifests" / "check"
# The cluster version a rule needs to fire at all, or at its full severity.
VERSIONS = {"native-too-old": (1, 28), "named-port-native": (1, 31)}
# What each rule's manifest must give: its severity.
SEVERITY = {
    "bypass": ERROR, "numeric-target-port": INFO, "admin-exposed": WARNING,
    "named-port-native": WARNING, "no-drain": ERROR, "grace-too-short": ERROR,
    "grace-not-told": ERROR, "prestop-sleep-too-long": ERROR, "no-app-prestop": ERROR,
    "app-prestop-wrong": ERROR, "native-too-old": ERROR, "init-not-sidecar": ERROR,
    "readiness-not-proxy": WARNING, "memory-too-low": WARNING, "no-pdb": WARNING,
    "proxy-settings": ERROR, "settings-unknown": INFO, "token-placeholder": WARNING,
}


def findings_of(path: Path, version: tuple[int, int] | None = None) -> list[Finding]:
    return check(list(objects(read([str(path)]))), Options(kubernetes_version=version))


def findings_in(text: str, version: tuple[int, int] | None = None) -> list[Finding]:
    return check(list(objects(parse(text, "test.yaml"))), Options(kubernetes_version=version))


def test_every_rule_has_a_manifest_and_a_severity() -> None:
    assert set(RULES) == set(SEVERITY)
    assert {path.stem for path in MANIFESTS.glob("*.yaml")} == set(RULES) | {"good"}


def test_the_well_wired_manifest_has_no_finding() -> None:
    assert findings_of(MANIFESTS / "good.yaml", (1, 33)) == []


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_each_rule_finds_what_its_manifest_holds(rule_id: str) -> None:
    found = findings_of(MANIFESTS / f"{rule_id}.yaml", VERSIONS.get(rule_id))
    mine = [f for f in found if f.id == rule_id]
    assert mine, found
    assert {f.severity for f in mine} == {SEVERITY[rule_id]}
    assert all(f.message and f.fix and f.name == "web" and f.namespace == "default"
               for f in mine)
    # Each manifest is the good one with one thing wrong: no error from another rule, but
    # for a numeric targetPort, which is also a bypass.
    others = {f.id for f in found if f.severity == ERROR} - {rule_id}
    assert others <= ({"bypass"} if rule_id == "numeric-target-port" else set()), found


@pytest.mark.parametrize("rule_id", sorted(VERSIONS))
def test_version_dependent_rules_follow_the_cluster_version(rule_id: str) -> None:
    path = MANIFESTS / f"{rule_id}.yaml"
    assert not [f for f in findings_of(path, (1, 33)) if f.id == rule_id]
    unknown = [f for f in findings_of(path) if f.id == rule_id]
    assert [f.severity for f in unknown] == ([INFO] if rule_id == "named-port-native" else [])


def test_readme_documents_every_rule_and_no_other() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    section = readme.split("## 9. Check your manifests", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z-]+)` \|", section, re.MULTILINE)
    assert sorted(documented) == sorted(RULES)


SERVICE_AND_APP = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: %s}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      containers: [{name: web, image: web:1, ports: [{containerPort: 8080}]}]
"""


def test_a_service_selects_workloads_of_its_own_namespace_only() -> None:
    assert [f.id for f in findings_in(SERVICE_AND_APP % "shop")] == ["no-drain"]
    assert findings_in(SERVICE_AND_APP % "other") == []


def test_a_selector_is_a_subset_of_the_pod_labels() -> None:
    text = SERVICE_AND_APP.replace("{app: web}", "{app: web, tier: back}", 1)
    assert findings_in(text % "shop") == []


def test_a_pdb_with_match_expressions_counts() -> None:
    budget = """\
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: shop}
spec:
  maxUnavailable: 1
  selector:
    matchExpressions: [{key: tier, operator: In, values: [front, back]}]
"""
    text = (SERVICE_AND_APP % "shop").replace("spec:\n  template:", "spec:\n  replicas: 2\n"
                                              "  template:")
    assert "no-pdb" in {f.id for f in findings_in(text)}
    assert "no-pdb" not in {f.id for f in findings_in(text + budget)}


def test_args_and_a_token_in_a_secret_are_read() -> None:
    text = (MANIFESTS / "good.yaml").read_text().replace(
        "env:\n", "args: [--propagation-window, '20']\n        env:\n") + """\
---
apiVersion: v1
kind: Secret
metadata: {name: drain-proxy-drain-token}
data: {token: Q0hBTkdFLU1FLW9wZW5zc2wtcmFuZC1oZXgtMzI=}
"""
    found = {(f.id, f.kind) for f in findings_in(text)}
    assert found == {("grace-too-short", "Deployment"), ("token-placeholder", "Secret")}


def test_a_list_is_read_item_by_item() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "- " + doc.strip().replace("\n", "\n  ") + "\n"
        for doc in (SERVICE_AND_APP % "shop").split("---\n"))
    assert [f.id for f in findings_in(text)] == ["no-drain"]


def run_main(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), io.StringIO(stdin), out), out.getvalue()


def test_json_output_has_exactly_the_issue_fields() -> None:
    code, out = run_main("--format", "json", str(MANIFESTS / "memory-too-low.yaml"))
    assert code == 0
    (finding,) = json.loads(out)
    assert set(finding) == {"severity", "id", "kind", "name", "namespace", "message", "fix"}
    assert finding["id"] == "memory-too-low" and "95Mi" in finding["fix"]


def test_text_output_is_one_line_per_finding_and_a_summary() -> None:
    code, out = run_main(str(MANIFESTS / "numeric-target-port.yaml"))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("error bypass Service/web (default): port http goes to ")
    assert "; fix: set targetPort: 8000" in lines[0]
    assert lines[1].startswith("info numeric-target-port Service/web (default): ")
    assert lines[2] == "1 error(s), 0 warning(s), 1 info"


@pytest.mark.parametrize(("argv", "stdin", "says"), [
    (["-"], "kind: Service\nmetadata: {name: [}\n", "<stdin>:2: "),
    (["-"], "apiVersion: v1\nmetadata: {name: x}\n", "<stdin>:1: not a Kubernetes object"),
    ([str(MANIFESTS)], "", "cannot read"),
    (["--kubernetes-version", "latest"], "", "allowed: MAJOR.MINOR"),
])
def test_unreadable_input_is_exit_code_2_and_one_line(
        argv: list[str], stdin: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_main(*argv, stdin=stdin)
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert says in err and err.count("\n") == 1, err


def proxy_with(lines: str) -> str:
    """good.yaml with ``lines`` added to the proxy container (indented as its keys)."""
    return (MANIFESTS / "good.yaml").read_text().replace(
        "        env:\n", "".join(f"        {line}\n" for line in lines.splitlines())
        + "        env:\n")


def test_a_drain_proxy_command_counts_with_its_args_and_the_token_file_is_not_read() -> None:
    text = proxy_with("command: [/usr/local/bin/drain-proxy, --drain-timeout, '40']\n"
                      "args: [--drain-token-file, /nowhere/token]")
    assert [(f.id, f.message.split(" = ")[-1][:4]) for f in findings_in(text)] == [
        ("grace-too-short", "52 s")]


def test_a_shell_command_or_env_from_is_reported_not_guessed() -> None:
    text = proxy_with("command: [/bin/sh, -c, 'exec drain-proxy --drain-timeout 40']\n"
                      "envFrom: [{configMapRef: {name: proxy}}]")
    (finding,) = findings_in(text)
    assert finding.id == "settings-unknown" and finding.severity == INFO
    assert "'/bin/sh'" in finding.message and "envFrom" in finding.message


def test_the_image_s_other_commands_are_not_the_sidecar_however_drain_proxy_is_named() -> None:
    for command in ([], ["drain-proxy"], ["/opt/drain-proxy/bin/drain-proxy"]):
        webhook = {"name": "webhook", "image": "registry.example.invalid/drain-proxy:0.1.0",
                   "command": command, "args": ["webhook", "--listen", "0.0.0.0:8443"]}
        assert runs_webhook(webhook) and not is_proxy(webhook), command
    assert not runs_webhook({"name": "x", "command": ["sh", "-c", "drain-proxy webhook"]})
