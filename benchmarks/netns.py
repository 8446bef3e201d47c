"""A one-machine "cluster" for the kernel rollout: namespaces, a bridge and kube-proxy's rules.

Kubernetes routes a Service in the kernel, not in user space: kube-proxy writes DNAT
rules for the Service's virtual IP, conntrack keeps every established connection on
the pod its first packet was sent to, and a pod removed from the rules only stops
getting *new* connections.  To measure a rollout against that data path, everything
here is real and nothing is in the root namespace:

- a "node" namespace holding a bridge (the node's pod network), the clients, and the
  nftables table that stands for kube-proxy (hook ``output``: the clients are local);
- one namespace per pod, on a veth pair into the bridge, with its own address;
- optionally, client nodes: one namespace each, on a veth pair into the bridge with an
  address of its own (what the pods see as the peer of its connections, like a node's
  SNAT address), and a kube-proxy table of its own that is updated on its own schedule;
- the Service's rules in the shape of kube-proxy's nftables mode: a ``services`` map
  from VIP . protocol . port to a service chain, whose ``numgen random`` verdict map
  picks an endpoint chain that does the ``dnat``.

Every name carries a unique tag, and ``Cluster.destroy`` removes all of it (the
processes left in its namespaces first), so nothing outlives a run, even a failed one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

SUBNET = "10.77.0"  # the pods' network on the bridge; it exists only in our namespaces
NODE_ADDRESS = f"{SUBNET}.1"
MAX_CLIENT_NODES = 9  # client nodes take 10.77.0.2 to .10; pods start at .11
SERVICE_IP = "10.96.0.10"
SERVICE_PORT = 80
POD_PORT = 8080
TABLE = "kube-proxy"
SERVICE_CHAIN = "service-default/web/tcp/http"
CLONE_NEWNET = 0x40000000


class Unavailable(Exception):
    """Namespaces or nftables cannot be set up here; the message says why, in one line."""


def missing_requirement() -> str | None:
    """Why this machine cannot run the kernel rollout, or None when it looks like it can."""
    if not os.path.isdir("/proc/self/ns"):
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root to create network namespaces and nftables rules"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (apt-get install iproute2 nftables)"
    return None


def run(*argv: str, stdin: str | None = None) -> None:
    """One setup command; a failure raises ``Unavailable`` with the tool's own words."""
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise Unavailable(f"{' '.join(argv[:6])}: {detail[-1] if detail else res.returncode}")


@dataclass(frozen=True, slots=True)
class PodNet:
    """A pod's sandbox: its namespace, its address and its veth's name on the bridge."""

    name: str
    netns: str
    address: str
    bridge_port: str

    @property
    def endpoint_chain(self) -> str:
        return f"endpoint-{self.name}-default/web/tcp/http__{self.address}/{POD_PORT}"


def service_chain_body(pods: Sequence[PodNet]) -> str:
    """The service chain's one rule: a random pick over the endpoints (kube-proxy's form)."""
    if not pods:
        raise ValueError("a Service without endpoints is not part of this scenario")
    picks = ", ".join(f"{i} : goto {pod.endpoint_chain}" for i, pod in enumerate(pods))
    return f"numgen random mod {len(pods)} vmap {{ {picks} }}"


def full_ruleset(pods: Sequence[PodNet]) -> str:
    """The whole table, as ``nft -f`` loads it in one transaction."""
    endpoints = "".join(
        f"    chain {pod.endpoint_chain} {{\n"
        f"        meta l4proto tcp dnat to {pod.address}:{POD_PORT}\n    }}\n" for pod in pods)
    return (
        f"table ip {TABLE} {{\n"
        f"    chain nat-output {{\n"
        f"        type nat hook output priority -100; policy accept;\n"
        f"        jump services\n    }}\n"
        f"    map service-ips {{\n"
        f"        type ipv4_addr . inet_proto . inet_service : verdict\n"
        f"        elements = {{ {SERVICE_IP} . tcp . {SERVICE_PORT} : goto {SERVICE_CHAIN} }}\n"
        f"    }}\n"
        f"    chain services {{\n"
        f"        ip daddr . meta l4proto . th dport vmap @service-ips\n    }}\n"
        f"    chain {SERVICE_CHAIN} {{\n        {service_chain_body(pods)}\n    }}\n"
        f"{endpoints}}}\n")


def removal_update(remaining: Sequence[PodNet], removed: Sequence[PodNet]) -> str:
    """An endpoints update as kube-proxy sends it: one transaction that rewrites the
    service chain and deletes the removed endpoints' chains.  New connections see the
    old rules or the new ones, never a mix; established ones keep their conntrack entry."""
    lines = [f"flush chain ip {TABLE} {SERVICE_CHAIN}",
             f"add rule ip {TABLE} {SERVICE_CHAIN} {service_chain_body(remaining)}"]
    lines += [f"delete chain ip {TABLE} {pod.endpoint_chain}" for pod in removed]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class ClientNode:
    """A node of its own for clients: its namespace, its address on the bridge (the peer
    address the pods see for all of its connections) and its veth's name on the bridge."""

    name: str
    netns: str
    address: str
    bridge_port: str


class Cluster:
    """The namespaces of one run: ``create``, ``enter_node``, ..., ``destroy``.

    Without ``client_nodes`` the clients live in the node namespace that holds the bridge
    (one node).  With them, each client node is a namespace of its own on the bridge,
    with its own kube-proxy table (``load_rules(script, node)``)."""

    def __init__(self, tag: str, pod_names: Sequence[str],
                 client_nodes: Sequence[str] = ()) -> None:
        if len(client_nodes) > MAX_CLIENT_NODES:
            raise ValueError(f"at most {MAX_CLIENT_NODES} client nodes")
        for name in client_nodes:  # "vn-<name>" must fit an interface name (15 bytes)
            if not name.isidentifier() or len(name) > 10:
                raise ValueError(f"client node name {name!r}: up to 10 letters, digits, _")
        self.node = f"{tag}-node"
        self.pods = {name: PodNet(name, f"{tag}-pod-{name}", f"{SUBNET}.{11 + i}", f"veth-{name}")
                     for i, name in enumerate(pod_names)}
        self.client_nodes = {
            name: ClientNode(name, f"{tag}-n-{name}", f"{SUBNET}.{2 + i}", f"vn-{name}")
            for i, name in enumerate(client_nodes)}
        self._created: list[str] = []
        self._home: int | None = None  # our original network namespace, to come back to

    def create(self) -> None:
        """The node with its bridge, then each pod on its veth; raises ``Unavailable``."""
        self._add_netns(self.node)
        node = ("ip", "-n", self.node)
        run(*node, "link", "add", "br0", "type", "bridge")
        run(*node, "addr", "add", f"{NODE_ADDRESS}/24", "dev", "br0")
        run(*node, "link", "set", "br0", "up")
        # The VIP needs a route for the first lookup; the DNAT then re-routes to the pod.
        run(*node, "route", "add", f"{SERVICE_IP}/32", "dev", "br0")
        for pod in self.pods.values():
            self._add_netns(pod.netns)
            run(*node, "link", "add", pod.bridge_port, "type", "veth",
                "peer", "name", "eth0", "netns", pod.netns)
            run(*node, "link", "set", pod.bridge_port, "master", "br0", "up")
            run("ip", "-n", pod.netns, "addr", "add", f"{pod.address}/24", "dev", "eth0")
            run("ip", "-n", pod.netns, "link", "set", "eth0", "up")
        for client in self.client_nodes.values():
            self._add_netns(client.netns)
            run(*node, "link", "add", client.bridge_port, "type", "veth",
                "peer", "name", "eth0", "netns", client.netns)
            run(*node, "link", "set", client.bridge_port, "master", "br0", "up")
            inside = ("ip", "-n", client.netns)
            run(*inside, "addr", "add", f"{client.address}/24", "dev", "eth0")
            run(*inside, "link", "set", "eth0", "up")
            run(*inside, "route", "add", f"{SERVICE_IP}/32", "dev", "eth0")

    def _add_netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._created.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def enter_node(self) -> None:
        """Move this process into the node namespace: its sockets are the clients', and
        its ``nft`` commands edit the node's rules.  (Python 3.11 has no ``os.setns``.)"""
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{self.node}")

    def load_rules(self, script: str, node: str | None = None) -> None:
        """Apply an nftables script in the node namespace, or in client node ``node``'s,
        atomically (one ``nft -f``)."""
        netns = self.node if node is None else self.client_nodes[node].netns
        run("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=script)

    def rules_command(self, node: str) -> list[str]:
        """The argv that applies a script given on stdin to client node ``node``'s rules."""
        return ["ip", "netns", "exec", self.client_nodes[node].netns, "nft", "-f", "-"]

    def unplug(self, pod: PodNet) -> None:
        """The sandbox teardown after a pod's containers exited: its veth goes away."""
        run("ip", "-n", self.node, "link", "del", pod.bridge_port)

    def destroy(self) -> None:
        """Leave the node, end what still runs in our namespaces, delete them; never raises."""
        if self._home is not None:
            _setns(f"/proc/self/fd/{self._home}")
            os.close(self._home)
            self._home = None
        for name in reversed(self._created):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:  # only processes started for this run live in its namespaces
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self._created.clear()


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise Unavailable(f"setns {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)
