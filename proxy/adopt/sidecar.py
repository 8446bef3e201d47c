"""The sidecar as ``drain-proxy inject`` writes it: one place for every name, port and value.

These are the values of ``deploy/kubernetes/components/drain-proxy-sidecar/`` (a test holds
the two equal): the same ports and port names, probes, environment, resources, security
context and token mount, so a pod wired by ``inject`` and one patched by the component are
the same pod.
"""

from __future__ import annotations

from typing import Any

from proxy.flags import FLAGS

CONTAINER_NAME = "drain-proxy"
DEFAULT_IMAGE = "registry.example.invalid/drain-proxy:0.1.0"
PROXY_PORT = 8000
ADMIN_PORT = 9901
# Names an app's own ports are unlikely to use: a name twice in a pod makes probes and
# Services pick one of the two silently.
PROXY_PORT_NAME = "proxy-http"
ADMIN_PORT_NAME = "proxy-admin"
TOKEN_SECRET = "drain-proxy-drain-token"
TOKEN_KEY = "token"
TOKEN_VOLUME = "drain-proxy-token"
TOKEN_DIR = "/etc/drain-proxy"
TOKEN_FILE = f"{TOKEN_DIR}/{TOKEN_KEY}"
TOKEN_MODE = 0o444  # the Secret's files belong to root; the proxy runs as 65532
NON_ROOT_UID = 65532
POD_LABEL = ("drain-proxy/sidecar", "true")  # what the PodMonitor and NetworkPolicy select
DRAIN_PATH = "/drain"
# What a pod gets when it sets no terminationGracePeriodSeconds.
KUBERNETES_DEFAULT_GRACE_S = 30
# The margin the proxy itself adds to window + drain timeout (Settings.drain_budget_s).
GRACE_MARGIN_S = 2


def env_var(flag_name: str) -> str:
    """The variable of a proxy flag, from the flag table, so a renamed flag fails here."""
    (flag,) = (flag for flag in FLAGS if flag.name == flag_name)
    return flag.env_var


UPSTREAM_ENV = env_var("--upstream")
GRACE_ENV = env_var("--termination-grace-period")
MODE_ENV = env_var("--mode")
TOKEN_FILE_ENV = env_var("--drain-token-file")

# The settings every injected proxy starts with; the upstream and grace period are the pod's.
BASE_ENV: tuple[tuple[str, str], ...] = (
    (env_var("--listen"), f"0.0.0.0:{PROXY_PORT}"),
    (env_var("--admin"), f"0.0.0.0:{ADMIN_PORT}"),
    (UPSTREAM_ENV, "127.0.0.1:8080"),
    (env_var("--propagation-window"), "10"),
    (env_var("--drain-timeout"), "15"),
    (GRACE_ENV, str(KUBERNETES_DEFAULT_GRACE_S)),
    (env_var("--log-format"), "json"),
    (TOKEN_FILE_ENV, TOKEN_FILE),
)


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": ADMIN_PORT_NAME}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}


def container(image: str, native: bool, upstream_port: int, grace_s: int,
              mode: str | None = None) -> dict[str, Any]:
    """The proxy container: an ``initContainers`` entry with ``restartPolicy: Always`` when
    ``native``, else a second entry of ``containers``."""
    env = dict(BASE_ENV)
    env[UPSTREAM_ENV] = f"127.0.0.1:{upstream_port}"
    env[GRACE_ENV] = str(grace_s)
    if mode is not None and mode != "http":
        env[MODE_ENV] = mode
    spec: dict[str, Any] = {"name": CONTAINER_NAME, "image": image}
    if native:
        spec["restartPolicy"] = "Always"
    spec |= {
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "ports": [
            {"name": PROXY_PORT_NAME, "containerPort": PROXY_PORT, "protocol": "TCP"},
            {"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _probe("/readyz", 5, 2),
        "livenessProbe": _probe("/livez", 10, 3),
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                      "limits": {"cpu": "500m", "memory": "128Mi"}},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [volume_mount()],
    }
    return spec


def volume_mount() -> dict[str, Any]:
    return {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}


def volume() -> dict[str, Any]:
    """The token Secret as a volume, for the proxy container only."""
    return {"name": TOKEN_VOLUME, "secret": {
        "secretName": TOKEN_SECRET, "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
        "defaultMode": TOKEN_MODE}}


def pre_stop(token: str) -> dict[str, Any]:
    """The app's ``preStop``: ``/drain`` answers when the drain is over, so kubelet holds the
    app's SIGTERM until then.  The port is a number: a hook resolves port names only among
    its own container's ports, and the admin port is the proxy's."""
    return {"httpGet": {"path": DRAIN_PATH, "port": ADMIN_PORT, "httpHeaders": [
        {"name": "Authorization", "value": f"Bearer {token}"}]}}


def secret(token: str, namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": TOKEN_SECRET}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "stringData": {TOKEN_KEY: token}}
