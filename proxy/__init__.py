"""drain-proxy: a reverse-proxy sidecar that makes Kubernetes rollouts lose zero requests."""

__version__ = "0.1.0"
