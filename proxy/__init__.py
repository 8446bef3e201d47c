"""drain-proxy: a reverse-proxy sidecar that makes Kubernetes rollouts lose zero requests."""

__version__ = "0.1.0"


def build() -> str:
    """``compiled`` when the per-request modules run as mypyc C extensions (see setup.py),
    ``pure-python`` otherwise: same behaviour, about half the Python time per request."""
    from proxy import client

    return "pure-python" if client.__file__.endswith(".py") else "compiled"
