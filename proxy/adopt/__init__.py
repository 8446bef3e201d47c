"""Adopting the sidecar: ``drain-proxy inject`` and ``drain-proxy check`` over manifests."""
