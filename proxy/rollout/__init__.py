"""A Kubernetes scale-down under load, simulated in one process on 127.0.0.1.

Why it exists: the claim "zero requests lost" needs an experiment anyone can
rerun, and a cluster is a heavy prerequisite for a first look.  So the parts of
a rollout that decide whether requests fail are modelled here with real sockets
and the real proxy, and the rest is left out:

- ``endpoints``: kube-proxy as an endpoint list consulted at connect time, which
  keeps the terminating pod for a propagation delay (the termination race);
- ``app`` and ``pods``: the app, optionally drain-proxy in front of it, and the
  three ways a pod can terminate (naive, preStop sleep, drain-proxy);
- ``clients``: keep-alive, per-request, idle keep-alive and slow clients that
  never retry silently;
- ``scenario``: one schedule, the same for every setup;
- ``report``: the results and their formatting (sans-IO);
- ``demo``: ``drain-proxy demo``;
- ``grpc_rollout`` and ``service_relay``: the same scale-down with real gRPC channels,
  which need a Service address that routes TCP connections, and a scale-up (grpcio).

Left out on purpose: readiness probes (the endpoints update *is* their effect),
network latency, several nodes, and the start-up race (pod B is ready from the
start).  ``benchmarks/rollout.py`` runs the same code at a larger scale.
"""
