"""``drain-proxy inject`` on manifests in the shapes users have (tests/manifests/inject/):
every output valid for Kubernetes (strict schema), wired as deploy/README.md says, and
unchanged by a second ``inject``.  The command runs as a real subprocess, the way kubectl
pipes and Helm's post-renderer call it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.adopt import sidecar
from proxy.adopt.check import check
from proxy.adopt.findings import ERROR
from proxy.adopt.inject import main
from proxy.adopt.manifests import parse, split
from proxy.adopt.rules import Options as CheckOptions

from support.deploy import SCHEMA_VERSIONS, grace_period, labels_match, validate_schema
from support.kustomize import ROOT, Doc

MANIFESTS = ROOT / "tests" / "manifests" / "inject"
CASES = sorted(MANIFESTS.glob("*.yaml"))
TOKEN = "0123456789abcdef"
DRAIN_PROXY = Path(sys.executable).with_name("drain-proxy")


def run_inject(*args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), io.StringIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def inject_file(path: Path, *args: str) -> str:
    code, out, err = run_inject("--drain-token", TOKEN, *args, str(path))
    assert code == 0, err
    return out


def docs(text: str) -> list[Doc]:
    """As kubectl reads them (YAML 1.1, like Kubernetes' own parser); List items too."""
    found: list[Doc] = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        found.extend(doc["items"] if doc["kind"] == "List" else [doc])
    return found


def pod_of(doc: Doc) -> tuple[Doc, Doc] | None:
    if doc["kind"] == "Pod":
        return doc["metadata"], doc["spec"]
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}:
        return doc["spec"]["template"]["metadata"], doc["spec"]["template"]["spec"]
    return None


def proxy_of(spec: Doc) -> Doc | None:
    found = [c for key in ("initContainers", "containers") for c in spec.get(key, [])
             if c["name"] == sidecar.CONTAINER_NAME]
    assert len(found) <= 1
    return found[0] if found else None


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def assert_wired(objects: list[Doc]) -> int:
    """Every pod with a proxy is wired as deploy/README.md says; the number of them."""
    services = [d for d in objects if d["kind"] == "Service"]
    secrets = [d for d in objects if d["kind"] == "Secret"
               and d["metadata"]["name"] == sidecar.TOKEN_SECRET]
    wired = 0
    for doc in objects:
        pod = pod_of(doc)
        proxy = None if pod is None else proxy_of(pod[1])
        if pod is None or proxy is None:
            continue
        wired += 1
        metadata, spec = pod
        env = env_of(proxy)
        upstream = int(env[sidecar.UPSTREAM_ENV].removeprefix("127.0.0.1:"))
        grace = grace_period(spec)
        assert env[sidecar.GRACE_ENV] == str(grace)
        assert grace >= 10 + 15 + 2
        hooked = [c for c in spec["containers"]
                  if c.get("lifecycle", {}).get("preStop", {}).get("httpGet", {})
                  .get("path") == "/drain"]
        assert len(hooked) == 1, "one app container calls /drain"
        get = hooked[0]["lifecycle"]["preStop"]["httpGet"]
        assert get["port"] == sidecar.ADMIN_PORT
        (header,) = get["httpHeaders"]
        assert secrets, "the token Secret is in the output"
        assert all(s["stringData"]["token"] == header["value"].removeprefix("Bearer ")
                   for s in secrets)
        assert upstream in {p["containerPort"] for p in hooked[0].get("ports", [])}
        assert metadata["labels"]["drain-proxy/sidecar"] == "true"
        for service in services:
            if labels_match(service["spec"].get("selector", {}), metadata.get("labels", {})) \
                    and service["metadata"].get("namespace") == doc["metadata"].get("namespace"):
                for port in service["spec"]["ports"]:
                    assert port.get("targetPort") not in (upstream, None), "no bypass"
    return wired


@pytest.mark.parametrize("layout", ["native", "classic"])
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_every_output_is_valid_and_wired(path: Path, layout: str) -> None:
    objects = docs(inject_file(path, "--layout", layout))
    assert assert_wired(objects) >= 1
    for version in SCHEMA_VERSIONS:
        for doc in objects:
            validate_schema(doc, version, path.name)


@pytest.mark.parametrize("layout", ["native", "classic"])
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_every_output_checks_without_an_error(path: Path, layout: str) -> None:
    """What inject writes is what drain-proxy check asks for (on a cluster with native
    sidecars): no error; warnings at most (a Service's admin port, say)."""
    out = inject_file(path, "--layout", layout)
    objects = [obj for document in parse(out, path.name) for obj in document.objects()]
    found = check(objects, CheckOptions(kubernetes_version=(1, 29)))
    assert not [f for f in found if f.severity == ERROR], found


@pytest.mark.parametrize("layout", ["native", "classic"])
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_inject_of_its_own_output_changes_nothing(path: Path, layout: str) -> None:
    once = inject_file(path, "--layout", layout)
    code, twice, err = run_inject("-", stdin=once)
    assert code == 0, err
    assert twice == once
    assert err == ""


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_documents_it_does_not_change_come_out_as_they_came(path: Path) -> None:
    """Byte for byte: a document whose content is unchanged is not re-dumped."""
    before = split(path.read_text())
    after = split(inject_file(path))
    assert len(after) >= len(before)
    unchanged = 0
    for (_, old), (_, new) in zip(before, after, strict=False):
        if yaml.safe_load(old) == yaml.safe_load(new):
            assert new == old
            unchanged += 1
    assert unchanged < len(before), "something was wired"


def test_the_chart_keeps_its_comments_and_the_app_its_named_port() -> None:
    out = inject_file(MANIFESTS / "chart.yaml")
    assert "# Source: shop/templates/deployment.yaml" in out
    objects = docs(out)
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    proxy = proxy_of(spec)
    assert proxy is not None and proxy in spec["initContainers"]
    assert env_of(proxy)[sidecar.UPSTREAM_ENV] == "127.0.0.1:3000"  # targetPort: http
    (service,) = [d for d in objects if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == sidecar.PROXY_PORT
    (test_pod,) = [d for d in objects if d["kind"] == "Pod"]
    assert proxy_of(test_pod["spec"]) is None, "a pod no Service selects is left alone"


def test_classic_layout_puts_the_proxy_after_the_app() -> None:
    objects = docs(inject_file(MANIFESTS / "chart.yaml", "--layout", "classic"))
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["shop", sidecar.CONTAINER_NAME]
    assert "restartPolicy" not in spec["containers"][1] and "initContainers" not in spec


def test_a_short_grace_period_is_raised_and_told_to_the_proxy() -> None:
    code, out, err = run_inject("--drain-token", TOKEN, str(MANIFESTS / "statefulset.yaml"))
    assert code == 0
    (stateful,) = [d for d in docs(out) if d["kind"] == "StatefulSet"]
    spec = stateful["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 27
    proxy = proxy_of(spec)
    assert proxy is not None and env_of(proxy)[sidecar.GRACE_ENV] == "27"
    assert err.splitlines() == [
        f"drain-proxy inject: {MANIFESTS / 'statefulset.yaml'}:29: StatefulSet/ledger "
        "(namespace payments): terminationGracePeriodSeconds raised from 10 to 27 "
        "(propagation window 10 s + drain timeout 15 s + 2 s)",
        f"drain-proxy inject: {MANIFESTS / 'statefulset.yaml'}:3: Service/ledger-headless "
        "(namespace payments): headless: its clients reach StatefulSet/ledger (namespace "
        "payments) at the pods' addresses, through the proxy only on port 8000"]
    services = {d["metadata"]["name"]: d for d in docs(out) if d["kind"] == "Service"}
    assert all(s["spec"]["ports"][0]["targetPort"] == sidecar.PROXY_PORT
               for s in services.values())


def test_a_longer_grace_period_is_kept_and_told_to_the_proxy() -> None:
    objects = docs(inject_file(MANIFESTS / "daemonset.yaml"))
    (daemonset,) = [d for d in objects if d["kind"] == "DaemonSet"]
    spec = daemonset["spec"]["template"]["spec"]
    proxy = proxy_of(spec)
    assert spec["terminationGracePeriodSeconds"] == 60
    assert proxy is not None and env_of(proxy)[sidecar.GRACE_ENV] == "60"
    assert env_of(proxy)[sidecar.UPSTREAM_ENV] == "127.0.0.1:7070"


def test_jobs_and_cronjobs_are_never_wired() -> None:
    text = (MANIFESTS / "daemonset.yaml").read_text()
    out = inject_file(MANIFESTS / "daemonset.yaml")
    for kind in ("Job", "CronJob"):
        (before,) = [d for d in docs(text) if d["kind"] == kind]
        (after,) = [d for d in docs(out) if d["kind"] == kind]
        assert after == before


def test_a_post_start_stays_and_a_pre_stop_sleep_is_replaced_and_said() -> None:
    code, out, err = run_inject("--drain-token", TOKEN, str(MANIFESTS / "pod-hooks.yaml"))
    assert code == 0
    (pod,) = [d for d in docs(out) if d["kind"] == "Pod"]
    app = pod["spec"]["containers"][0]
    assert app["lifecycle"]["postStart"] == {"exec": {"command": ["/bin/wiki", "warm-cache"]}}
    assert app["lifecycle"]["preStop"]["httpGet"]["path"] == "/drain"
    assert "must survive the injection" in out
    assert ":14: Pod/wiki: container 'wiki': its preStop (exec) replaced" in err
    assert pod["spec"]["volumes"][0]["configMap"]["defaultMode"] == 0o644  # kept as written
    assert "log-shipper" not in str(app) and "lifecycle" not in pod["spec"]["containers"][1]


def test_a_list_from_kubectl_get_is_wired_in_place() -> None:
    out = inject_file(MANIFESTS / "list.yaml")
    (listed,) = [d for d in yaml.safe_load_all(out) if d is not None and d["kind"] == "List"]
    kinds = [item["kind"] for item in listed["items"]]
    assert kinds == ["Service", "Deployment"]
    assert listed["items"][0]["spec"]["ports"][0]["targetPort"] == sidecar.PROXY_PORT


def test_a_sidecar_wired_wrong_is_repaired() -> None:
    """A bypassing Service, a short grace period, no preStop; the Secret's token is kept."""
    code, out, err = run_inject(str(MANIFESTS / "already-injected.yaml"))
    assert code == 0, err
    objects = docs(out)
    assert assert_wired(objects) == 1
    (secret,) = [d for d in objects if d["kind"] == "Secret"]
    assert secret["stringData"]["token"] == "3f9c1e0a7b5d4c2e8f6a1b3c5d7e9f0a"
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    proxy = proxy_of(deployment["spec"]["template"]["spec"])
    assert proxy is not None and proxy["image"] == "registry.example.com/drain-proxy:0.1.0"


def test_a_token_given_replaces_the_one_in_the_secret() -> None:
    objects = docs(inject_file(MANIFESTS / "already-injected.yaml"))
    (secret,) = [d for d in objects if d["kind"] == "Secret"]
    assert secret["stringData"]["token"] == TOKEN
    assert assert_wired(objects) == 1


def test_without_a_token_one_is_made_and_written_as_the_secret() -> None:
    code, out, err = run_inject(str(MANIFESTS / "chart.yaml"))
    assert code == 0
    objects = docs(out)
    (secret,) = [d for d in objects if d["kind"] == "Secret"]
    assert len(secret["stringData"]["token"]) == 64
    assert assert_wired(objects) == 1
    assert "made a new drain token" in err and "--drain-token" in err
    code, again, err = run_inject(stdin=out)
    assert (code, again, err) == (0, out, "")


@pytest.mark.parametrize("layout", ["native-sidecar", "classic-sidecar"])
def test_the_shipped_overlays_are_already_wired(layout: str) -> None:
    """deploy/'s own Deployments, with their Service and Secret, need nothing."""
    base = ROOT / "deploy" / "kubernetes" / "base"
    overlay = ROOT / "deploy" / "kubernetes" / "overlays" / layout
    text = "\n---\n".join([(base / "service.yaml").read_text(),
                           (base / "drain-token-secret.yaml").read_text(),
                           (overlay / "deployment.yaml").read_text()])
    if layout == "native-sidecar":  # the overlay's patch, as kustomize applies it
        text = text.replace("targetPort: http", "targetPort: 8000")
    code, out, err = run_inject(stdin=text)
    assert code == 0
    assert err == "drain-proxy inject: the drain token is deploy/'s placeholder " \
        "(CHANGE-ME-openssl-rand-hex-32), with which the proxy refuses to start: pass one of " \
        "your own with --drain-token\n"
    assert docs(out) == docs(text)
    code, out, err = run_inject("--drain-token", TOKEN, stdin=text)
    assert (code, err) == (0, "")
    assert out.count(f"Bearer {TOKEN}") == 1 and out.count(f"token: {TOKEN}") == 1


UNDECIDABLE = {
    "two-ports-no-service": ("""\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, annotations: {drain-proxy/inject: enabled}}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
        - name: api
          image: api
          ports: [{containerPort: 8080}, {containerPort: 9090}]
""", "<stdin>:1: Deployment/api: no Service targets it and container 'api' declares 2 ports "
     "(8080, 9090): choose the app's with --app-port", ["--app-port", "8080"]),
    "app-protocol": ("""\
apiVersion: v1
kind: Service
metadata: {name: cache}
spec:
  selector: {app: cache}
  ports: [{port: 6379, appProtocol: redis}]
---
apiVersion: v1
kind: Pod
metadata: {name: cache, labels: {app: cache}}
spec:
  containers: [{name: cache, image: cache, ports: [{containerPort: 6379}]}]
""", "<stdin>:8: Pod/cache: port 6379 (appProtocol redis) does not look like HTTP: choose "
     "--mode tcp (or --mode http if it is)", ["--mode", "tcp"]),
    "port-name": ("""\
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{port: 5432, targetPort: postgres}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: db, ports: [{name: postgres, containerPort: 5432}]}]
""", "<stdin>:8: StatefulSet/db: port 5432 (port name postgres) does not look like HTTP: choose "
     "--mode tcp (or --mode http if it is)", ["--mode", "tcp"]),
    "two-containers": ("""\
apiVersion: v1
kind: Pod
metadata: {name: duo, annotations: {drain-proxy/inject: enabled}}
spec:
  containers:
    - {name: one, image: one, ports: [{containerPort: 8080}]}
    - {name: two, image: two, ports: [{containerPort: 8081}]}
""", "<stdin>:1: Pod/duo: 2 app containers (one, two): choose one with --app-container",
     ["--app-container", "two"]),
}


@pytest.mark.parametrize("case", UNDECIDABLE, ids=str)
def test_what_it_cannot_decide_stops_it_naming_the_option(case: str) -> None:
    text, problem, settle = UNDECIDABLE[case]
    code, out, err = run_inject("--drain-token", TOKEN, stdin=text)
    assert (code, out) == (2, "")
    assert err == f"drain-proxy inject: error: {problem}\n"
    code, out, err = run_inject("--drain-token", TOKEN, *settle, stdin=text)
    assert code == 0, err
    objects = docs(out)
    assert assert_wired(objects) == 1
    code, again, err = run_inject(stdin=out)
    assert (code, again) == (0, out), err


SHARED_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: warm-cache}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      restartPolicy: Never
      containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]
"""


def test_a_service_that_also_selects_pods_left_unwired_is_not_retargeted() -> None:
    """Pointed at the proxy's port, the Service would send the Job's pods' share of the
    traffic to a port nothing listens on: inject stops and says so, writing nothing."""
    code, out, err = run_inject("--drain-token", TOKEN, stdin=SHARED_SERVICE)
    assert (code, out) == (2, "")
    assert err == ("drain-proxy inject: error: <stdin>:1: Service/web: it also selects "
                   "Job/warm-cache, which gets no proxy: pointed at the proxy's port, it would "
                   "cut those pods off; narrow its selector\n")
    narrowed = SHARED_SERVICE.replace("metadata: {labels: {app: web}}\n    spec:\n      "
                                      "restartPolicy", "metadata: {labels: {app: warm}}\n"
                                      "    spec:\n      restartPolicy")
    code, out, err = run_inject("--drain-token", TOKEN, stdin=narrowed)
    assert code == 0, err
    assert assert_wired(docs(out)) == 1


def test_every_problem_is_one_line() -> None:
    text = UNDECIDABLE["two-containers"][0] + "---\n" + UNDECIDABLE["two-ports-no-service"][0]
    code, _, err = run_inject(stdin=text)
    assert code == 2
    assert [line.split(": ")[2:4] for line in err.splitlines()] == \
        [["<stdin>:1", "Pod/duo"], ["<stdin>:9", "Deployment/api"]]


def _subprocess(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DRAIN_PROXY), "inject", *args], input=stdin,
                          capture_output=True, text=True, timeout=30, check=False)


def test_as_a_helm_post_renderer_it_reads_stdin_and_writes_stdout() -> None:
    """Helm runs ``drain-proxy inject`` with the rendered chart on stdin."""
    rendered = (MANIFESTS / "chart.yaml").read_text()
    done = _subprocess("--drain-token", TOKEN, stdin=rendered)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    objects = docs(done.stdout)
    assert assert_wired(objects) == 1
    for doc in objects:
        validate_schema(doc, SCHEMA_VERSIONS[-1], "post-rendered chart")
    again = _subprocess(stdin=done.stdout)
    assert (again.returncode, again.stdout) == (0, done.stdout)


def test_the_command_exits_2_on_input_it_cannot_read() -> None:
    done = _subprocess(stdin="kind: Pod\nmetadata: {name: [\n")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("drain-proxy inject: error: <stdin>:3: ")
    assert len(done.stderr.splitlines()) == 1


def test_the_sidecar_itself_never_loads_ruamel() -> None:
    code = "import sys, proxy.cli; assert not [m for m in sys.modules if 'ruamel' in m]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_an_image_given_replaces_the_image_of_a_proxy_already_there() -> None:
    out = inject_file(MANIFESTS / "already-injected.yaml", "--image", "registry.example.com/dp:2")
    (deployment,) = [d for d in docs(out) if d["kind"] == "Deployment"]
    proxy = proxy_of(deployment["spec"]["template"]["spec"])
    assert proxy is not None and proxy["image"] == "registry.example.com/dp:2"


def test_what_it_adds_goes_below_the_comments_that_follow_a_block() -> None:
    out = inject_file(MANIFESTS / "trailing-comments.yaml")
    lines = out.splitlines()
    assert lines.index("            - containerPort: 8080  # the app") \
        < lines.index("          lifecycle:") < lines.index("      # the volumes of the app") \
        < lines.index("      volumes:") < lines.index("      initContainers:")
    assert lines[lines.index("# the end of the file") + 1] == "---", "last in its document"


def test_its_help_lists_the_options_that_settle_what_it_cannot_decide() -> None:
    done = subprocess.run([str(DRAIN_PROXY), "inject", "--help"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0
    for option in ("--layout", "--image", "--app-container", "--app-port", "--mode",
                   "--drain-token"):
        assert option in done.stdout


def test_what_it_adds_to_flow_style_is_written_in_block_style() -> None:
    out = inject_file(MANIFESTS / "flow-style.yaml")
    assert "ports: [{containerPort: 80}]" in out
    assert "spec: {selector: {app: tiny}, ports: [{name: web, port: 80, targetPort: 8000}]}" \
        in out
    assert "\n      initContainers:\n        - name: drain-proxy\n" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_the_annotation_disabled_keeps_a_selected_workload_out() -> None:
    text = (MANIFESTS / "chart.yaml").read_text().replace(
        "    app.kubernetes.io/managed-by: Helm\nspec:\n  replicas: 2",
        "    app.kubernetes.io/managed-by: Helm\n  annotations:\n    drain-proxy/inject: disabled"
        "\nspec:\n  replicas: 2")
    assert "drain-proxy/inject: disabled" in text
    code, out, err = run_inject("--drain-token", TOKEN, stdin=text)
    assert (code, err) == (0, "")
    assert split(out) == split(text)
