"""deploy/kubernetes/webhook/: the injection webhook's objects fit together.

kubernetes-validate checks the built-in kinds (tests/test_deploy_schema.py) and kubectl
renders both kustomizations (tests/test_deploy_render.py). cert-manager's Issuer and
Certificate are custom resources that it has no schema for: what is checked of them here is
what the rest depends on (the Secret's name, the DNS names, the issuers and the CA chain),
not every field cert-manager would accept or refuse."""

from __future__ import annotations

from functools import cache

from proxy.adopt.webhook import MUTATE_PATHS, parse_args

from support.deploy import KUBERNETES, labels_match, resolve_port
from support.kustomize import Doc, render

WEBHOOK = KUBERNETES / "webhook"
INJECT_CA = "cert-manager.io/inject-ca-from"


@cache
def rendered(layout: str) -> tuple[Doc, ...]:
    return tuple(render(WEBHOOK / layout))


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = [doc for doc in docs
             if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_two_replicas_a_budget_and_a_rollout_that_keeps_one_serving() -> None:
    docs = rendered("base")
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = one(docs, "PodDisruptionBudget")
    assert labels_match(budget["spec"]["selector"]["matchLabels"], labels)
    assert budget["spec"]["maxUnavailable"] < spec["replicas"]
    service = one(docs, "Service")
    assert labels_match(service["spec"]["selector"], labels)
    (container,) = spec["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    args = parse_args(container["args"][1:])
    assert container["args"][0] == "webhook"
    assert resolve_port(container, port["targetPort"]) == args.listen[1]
    # Readiness fails from SIGTERM on, while the webhook answers through its shutdown delay.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["scheme"]) == (path, "HTTPS")
        assert resolve_port(container, get["port"]) == args.listen[1]


def test_the_certificate_files_are_the_mounted_secret_of_the_certificate() -> None:
    docs = rendered("cert-manager")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parse_args(container["args"][1:])
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert not [m for m in mounts.values() if "subPath" in m], \
        "a subPath mount never sees a renewed Secret"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"]}
    serving = one(docs, "Certificate", "sidecar-injector")
    (tls,) = [name for name, secret in secrets.items() if secret == serving["spec"]["secretName"]]
    assert str(args.tls_cert) == f"{mounts[tls]['mountPath']}/tls.crt"
    assert str(args.tls_key) == f"{mounts[tls]['mountPath']}/tls.key"
    # The drain token it writes into injected pods: the Secret the injected proxies read.
    (token,) = [name for name, secret in secrets.items() if secret == "drain-proxy-drain-token"]
    assert str(args.drain_token_file) == f"{mounts[token]['mountPath']}/token"
    one(docs, "Secret", "drain-proxy-drain-token")
    service = one(docs, "Service")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert f"{name}.{namespace}.svc" in serving["spec"]["dnsNames"]


def test_the_serving_certificate_is_signed_by_a_ca_the_webhook_configuration_trusts() -> None:
    docs = rendered("cert-manager")
    serving = one(docs, "Certificate", "sidecar-injector")
    configuration = one(docs, "MutatingWebhookConfiguration")
    meta = serving["metadata"]
    assert configuration["metadata"]["annotations"][INJECT_CA] == (
        f"{meta['namespace']}/{meta['name']}")
    issuer = one(docs, "Issuer", serving["spec"]["issuerRef"]["name"])
    assert serving["spec"]["issuerRef"]["kind"] == "Issuer"
    assert issuer["metadata"]["namespace"] == meta["namespace"]
    ca = [doc for doc in docs if doc["kind"] == "Certificate"
          and doc["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]]
    assert len(ca) == 1 and ca[0]["spec"]["isCA"] is True
    assert "selfSigned" in one(docs, "Issuer", ca[0]["spec"]["issuerRef"]["name"])["spec"]
    assert serving["spec"]["privateKey"]["rotationPolicy"] == "Always"


def test_the_manual_path_leaves_the_ca_bundle_to_whoever_makes_the_certificate() -> None:
    configuration = one(rendered("base"), "MutatingWebhookConfiguration")
    assert INJECT_CA not in configuration["metadata"].get("annotations", {})
    assert all("caBundle" not in hook["clientConfig"] for hook in configuration["webhooks"])
    assert not [doc for doc in rendered("base") if doc["kind"] in ("Certificate", "Issuer")]


def test_the_webhook_never_blocks_a_pod_and_never_sees_its_own() -> None:
    docs = rendered("cert-manager")
    service = one(docs, "Service")
    namespace = one(docs, "Namespace")["metadata"]["name"]
    hooks = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert sorted(hook["clientConfig"]["service"]["path"] for hook in hooks) == sorted(
        MUTATE_PATHS)
    for hook in hooks:
        assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        target = hook["clientConfig"]["service"]
        assert (target["name"], target["namespace"]) == (service["metadata"]["name"],
                                                         namespace)
        assert target["port"] == service["spec"]["ports"][0]["port"]
        (rule,) = hook["rules"]
        assert (rule["operations"], rule["apiGroups"], rule["resources"]) == (
            ["CREATE"], [""], ["pods"])
        excluded = [e for e in hook["namespaceSelector"]["matchExpressions"]
                    if e["key"] == "kubernetes.io/metadata.name"]
        assert excluded[0]["operator"] == "NotIn"
        assert {namespace, "kube-system"} <= set(excluded[0]["values"])
    by_path = {hook["clientConfig"]["service"]["path"]: hook for hook in hooks}
    labelled = by_path["/mutate/namespace"]["namespaceSelector"]["matchLabels"]
    assert labelled == {"drain-proxy/inject": "enabled"}
    assert {"key": "drain-proxy/inject", "operator": "NotIn", "values": ["enabled"]} in (
        by_path["/mutate"]["namespaceSelector"]["matchExpressions"])
