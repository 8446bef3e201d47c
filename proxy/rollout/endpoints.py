"""The simulated Service: which pod a *new* connection goes to.

kube-proxy implements a Service with iptables (or IPVS) rules that DNAT a
connection's first packet to one ready endpoint; from then on the connection
belongs to that pod, and no rule change ever moves it.  So the whole of
kube-proxy, for our purpose, is an endpoint list that a client consults only when
it opens a connection, and connections that exist are left alone.

The termination race lives in when the list changes: pod A stays in it for the
propagation delay after its SIGTERM (the endpoints controller, the API server and
every node's kube-proxy must all catch up), while A's containers are already
being stopped.  Round-robin over the list, like IPVS's ``rr`` scheduler: the
iptables mode picks at random, which only adds noise to a comparison.

Sans-IO: the simulation removes A at the right moment; clients call ``pick``.
"""

from __future__ import annotations

from collections.abc import Mapping


class NoEndpoints(Exception):
    """Every pod has left the Service (a scale to zero; the simulation never does it)."""


class Endpoints:
    """Pod names to the loopback ports that stand for their IPs, in list order."""

    def __init__(self, ports: Mapping[str, int]) -> None:
        self._ports = dict(ports)
        self._turn = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._ports)

    def pick(self) -> tuple[str, int]:
        """The pod and port a connection opened now is routed to."""
        names = list(self._ports)
        if not names:
            raise NoEndpoints("the Service has no endpoints")
        name = names[self._turn % len(names)]
        self._turn += 1
        return name, self._ports[name]

    def add(self, name: str, port: int) -> None:
        """A new pod became ready (a scale-up): new connections may go to it now."""
        self._ports[name] = port

    def remove(self, name: str) -> None:
        """The endpoints update has reached kube-proxy: no new connection goes to ``name``."""
        self._ports.pop(name, None)
