"""What deploy/ does to protect /drain, and the component's grace period and hooks.

The drain token: in every deployable layout the proxy reads its token from a file on a Secret
volume, the Secret is rendered by the same kustomization, the app's preStop hook sends
"Bearer " + that token, and the proxy's settings parser, given that file, yields that token.
The NetworkPolicy example: it selects the layout's pod, admits the proxy's traffic port from
everywhere, and the admin port only from Prometheus and the nodes. The component: it keeps the
Deployment's terminationGracePeriodSeconds, and it replaces the app's `lifecycle`, as
deploy/README.md says; both are rendered from temporary kustomizations that use it (with the
renderer of tests/support/kustomize.py, and compared with ``kubectl kustomize`` when it is
installed).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import posixpath
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.deploy import (
    DEPLOY,
    KUBERNETES,
    LAYOUTS,
    NON_ROOT_UID,
    POD_MONITOR,
    SCHEMA_VERSIONS,
    TOKEN_FILE_ENV,
    Layout,
    container_env,
    each_layout,
    grace_period,
    labels_match,
    resolve_port,
    secret_data,
    validate_schema,
)
from support.kustomize import (
    Doc,
    find_kubectl,
    kubectl_kustomize,
    load_documents,
    load_one,
    normalised,
)

COMPONENT = KUBERNETES / "components" / "drain-proxy-sidecar"
NETWORK_POLICY_COMPONENT = KUBERNETES / "components" / "admin-network-policy"
EXAMPLE = KUBERNETES / "examples" / "component"
TOKEN_SECRET = "drain-proxy-drain-token"
TOKEN_KEY = "token"
# The marked placeholder of every token in deploy/: replaced by `openssl rand -hex 32`.
PLACEHOLDER_TOKEN = "CHANGE-ME-openssl-rand-hex-32"
SECRET_FILE_DEFAULT_MODE = 0o644  # kubelet's mode for a Secret volume's files that set none

def with_docs(layout: Layout, docs: list[Doc]) -> Layout:
    """The same layout rendered as `docs`: to show that a check fails on a broken pod."""
    changed = Layout(layout.name, layout.directory, layout.native, layout.annotations_expected)
    changed.__dict__["docs"] = docs  # where cached_property keeps the rendered documents
    return changed


def edited(layout: Layout, kind: str, edit: Any) -> Layout:
    """The layout with `edit` applied to a copy of its only object of that kind."""
    docs = copy.deepcopy(layout.docs)
    (doc,) = (doc for doc in docs if doc["kind"] == kind)
    edit(doc)
    return with_docs(layout, docs)


def every_container(pod: Doc) -> list[Doc]:
    containers: list[Doc] = pod.get("initContainers", []) + pod["containers"]
    return containers


# --- the drain token -----------------------------------------------------------------------


def token_volume(layout: Layout) -> tuple[Doc, Doc, str]:
    """The proxy's volume mount that holds its token file, the volume, and the file's path."""
    path = container_env(layout.proxy)[TOKEN_FILE_ENV]
    found = [mount for mount in layout.proxy.get("volumeMounts", [])
             if path.startswith(mount["mountPath"].rstrip("/") + "/")]
    assert len(found) == 1, f"{layout.name}: {path} must be on one volume mount of the proxy"
    (volume,) = (v for v in layout.pod.get("volumes", []) if v["name"] == found[0]["name"])
    assert "secret" in volume, f"{layout.name}: {path} must be on a Secret volume"
    return found[0], volume, path


def check_token_wiring(layout: Layout) -> str:
    """Fail unless the proxy reads its token from a file of a Secret that the layout renders,
    parse_settings yields it from that file, and the app's preStop hook sends it; return it."""
    env = container_env(layout.proxy)
    assert "DRAIN_PROXY_DRAIN_TOKEN" not in env, "the token is read from a file, not from env"
    _, volume, path = token_volume(layout)
    secret = layout.secret(volume["secret"]["secretName"])  # fails unless rendered here
    assert secret["metadata"]["name"] == TOKEN_SECRET
    files = layout.secret_files(layout.proxy)
    assert path in files, f"{layout.name}: {path} is no file of the Secret volume"
    token = secret_data(secret)[TOKEN_KEY]
    assert files[path] == token
    settings = layout.settings  # parse_settings reads the file, as the proxy does at start-up
    assert settings.drain_token == token and settings.drain_token_file == path
    http_get = layout.app["lifecycle"]["preStop"]["httpGet"]
    assert http_get.get("httpHeaders") == [{"name": "Authorization", "value": f"Bearer {token}"}]
    return token


@each_layout
def test_prestop_sends_the_token_the_proxy_reads_from_its_secret(layout: Layout) -> None:
    assert check_token_wiring(layout) == PLACEHOLDER_TOKEN


@each_layout
def test_token_wiring_check_catches_mistakes(layout: Layout) -> None:
    """A header that differs from the Secret, a Secret the layout does not render, a token in
    env: each is refused."""

    def header(deployment: Doc) -> None:
        spec = deployment["spec"]["template"]["spec"]
        hook = spec["containers"][0]["lifecycle"]["preStop"]["httpGet"]
        hook["httpHeaders"][0]["value"] = "Bearer another-token"

    def rename(secret: Doc) -> None:
        secret["metadata"]["name"] = "another-secret"

    def literal(deployment: Doc) -> None:
        spec = deployment["spec"]["template"]["spec"]
        for container in every_container(spec):
            if container["name"] == layout.proxy["name"]:
                container["env"].append({"name": "DRAIN_PROXY_DRAIN_TOKEN", "value": "x"})

    for kind, edit in (("Deployment", header), ("Secret", rename), ("Deployment", literal)):
        with pytest.raises(AssertionError):
            check_token_wiring(edited(layout, kind, edit))


@each_layout
def test_only_the_proxy_mounts_the_token_and_can_read_it(layout: Layout) -> None:
    """The proxy runs as uid 65532 with a read-only root: the Secret's files belong to root, so
    the file must be readable by others, or by the pod's fsGroup."""
    mount, volume, path = token_volume(layout)
    assert mount["readOnly"] is True
    for container in every_container(layout.pod):
        if container["name"] != layout.proxy["name"]:
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert volume["name"] not in mounted, f"{container['name']} must not see the token"
    source = volume["secret"]
    item_modes = {posixpath.join(mount["mountPath"], item["path"]): item.get("mode")
                  for item in source.get("items", [])}
    mode = item_modes.get(path) or source.get("defaultMode", SECRET_FILE_DEFAULT_MODE)
    pod_context = layout.pod.get("securityContext", {})
    context = pod_context | layout.proxy["securityContext"]
    assert context["runAsUser"] == NON_ROOT_UID and context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    # With an fsGroup, kubelet gives the files to that group and makes them group-readable.
    assert mode & 0o004 or "fsGroup" in pod_context, f"{layout.name}: mode {mode:o}"
    assert not mode & 0o222, "a Secret file is not to be written"


def test_every_token_in_deploy_is_the_same_marked_placeholder() -> None:
    """Three Secrets (the base's, the component's copy, the injection webhook's) and three
    hook headers hold the token: the same placeholder, and each file says how to make a real
    one."""
    secrets = []
    headers = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        text = path.read_text()
        for doc in yaml.safe_load_all(text):
            for node in walk(doc):
                if node.get("kind") == "Secret":
                    secrets.append(secret_data(node)[TOKEN_KEY])
                if node.get("name") == "Authorization" and "value" in node:
                    headers.append(node["value"])
        if PLACEHOLDER_TOKEN in text:  # marked, and says where the real token comes from
            assert "PLACEHOLDER" in text, path
            assert "openssl rand -hex 32" in text or "drain-token-secret.yaml" in text, path
    assert secrets == [PLACEHOLDER_TOKEN] * 3
    assert headers == [f"Bearer {PLACEHOLDER_TOKEN}"] * 3
    readme = (DEPLOY / "README.md").read_text()
    assert "openssl rand -hex 32" in readme and PLACEHOLDER_TOKEN in readme


def walk(node: Any) -> list[Doc]:
    """Every mapping in a parsed YAML tree."""
    if isinstance(node, dict):
        return [node, *(found for value in node.values() for found in walk(value))]
    if isinstance(node, list):
        return [found for item in node for found in walk(item)]
    return []


# --- the NetworkPolicy ---------------------------------------------------------------------


def policies_selecting(layout: Layout) -> list[Doc]:
    """The layout's ingress NetworkPolicies that select its pod (in the Deployment's namespace,
    unset in deploy/: both land in the namespace they are applied to)."""
    deployment = layout.one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    found = []
    for policy in (doc for doc in layout.docs if doc["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert set(selector) <= {"matchLabels"}, "matchExpressions are not modelled here"
        assert policy["metadata"].get("namespace") == deployment["metadata"].get("namespace")
        if labels_match(selector.get("matchLabels", {}), labels) and "Ingress" in policy[
                "spec"].get("policyTypes", ["Ingress"]):
            found.append(policy)
    return found


def covers(rule: Doc, port: int, pod: Doc) -> bool:
    """Whether an ingress rule's ports admit TCP `port` (no ports: every port)."""
    if not rule.get("ports"):
        return True
    for entry in rule["ports"]:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in entry:
            return True
        first = entry["port"]
        if isinstance(first, str):  # a port name: any container's port of that name
            named = [p["containerPort"] for c in every_container(pod)
                     for p in c.get("ports", []) if p.get("name") == first]
            if port in named:
                return True
        elif first <= port <= entry.get("endPort", first):
            return True
    return False


def admitted_peers(layout: Layout, port: int) -> list[Doc] | None:
    """The peers admitted to TCP `port` of the layout's pod; None: from anywhere."""
    policies = policies_selecting(layout)
    if not policies:
        return None  # a pod no policy selects admits everything
    peers: list[Doc] = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if covers(rule, port, layout.pod):
                if not rule.get("from"):
                    return None
                peers.extend(rule["from"])
    return peers


PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def check_network_policy(layout: Layout) -> None:
    """Fail unless the traffic port is open to everyone, the admin port only to Prometheus and
    to the nodes, and the app's own ports to no one."""
    settings = layout.settings
    assert policies_selecting(layout), f"{layout.name}: no NetworkPolicy selects the pod"
    assert admitted_peers(layout, settings.listen.port) is None
    admin_peers = admitted_peers(layout, settings.admin.port)
    assert admin_peers is not None, "the admin port must not be open to everyone"
    node_peers = [peer for peer in admin_peers if peer != PROMETHEUS_PEER]
    assert len(admin_peers) == 2 and len(node_peers) == 1, admin_peers
    (node_peer,) = node_peers
    assert set(node_peer) == {"ipBlock"} and set(node_peer["ipBlock"]) == {"cidr"}, node_peer
    ipaddress.ip_network(node_peer["ipBlock"]["cidr"])  # a network, host bits clear
    for port in layout.app["ports"]:
        assert admitted_peers(layout, port["containerPort"]) == [], "go through the proxy"


def network_policy_layouts() -> list[Layout]:
    return [layout for layout in LAYOUTS
            if any(doc["kind"] == "NetworkPolicy" for doc in layout.docs)]


def test_the_example_uses_the_network_policy_component() -> None:
    assert [layout.directory for layout in network_policy_layouts()] == [EXAMPLE]
    component = load_one(NETWORK_POLICY_COMPONENT / "kustomization.yaml")
    assert component["kind"] == "Component" and component["resources"] == ["networkpolicy.yaml"]
    (policy,) = load_documents(NETWORK_POLICY_COMPONENT / "networkpolicy.yaml")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # The label the sidecar component and both overlays put on the pod template.
    assert policy["spec"]["podSelector"] == {"matchLabels": {"drain-proxy/sidecar": "true"}}
    for layout in LAYOUTS:
        labels = layout.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert labels_match(policy["spec"]["podSelector"]["matchLabels"], labels), layout.name


@pytest.mark.parametrize("layout", network_policy_layouts(), ids=lambda layout: layout.name)
def test_network_policy_admits_traffic_and_guards_the_admin_port(layout: Layout) -> None:
    check_network_policy(layout)
    admin = layout.settings.admin.port
    peers = admitted_peers(layout, admin)
    assert peers is not None and PROMETHEUS_PEER in peers
    # The kubelet's probes and the app's preStop hook come from the node: the ipBlock.
    node_peers = [peer for peer in peers if "ipBlock" in peer]
    hooks = [layout.proxy["readinessProbe"]["httpGet"], layout.proxy["livenessProbe"]["httpGet"],
             layout.app["lifecycle"]["preStop"]["httpGet"]]
    for http_get in hooks:
        port = resolve_port(layout.proxy, http_get["port"])
        assert port == admin and node_peers
    # Prometheus scrapes the admin port (the PodMonitor's endpoint).
    (monitor,) = load_documents(POD_MONITOR)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert resolve_port(layout.proxy, endpoint["port"]) == admin


@pytest.mark.parametrize("layout", network_policy_layouts(), ids=lambda layout: layout.name)
def test_network_policy_check_catches_mistakes(layout: Layout) -> None:
    def admin_rule(policy: Doc) -> Doc:
        (rule,) = (r for r in policy["spec"]["ingress"] if r.get("from"))
        found: Doc = rule
        return found

    def open_admin(policy: Doc) -> None:
        del admin_rule(policy)["from"]

    def either_selector(policy: Doc) -> None:  # two peers: any pod in monitoring, any prometheus
        admin_rule(policy)["from"][0:1] = [{key: value} for key, value in PROMETHEUS_PEER.items()]

    def every_port(policy: Doc) -> None:
        del admin_rule(policy)["ports"]

    def other_labels(policy: Doc) -> None:
        policy["spec"]["podSelector"]["matchLabels"] = {"app.kubernetes.io/name": "another"}

    def egress_only(policy: Doc) -> None:
        policy["spec"]["policyTypes"] = ["Egress"]

    for edit in (open_admin, either_selector, every_port, other_labels, egress_only):
        with pytest.raises(AssertionError):
            check_network_policy(edited(layout, "NetworkPolicy", edit))


# --- the component over an app of yours ----------------------------------------------------


def adopt(tmp_path: Path, deployment: Doc, patches: list[Doc] | None = None) -> Layout:
    """A kustomization in tmp_path: `deployment`, the sidecar component, and `patches`, which
    kustomize applies after the component. Rendered by support.kustomize's renderer, and compared
    with kubectl kustomize when kubectl is installed."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    kustomization: Doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["deployment.yaml"],
        "components": [os.path.relpath(COMPONENT, tmp_path)],
    }
    if patches:
        kustomization["patches"] = patches
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    layout = Layout("adopted", tmp_path, native=True, annotations_expected=False)
    for doc in layout.docs:
        validate_schema(doc, SCHEMA_VERSIONS[-1], "the adopted example")
    if find_kubectl() is not None:
        assert normalised(kubectl_kustomize(tmp_path)) == normalised(layout.docs)
    return layout


def app_deployment(**pod_spec: Any) -> Doc:
    """The example's Deployment (an app as you may have it), with these pod spec fields."""
    (deployment,) = load_documents(EXAMPLE / "deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    spec.pop("terminationGracePeriodSeconds", None)
    for key, value in pod_spec.items():
        if value is not None:
            spec[key] = value
    return deployment


def env_patch(name: str, value: str) -> Doc:
    """The patch deploy/README.md documents for one of the proxy's variables."""
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "example-app"},
             "spec": {"template": {"spec": {"initContainers": [
                 {"name": "drain-proxy", "env": [{"name": name, "value": value}]}]}}}}
    return {"target": {"kind": "Deployment", "name": "example-app"},
            "patch": yaml.safe_dump(patch)}


def test_the_component_sets_no_grace_period() -> None:
    (patch,) = load_documents(COMPONENT / "sidecar.yaml")
    assert "terminationGracePeriodSeconds" not in patch["spec"]["template"]["spec"]
    (proxy,) = patch["spec"]["template"]["spec"]["initContainers"]
    assert container_env(proxy)["DRAIN_PROXY_TERMINATION_GRACE_PERIOD"] == "30"
    (example,) = load_documents(EXAMPLE / "deployment.yaml")
    assert example["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize(("grace", "told"), [(60, True), (60, False), (None, False)],
                         ids=["60-told-to-the-proxy", "60", "unset"])
def test_the_component_keeps_the_deployments_grace_period(
        tmp_path: Path, grace: int | None, told: bool) -> None:
    patches = [env_patch("DRAIN_PROXY_TERMINATION_GRACE_PERIOD", str(grace))] if told else []
    adopted = adopt(tmp_path, app_deployment(terminationGracePeriodSeconds=grace), patches)
    assert adopted.pod.get("terminationGracePeriodSeconds") == grace  # not overwritten
    settings = adopted.settings
    if told or grace is None:  # unset: the Kubernetes default, 30, the component's value
        assert settings.termination_grace_period_s == grace_period(adopted.pod)
        assert settings.drain_budget_s <= grace_period(adopted.pod)
    else:  # what the README warns about: the proxy must be told
        assert settings.termination_grace_period_s == 30 != grace_period(adopted.pod)
    assert check_token_wiring(adopted) == PLACEHOLDER_TOKEN


POST_START = {"exec": {"command": ["/app", "--warm-up"]}}


def test_the_component_replaces_the_apps_lifecycle(tmp_path: Path) -> None:
    """As documented: the app's own hooks are gone, and a patch of yours brings them back."""
    deployment = app_deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {
        "postStart": POST_START}
    replaced = adopt(tmp_path / "replaced", deployment).app["lifecycle"]
    assert set(replaced) == {"preStop"}
    restore = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "example-app"},
               "spec": {"template": {"spec": {"containers": [
                   {"name": "app", "lifecycle": {"postStart": POST_START}}]}}}}
    restored = adopt(tmp_path / "restored", deployment, [
        {"target": {"kind": "Deployment", "name": "example-app"},
         "patch": yaml.safe_dump(restore)}]).app["lifecycle"]
    assert restored == {"postStart": POST_START, "preStop": replaced["preStop"]}
