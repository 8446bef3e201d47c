"""The checks of ``drain-proxy check``: small functions, each under a stable id.

Each rule looks at the whole inventory and says what it finds as (severity, object, message,
fix); ``run`` attaches the rule's id, so an id is written once, here, in ``RULES``.  The
table in deploy/README.md ("Check your manifests") documents every id, and a test keeps the
two in step.

Severities: ``error`` where a rollout can lose requests or never finish (exit code 1),
``warning`` where it can go wrong under conditions the manifests do not show, ``info`` for
what a manifest cannot tell.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from proxy.adopt.cluster import Inventory
from proxy.adopt.findings import ERROR, INFO, WARNING, Finding
from proxy.adopt.pods import Obj, Ref, Sidecar, Workload, items, mapping, ref, runs_webhook
from proxy.adopt.routes import Route, routes
from proxy.settings import PLACEHOLDER_TOKEN_PREFIX, SettingsError, refuse_placeholders

# The proxy's worst case: every connection a slow reader (deploy/README.md, "Memory").
MEMORY_BASE_BYTES = 32 * 1024 * 1024
MEMORY_PER_CONNECTION_BYTES = 64 * 1024
NATIVE_SIDECARS_SINCE = (1, 29)
NAMED_SIDECAR_PORTS_SINCE = (1, 32)
INJECT = "run `drain-proxy inject` on the manifest"


@dataclass(frozen=True)
class Options:
    """What the manifests cannot say: the cluster they are for."""

    kubernetes_version: tuple[int, int] | None = None


Said = tuple[str, Ref, str, str]  # severity, object, message, fix
Rule = Callable[[Inventory, Options], Iterator[Said]]


def _with_sidecar(inventory: Inventory) -> Iterator[tuple[Workload, Sidecar]]:
    for target in inventory.workloads:
        if target.sidecar is not None:
            yield target, target.sidecar


def _version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _seconds(value: float) -> str:
    return f"{value:g} s"


# --- Where traffic goes -------------------------------------------------------------------


def _proxied_routes(inventory: Inventory) -> Iterator[tuple[Route, Sidecar]]:
    for route in routes(inventory):
        if route.workload.sidecar is not None:
            yield route, route.workload.sidecar


def bypass(inventory: Inventory, options: Options) -> Iterator[Said]:
    """A Service port that reaches the app, not the proxy, in a pod that has the proxy."""
    for route, sidecar in _proxied_routes(inventory):
        listen, admin = sidecar.settings.listen.port, sidecar.settings.admin.port
        if route.number is None or route.number in (listen, admin):
            continue
        owner = f"container {route.container.get('name')!r}" if route.container else "the pod"
        yield (ERROR, ref(route.service),
               f"port {route.label} goes to {owner} on {route.number}, not to drain-proxy "
               f"(it listens on {listen}) in the pods of {route.workload.ref.kind} "
               f"{route.workload.ref.name}: rollouts drop this traffic",
               f"set targetPort: {listen} (the proxy's port)")


def numeric_target_port(inventory: Inventory, options: Options) -> Iterator[Said]:
    """A numeric targetPort to a name-less port beside the proxy: a webhook cannot take it
    over (it renames pod ports; it cannot change the Service)."""
    for route, sidecar in _proxied_routes(inventory):
        if route.by_name or route.number in (None, sidecar.settings.listen.port):
            continue
        if route.declared is not None and route.declared.get("name"):
            continue
        yield (INFO, ref(route.service),
               f"port {route.label} names the pod port by number ({route.number}), which no "
               f"named port stands for: a webhook can take over only named ports, so only "
               f"`drain-proxy inject` can route it through the proxy",
               f"{INJECT}, or set targetPort: {sidecar.settings.listen.port}")


def admin_exposed(inventory: Inventory, options: Options) -> Iterator[Said]:
    for route, sidecar in _proxied_routes(inventory):
        if route.number == sidecar.settings.admin.port:
            yield (WARNING, ref(route.service),
                   f"port {route.label} exposes drain-proxy's admin port {route.number} "
                   f"(/drain, /metrics) to whoever reaches the Service",
                   "route the Service to the proxy's traffic port; scrape metrics with a "
                   "PodMonitor (deploy/prometheus/) instead")


def named_port_native(inventory: Inventory, options: Options) -> Iterator[Said]:
    version = options.kubernetes_version
    if version is not None and version >= NAMED_SIDECAR_PORTS_SINCE:
        return
    for route, sidecar in _proxied_routes(inventory):
        if route.by_name and sidecar.native and route.container is sidecar.container:
            yield (WARNING if version else INFO, ref(route.service),
                   f"port {route.label} names a port of a native sidecar "
                   f"({route.port.get('targetPort')!r}), which Services resolve only from "
                   f"Kubernetes 1.32 on" + (f" (the cluster is {_version(version)})"
                                             if version else "") + ": no endpoints before",
                   f"set targetPort: {route.number} (a number)")


def no_drain(inventory: Inventory, options: Options) -> Iterator[Said]:
    """A workload behind a Service with nothing to drain it: each rollout refuses connections
    that were still being routed to the pods it stops."""
    for target in inventory.workloads:
        if target.sidecar is not None or not inventory.services_of(target):
            continue
        if any(mapping(mapping(c.get("lifecycle")).get("preStop")) or runs_webhook(c)
               for c in target.apps):
            continue
        yield (ERROR, target.ref,
               "behind a Service, with no drain-proxy sidecar and no preStop hook: its pods "
               "stop at once on SIGTERM, while the endpoints still route to them",
               INJECT)


# --- The timeline -------------------------------------------------------------------------


def grace_too_short(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        settings, grace = sidecar.settings, target.grace_period_s
        if settings.drain_budget_s > grace:
            yield (ERROR, target.ref,
                   f"terminationGracePeriodSeconds {grace:g} < window "
                   f"{_seconds(settings.propagation_window_s)} + drain timeout "
                   f"{_seconds(max(settings.drain_timeout_s, settings.tunnel_drain_timeout_s))}"
                   f" + 2 s margin = {_seconds(settings.drain_budget_s)}: SIGKILL cuts the drain",
                   f"set terminationGracePeriodSeconds to at least {settings.drain_budget_s:g}, "
                   f"or shorten the window or the drain timeout")


def grace_not_told(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        told, grace = sidecar.settings.termination_grace_period_s, target.grace_period_s
        if told == grace:
            continue
        # Told less, the proxy undoes a /drain it thinks no SIGTERM followed, in a pod that is
        # still terminating; told more, only its start-up warning is off.
        yield (ERROR if told < grace else WARNING, target.ref,
               f"the pod's grace period is {grace:g} s but the proxy is told {told:g} s"
               + (": it can undo the drain of a pod that is still terminating"
                  if told < grace else ""),
               f"set DRAIN_PROXY_TERMINATION_GRACE_PERIOD={grace:g} on the proxy")


def _hook_seconds(hook: Obj) -> float | None:
    """How long a preStop hook sleeps: ``sleep: {seconds}`` or an exec ``sleep N``."""
    seconds = mapping(hook.get("sleep")).get("seconds")
    if isinstance(seconds, int | float):
        return float(seconds)
    command = " ".join(str(word) for word in mapping(hook.get("exec")).get("command") or [])
    found = re.search(r"(?:^|[\s;&|(/])sleep\s+(\d+(?:\.\d+)?)", command)
    return float(found.group(1)) if found else None


def prestop_sleep_too_long(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target in inventory.workloads:
        grace = target.grace_period_s
        for container in items(target.pod.get("containers")):
            seconds = _hook_seconds(mapping(mapping(container.get("lifecycle")).get("preStop")))
            if seconds is not None and seconds >= grace:
                yield (ERROR, target.ref,
                       f"container {container.get('name')!r} sleeps {seconds:g} s in preStop, "
                       f"not less than the grace period {grace:g} s: it is killed before it "
                       f"gets SIGTERM",
                       "sleep less than terminationGracePeriodSeconds, leaving time to exit")


# --- The pod's own wiring -----------------------------------------------------------------


def _app(target: Workload, sidecar: Sidecar) -> Obj | None:
    """The container the proxy forwards to: the one declaring the upstream port, else the
    first main container."""
    upstream = sidecar.settings.upstream.port
    for container in target.apps:
        if any(p.get("containerPort") == upstream for p in items(container.get("ports"))):
            return container
    return target.apps[0] if target.apps else None


def no_app_prestop(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        app = _app(target, sidecar)
        if app is not None and not mapping(mapping(app.get("lifecycle")).get("preStop")):
            yield (ERROR, target.ref,
                   f"the app container {app.get('name')!r} has no preStop hook: it gets "
                   f"SIGTERM while the proxy still forwards requests to it",
                   f"add lifecycle.preStop.httpGet {{path: /drain, port: "
                   f"{sidecar.settings.admin.port}}} to it, with the drain token header")


def _hook_problem(app: Obj, hook: Obj, sidecar: Sidecar) -> str | None:
    """What is wrong with the app's preStop hook as the drain's trigger, if anything."""
    get = mapping(hook.get("httpGet"))
    if not get:
        return None  # an exec or sleep hook: whether it waits for the drain is not visible
    admin = sidecar.settings.admin.port
    port = get.get("port")
    if isinstance(port, str) and not port.isdigit():
        own = [p.get("containerPort") for p in items(app.get("ports")) if p.get("name") == port]
        if not own:
            return (f"its port {port!r} is a name, which a hook resolves only among its own "
                    f"container's ports")
        port = own[0]
    if str(port) != str(admin) or get.get("path") != "/drain":
        return f"it calls {get.get('path')} on port {port}, not /drain on {admin}"
    headers = {str(h.get("name", "")).lower() for h in items(get.get("httpHeaders"))}
    if (sidecar.settings.drain_token or sidecar.token_file) and "authorization" not in headers:
        return "it sends no Authorization header, and the proxy wants a drain token: 401"
    return None


def app_prestop_wrong(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        app = _app(target, sidecar)
        hook = mapping(mapping(app.get("lifecycle")).get("preStop")) if app else {}
        problem = _hook_problem(app, hook, sidecar) if app is not None and hook else None
        if problem is not None and app is not None:
            yield (ERROR, target.ref,
                   f"the preStop hook of {app.get('name')!r} does not wait for the drain: "
                   f"{problem}",
                   f"httpGet {{path: /drain, port: {sidecar.settings.admin.port}}} (a number), "
                   f"header Authorization: Bearer <the drain token>")


def native_too_old(inventory: Inventory, options: Options) -> Iterator[Said]:
    version = options.kubernetes_version
    if version is None or version >= NATIVE_SIDECARS_SINCE:
        return
    for target, sidecar in _with_sidecar(inventory):
        if sidecar.native:
            yield (ERROR, target.ref,
                   f"drain-proxy is a native sidecar (restartPolicy: Always in "
                   f"initContainers), which Kubernetes {_version(version)} does not run as "
                   f"one (1.29 on; 1.28 with the SidecarContainers feature gate)",
                   "use the classic layout: the proxy in containers "
                   "(deploy/kubernetes/overlays/classic-sidecar)")


def init_not_sidecar(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        if sidecar.in_init and not sidecar.native:
            yield (ERROR, target.ref,
                   "drain-proxy is an init container without restartPolicy: Always: it never "
                   "exits, so the app never starts",
                   "add restartPolicy: Always to it (a native sidecar), or move it to containers")


def _probe_port(container: Obj, port: object) -> object:
    if isinstance(port, str) and not port.isdigit():
        named = [p.get("containerPort") for p in items(container.get("ports"))
                 if p.get("name") == port]
        return named[0] if named else None
    return port


def readiness_not_proxy(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        get = mapping(mapping(sidecar.container.get("readinessProbe")).get("httpGet"))
        admin = sidecar.settings.admin.port
        port = _probe_port(sidecar.container, get.get("port"))
        if get.get("path") == "/readyz" and str(port) == str(admin):
            continue
        yield (WARNING, target.ref,
               "the pod's readiness does not come from drain-proxy's /readyz: the pod can "
               "receive traffic before the proxy and the app are both up, and keeps it while "
               "the proxy drains",
               f"give the drain-proxy container readinessProbe.httpGet {{path: /readyz, port: "
               f"{admin}}}")


_MEMORY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10,
                 "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bytes(quantity: object) -> float | None:
    found = re.fullmatch(r"(\d+(?:\.\d+)?(?:[eE]\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    return float(found.group(1)) * _MEMORY_UNITS[found.group(2) or ""] if found else None


def memory_too_low(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        limit = _bytes(mapping(mapping(sidecar.container.get("resources")).get("limits")).get(
            "memory"))
        connections = sidecar.settings.max_connections
        need = MEMORY_BASE_BYTES + connections * MEMORY_PER_CONNECTION_BYTES
        if limit is not None and limit < need:
            mib = need / 2**20
            yield (WARNING, target.ref,
                   f"drain-proxy's memory limit {limit / 2**20:g} MiB is below 32 MiB + "
                   f"{connections} connections x 64 KiB = {mib:g} MiB: slow clients at "
                   f"--max-connections can get it OOM-killed",
                   f"raise limits.memory to {math.ceil(mib)}Mi or more, or lower "
                   f"DRAIN_PROXY_MAX_CONNECTIONS")


def no_pdb(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target in inventory.workloads:
        if (target.replicas or 0) > 1 and not inventory.has_budget(target):
            yield (WARNING, target.ref,
                   f"{target.replicas} replicas and no PodDisruptionBudget: a node drain may "
                   f"evict them all at once",
                   "add a PodDisruptionBudget (maxUnavailable: 1) selecting its pods")


# --- The proxy's settings and the drain token ---------------------------------------------


def proxy_settings(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        if sidecar.refused is not None:
            yield (ERROR, target.ref,
                   f"drain-proxy would refuse to start: {sidecar.refused} (the other checks "
                   f"assume its defaults)",
                   "correct the flag or variable it names")


def settings_unknown(inventory: Inventory, options: Options) -> Iterator[Said]:
    for target, sidecar in _with_sidecar(inventory):
        if sidecar.unknown:
            yield (INFO, target.ref,
                   f"drain-proxy's settings are not all in the manifest ("
                   f"{', '.join(sidecar.unknown)}): the other checks assume its defaults "
                   f"for those",
                   "write the values as literal env values or args to have them checked")


def _is_placeholder(value: str) -> bool:
    return value.strip().upper().removeprefix("BEARER ").strip().startswith(
        PLACEHOLDER_TOKEN_PREFIX)


def _secret_values(secret: Obj) -> Iterator[str]:
    yield from (str(v) for v in mapping(secret.get("stringData")).values())
    for value in mapping(secret.get("data")).values():
        try:
            yield base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue


def _header_values(target: Workload) -> Iterator[str]:
    for container in items(target.pod.get("containers")):
        hook = mapping(mapping(container.get("lifecycle")).get("preStop"))
        for header in items(mapping(hook.get("httpGet")).get("httpHeaders")):
            yield str(header.get("value", ""))


def token_placeholder(inventory: Inventory, options: Options) -> Iterator[Said]:
    """The token deploy/ ships: the proxy refuses it (the rollout stops at its first new pod,
    losing nothing), and everyone with this repository knows it."""
    fix = ("generate a token with `openssl rand -hex 32`; put it in the Secret and in the "
           "app's preStop header")
    for secret in inventory.secrets:
        if any(_is_placeholder(value) for value in _secret_values(secret)):
            yield (WARNING, ref(secret), "holds the placeholder drain token of deploy/", fix)
    for target in inventory.workloads:
        where = ["a preStop header"] if any(map(_is_placeholder, _header_values(target))) else []
        if target.sidecar is not None:
            try:
                refuse_placeholders(target.sidecar.settings)
            except SettingsError:
                where.append("drain-proxy's --drain-token")
        if where:
            yield (WARNING, target.ref,
                   f"the placeholder drain token of deploy/ is in {' and in '.join(where)}",
                   fix)


RULES: dict[str, Rule] = {
    "bypass": bypass,
    "numeric-target-port": numeric_target_port,
    "admin-exposed": admin_exposed,
    "named-port-native": named_port_native,
    "no-drain": no_drain,
    "grace-too-short": grace_too_short,
    "grace-not-told": grace_not_told,
    "prestop-sleep-too-long": prestop_sleep_too_long,
    "no-app-prestop": no_app_prestop,
    "app-prestop-wrong": app_prestop_wrong,
    "native-too-old": native_too_old,
    "init-not-sidecar": init_not_sidecar,
    "readiness-not-proxy": readiness_not_proxy,
    "memory-too-low": memory_too_low,
    "no-pdb": no_pdb,
    "proxy-settings": proxy_settings,
    "settings-unknown": settings_unknown,
    "token-placeholder": token_placeholder,
}


def run(inventory: Inventory, options: Options) -> list[Finding]:
    """Every rule's findings, each with the rule's id."""
    return [Finding(severity, rule_id, where.kind, where.name, where.namespace, message, fix)
            for rule_id, rule in RULES.items()
            for severity, where, message, fix in rule(inventory, options)]
