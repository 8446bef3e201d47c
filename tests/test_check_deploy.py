"""``drain-proxy check`` over this repository's own deploy/, and as a real process.

Every kustomization of deploy/ is rendered the way the other deploy tests render it
(tests/support/kustomize.py, checked against ``kubectl kustomize``) and checks without an
error; so does every file a kustomization lists as a resource, alone (patches and
``kustomization.yaml`` are not objects).  The placeholder token of deploy/ is a warning.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.adopt.check import check, objects
from proxy.adopt.findings import ERROR
from proxy.adopt.manifests import read
from proxy.adopt.rules import Options

from helpers import CHILD_CWD, child_env
from support.deploy import DEPLOY, KUBERNETES, kustomization_dirs
from support.kustomize import RENDERABLE_KEYS, load_one, rel, render

MANIFESTS = Path(__file__).resolve().parent / "manifests" / "check"
# The oldest cluster the native layout is for (deploy/README.md, "Choose a layout").
CLUSTER = Options(kubernetes_version=(1, 29))


def renderable() -> list[Path]:
    """The kustomizations a user applies (not components) that the tests' renderer renders
    (deploy/grafana's configMapGenerator makes a ConfigMap only, nothing to check)."""
    return [d for d in kustomization_dirs() if d.parent.name != "components"
            and set(load_one(d / "kustomization.yaml")) <= RENDERABLE_KEYS]


def resource_files() -> list[Path]:
    files = {directory / entry
             for directory in kustomization_dirs()
             for entry in load_one(directory / "kustomization.yaml").get("resources", [])}
    return sorted(path for path in files if path.is_file())


def test_the_deploy_files_are_all_covered() -> None:
    # base, both overlays, the component example, prometheus, the webhook and its cert-manager
    assert len(renderable()) == 7
    assert KUBERNETES / "overlays" / "native-sidecar" in renderable()
    assert len(resource_files()) >= 10


@pytest.mark.parametrize("directory", renderable(), ids=rel)
def test_each_rendered_kustomization_checks_without_an_error(directory: Path) -> None:
    found = check(render(directory), CLUSTER)
    assert not [f for f in found if f.severity == ERROR], found
    if (directory / "..").resolve().name in ("overlays", "examples"):
        # The proof the check saw the pods: deploy/ ships the placeholder token, and nothing
        # else is amiss.
        assert {(f.id, f.kind) for f in found} == {("token-placeholder", "Deployment"),
                                                    ("token-placeholder", "Secret")}


@pytest.mark.parametrize("path", resource_files(), ids=rel)
def test_each_resource_file_checks_without_an_error(path: Path) -> None:
    found = check(list(objects(read([str(path)]))), CLUSTER)
    assert not [f for f in found if f.severity == ERROR], found


def run_check(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "check", *args], input=stdin,
                          capture_output=True, text=True, timeout=30, env=child_env(),
                          cwd=CHILD_CWD, check=False)


def test_the_process_checks_a_rendered_overlay_from_stdin_clean() -> None:
    rendered = yaml.safe_dump_all(render(DEPLOY / "kubernetes" / "overlays" / "native-sidecar"))
    result = run_check("--format", "json", "--kubernetes-version", "1.29", "-", stdin=rendered)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert {f["severity"] for f in found} == {"warning"}
    assert all(set(f) == {"severity", "id", "kind", "name", "namespace", "message", "fix"}
               for f in found)


def test_the_process_exits_1_on_an_error() -> None:
    result = run_check("--format", "json", str(MANIFESTS / "bypass.yaml"))
    assert result.returncode == 1, result.stderr
    assert [f["id"] for f in json.loads(result.stdout)] == ["bypass"]
    result = run_check(str(MANIFESTS / "good.yaml"))
    assert (result.returncode, result.stdout) == (0, "0 error(s), 0 warning(s), 0 info\n")


def test_the_process_exits_2_on_unreadable_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n")
    result = run_check(str(MANIFESTS / "good.yaml"), str(broken))
    assert result.returncode == 2 and result.stdout == ""
    assert re.match(rf"drain-proxy check: error: {re.escape(str(broken))}:[45]: ", result.stderr)
    assert result.stderr.count("\n") == 1


def test_the_sidecar_never_loads_ruamel_and_check_without_it_names_the_extra() -> None:
    loads = subprocess.run(
        [sys.executable, "-c", "import sys, proxy.cli; print('ruamel' in sys.modules)"],
        capture_output=True, text=True, timeout=30, env=child_env(), cwd=CHILD_CWD, check=False)
    assert loads.stdout == "False\n", loads.stderr
    without = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ruamel'] = sys.modules['ruamel.yaml'] "
         "= None; from proxy.cli import main; sys.exit(main(['check']))"],
        capture_output=True, text=True, timeout=30, env=child_env(), cwd=CHILD_CWD, check=False)
    assert without.returncode == 2 and "install drain-proxy[adopt]" in without.stderr
    assert without.stderr.count("\n") == 1
