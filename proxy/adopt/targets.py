"""Which pods of a manifest get the proxy, in front of which container and port.

A workload is wired when a Service of the input selects its pods, or when it carries the
annotation ``drain-proxy/inject: enabled``; never when it carries ``disabled``.  The app
port is the container port the Service targeted; without a Service, the app container's
only port.  What cannot be decided (two ports, two containers, a port that does not look
like HTTP) is a problem naming the option that settles it, never a guess: a wrong guess is
a pod that loses requests, or a Service that bypasses the proxy, without a word.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.adopt import sidecar
from proxy.adopt.manifests import block
from proxy.adopt.wiring import App, WiringError, calls_drain, find_proxy, proxy_settings
from proxy.settings import Settings

Node = MutableMapping[str, Any]

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod"})
ANNOTATION = "drain-proxy/inject"  # "enabled": wire it; "disabled": never
# Service appProtocol values the proxy's http mode serves (h2c and gRPC are HTTP/2 cleartext).
HTTP_PROTOCOLS = frozenset({"http", "h2c", "kubernetes.io/h2c", "grpc", "http2", "ws",
                            "kubernetes.io/ws"})
# Port name prefixes (Istio's ``<protocol>[-<suffix>]`` convention, and common servers) of
# protocols that are not cleartext HTTP.
NON_HTTP_NAMES = frozenset({
    "tcp", "tls", "https", "udp", "sctp", "redis", "postgres", "postgresql", "pg", "mysql",
    "mariadb", "mongo", "mongodb", "amqp", "amqps", "kafka", "memcache", "memcached", "nats",
    "mqtt", "zookeeper", "zk", "cassandra", "cql", "ldap", "smtp", "ftp", "ssh", "dns",
})


@dataclass(frozen=True)
class Choices:
    """What the user settled on the command line (None: decide from the input)."""

    app_container: str | None = None
    app_port: str | None = None  # a number or a port name
    mode: str | None = None


@dataclass
class Target:
    """A workload to wire: its pod, the app chosen, and the Service ports to retarget."""

    workload: Node
    metadata: Node
    spec: Node
    app: App
    mode: str | None
    service_ports: list[Node] = field(default_factory=list)
    # Headless Services: their clients connect to a pod's address at a port of their own
    # choosing, which no targetPort changes.
    headless: list[Node] = field(default_factory=list)


def name_of(obj: Node) -> str:
    metadata = obj.get("metadata") or {}
    where = f" (namespace {metadata['namespace']})" if metadata.get("namespace") else ""
    return f"{obj.get('kind')}/{metadata.get('name', '?')}{where}"


def pod_of(obj: Node) -> tuple[Node, Node] | None:
    """The pod metadata and spec of a workload; None for anything else."""
    if obj.get("kind") not in WORKLOAD_KINDS:
        return None
    holder = obj if obj["kind"] == "Pod" else (obj.get("spec") or {}).get("template")
    if not isinstance(holder, MutableMapping):
        return None
    block(obj.get("spec"))  # the pod spec inside is written in block style: not inside flow
    block(holder)
    spec = holder.get("spec")
    if not isinstance(spec, MutableMapping):
        return None
    if holder.get("metadata") is None:
        holder["metadata"] = {}
    metadata: Node = holder["metadata"]
    return metadata, spec


def _namespace(obj: Node) -> str | None:
    namespace = (obj.get("metadata") or {}).get("namespace")
    return None if namespace is None else str(namespace)


def _selects(service: Node, workload: Node, pod_metadata: Node) -> bool:
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector or spec.get("type") == "ExternalName":
        return False
    if _namespace(service) != _namespace(workload):
        return False
    labels = pod_metadata.get("labels") or {}
    return all(str(labels.get(key)) == str(value) for key, value in selector.items())


def _annotated(workload: Node, pod_metadata: Node, value: str) -> bool:
    return any(str((holder.get("annotations") or {}).get(ANNOTATION, "")).lower() == value
               for holder in (workload.get("metadata") or {}, pod_metadata))


@dataclass(frozen=True)
class _Port:
    container: str
    number: int
    name: str | None
    is_proxy: bool


def _ports(spec: Node) -> list[_Port]:
    """Every declared port of the pod's containers, the proxy's among them (marked)."""
    found = []
    proxy = find_proxy(spec)
    proxy_node = proxy[0] if proxy is not None else None
    containers = [*(spec.get("containers") or []), *([proxy_node] if proxy_node else [])]
    for container in containers:
        for port in container.get("ports") or []:
            if isinstance(port.get("containerPort"), int):
                found.append(_Port(str(container.get("name")), port["containerPort"],
                                   port.get("name"), container is proxy_node))
    return found


def _resolve(target: Any, ports: list[_Port], spec: Node) -> _Port | None:
    """The container port a Service's targetPort names (a number or a port name)."""
    if isinstance(target, str) and not target.isdigit():
        named = [port for port in ports if port.name == target]
        return named[0] if named else None
    if not isinstance(target, (int, str)):
        return None  # no port at all: the API server would refuse the Service
    number = int(target)
    declared = [port for port in ports if port.number == number]
    if declared:
        return declared[0]
    if number == sidecar.PROXY_PORT and find_proxy(spec) is not None:
        return _Port(sidecar.CONTAINER_NAME, number, None, True)
    apps = [str(c.get("name")) for c in spec.get("containers") or []
            if c.get("name") != sidecar.CONTAINER_NAME]
    # Kubernetes needs no declared port for a numeric targetPort: it is the only app's.
    return _Port(apps[0], number, None, False) if len(apps) == 1 else None


def looks_non_http(service_port: Node | None, port_name: str | None) -> str | None:
    """Why a port does not look like cleartext HTTP, or None."""
    if service_port is not None:
        protocol = str(service_port.get("protocol") or "TCP")
        if protocol != "TCP":
            return f"protocol {protocol}"
        app_protocol = service_port.get("appProtocol")
        if app_protocol is not None and str(app_protocol).lower() not in HTTP_PROTOCOLS:
            return f"appProtocol {app_protocol}"
    for name in (port_name, (service_port or {}).get("name")):
        if name and str(name).split("-")[0].lower() in NON_HTTP_NAMES:
            return f"port name {name}"
    return None


def find_targets(objects: Sequence[Node], choices: Choices
                 ) -> tuple[list[Target], list[tuple[Node, str]]]:
    """The workloads to wire, and the problems that stop the run: each a workload and what
    cannot be decided about it."""
    services = [obj for obj in objects if obj.get("kind") == "Service"]
    targets: list[Target] = []
    problems: list[tuple[Node, str]] = []
    for workload in objects:
        pod = pod_of(workload)
        if pod is None:
            continue
        metadata, spec = pod
        selecting = [service for service in services if _selects(service, workload, metadata)]
        if _annotated(workload, metadata, "disabled") or \
                (not selecting and not _annotated(workload, metadata, "enabled")):
            continue
        try:
            target = _choose(workload, metadata, spec, selecting, choices)
        except WiringError as error:
            problems.append((workload, str(error)))
            continue
        target.headless = [service for service in selecting
                           if (service.get("spec") or {}).get("clusterIP") == "None"]
        targets.append(target)
    return targets, problems + _shared_services(objects, services, targets)


def _shared_services(objects: Sequence[Node], services: list[Node],
                     targets: list[Target]) -> list[tuple[Node, str]]:
    """Services that would be retargeted to the proxy's port while they also select pods
    that get no proxy (a Job's, a workload annotated disabled): those would be cut off."""
    wired = {id(target.workload) for target in targets}
    problems: list[tuple[Node, str]] = []
    for service in services:
        selected = [workload for workload in objects
                    if (metadata := _pod_metadata(workload)) is not None
                    and _selects(service, workload, metadata)]
        if not any(id(workload) in wired for workload in selected):
            continue
        for workload in selected:
            if id(workload) not in wired:
                problems.append((service, f"it also selects {name_of(workload)}, which gets no "
                                          f"proxy: pointed at the proxy's port, it would cut "
                                          f"those pods off; narrow its selector"))
    return problems


def _pod_metadata(obj: Node) -> Node | None:
    """The metadata of the pods an object makes, Jobs' and CronJobs' included; None for
    objects that make none."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return obj.get("metadata") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in WORKLOAD_KINDS and kind != "Job":
        return None
    template = spec.get("template") if isinstance(spec, MutableMapping) else None
    return (template.get("metadata") or {}) if isinstance(template, MutableMapping) else None


def _service_ports(services: list[Node]) -> Iterator[Node]:
    for service in services:
        yield from (service.get("spec") or {}).get("ports") or []


def _choose(workload: Node, metadata: Node, spec: Node, services: list[Node],
            choices: Choices) -> Target:
    ports = _ports(spec)
    apps = [str(c.get("name")) for c in spec.get("containers") or []
            if c.get("name") != sidecar.CONTAINER_NAME]
    proxy = find_proxy(spec)
    settings = proxy_settings(proxy[0]) if proxy else None
    # Service ports that reach an app container: the ones to retarget.
    to_app: list[tuple[Node, _Port]] = []
    for service_port in _service_ports(services):
        resolved = _resolve(service_port.get("targetPort", service_port.get("port")), ports,
                            spec)
        if resolved is not None and not resolved.is_proxy:
            to_app.append((service_port, resolved))
    container = choices.app_container
    if container is None:
        from_services = sorted({port.container for _, port in to_app})
        wired = _wired_app(spec, settings)
        if len(from_services) == 1:
            container = from_services[0]
        elif wired is not None:
            container = wired
        elif len(apps) == 1:
            container = apps[0]
        else:
            raise WiringError(f"{len(apps)} app containers ({', '.join(apps)}): choose one "
                              f"with --app-container")
    elif container not in apps:
        raise WiringError(f"no container {container!r} (it has {', '.join(apps)}); "
                          f"choose one with --app-container")
    own = [port for port in ports if port.container == container and not port.is_proxy]
    candidates = [(sp, port) for sp, port in to_app if port.container == container]
    number = _choose_port(container, own, candidates, choices.app_port,
                          settings.upstream.port if settings and
                          settings.upstream.unix_path is None else None)
    if number == sidecar.PROXY_PORT or number == sidecar.ADMIN_PORT:
        raise WiringError(f"container {container!r} listens on {number}, a port of the proxy; "
                          f"move the app to another port")
    chosen = [sp for sp, port in candidates if port.number == number]
    mode = choices.mode or _existing_mode(proxy[0] if proxy else None)
    if mode is None:
        names = [port.name for port in own if port.number == number] or [None]
        service_ports: list[Node | None] = [*chosen] or [None]
        for reason in {looks_non_http(sp, names[0]) for sp in service_ports}:
            if reason is not None:
                raise WiringError(f"port {number} ({reason}) does not look like HTTP: "
                                  f"choose --mode tcp (or --mode http if it is)")
    return Target(workload, metadata, spec, App(container, number), mode, chosen)


def _choose_port(container: str, own: list[_Port], candidates: list[tuple[Node, _Port]],
                 chosen: str | None, upstream: int | None) -> int:
    if chosen is not None:
        if chosen.isdigit():
            return int(chosen)
        named = [port.number for port in own if port.name == chosen]
        if not named:
            raise WiringError(f"container {container!r} has no port named {chosen!r}; "
                              f"choose one with --app-port")
        return named[0]
    targeted = sorted({port.number for _, port in candidates})
    if len(targeted) == 1:
        return targeted[0]
    if len(targeted) > 1:
        listed = ", ".join(map(str, targeted))
        raise WiringError(f"its Services target {len(targeted)} ports of {container!r} "
                          f"({listed}): choose the app's with --app-port")
    if upstream is not None:
        return upstream
    declared = sorted({port.number for port in own})
    if len(declared) == 1:
        return declared[0]
    what = f"{len(declared)} ports ({', '.join(map(str, declared))})" if declared \
        else "no port"
    raise WiringError(f"no Service targets it and container {container!r} declares {what}: "
                      f"choose the app's with --app-port")


def _wired_app(spec: Node, settings: Settings | None) -> str | None:
    """The container an earlier ``inject`` chose: the one whose ``preStop`` calls ``/drain``,
    else the one declaring the proxy's upstream port."""
    apps = [c for c in spec.get("containers") or [] if c.get("name") != sidecar.CONTAINER_NAME]
    hooked = [c for c in apps if calls_drain((c.get("lifecycle") or {}).get("preStop"))]
    if len(hooked) == 1:
        return str(hooked[0].get("name"))
    if settings is None or settings.upstream.unix_path is not None:
        return None
    declaring = [c for c in apps if any(p.get("containerPort") == settings.upstream.port
                                        for p in c.get("ports") or [])]
    return str(declaring[0].get("name")) if len(declaring) == 1 else None


def _existing_mode(proxy: Node | None) -> str | None:
    """The mode an existing proxy was given explicitly, which settles it as --mode would."""
    for entry in (proxy or {}).get("env") or []:
        if entry.get("name") == sidecar.MODE_ENV and "value" in entry:
            return str(entry["value"]).strip().lower()
    return None
