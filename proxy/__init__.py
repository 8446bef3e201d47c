"""drain-proxy: a reverse-proxy sidecar that makes Kubernetes rollouts lose zero requests."""

import importlib.util

__version__ = "0.1.0"


def build() -> str:
    """``compiled`` when the per-request modules run as mypyc C extensions (see setup.py),
    ``pure-python`` otherwise: same behaviour, about half the Python time per request."""
    # Where the module would load from, without loading it: the package root imports
    # nothing of the floors above it.
    spec = importlib.util.find_spec("proxy.http1.client")
    origin = spec.origin if spec is not None else None
    return "pure-python" if origin is None or origin.endswith(".py") else "compiled"
