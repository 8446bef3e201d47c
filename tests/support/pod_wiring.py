"""The webhook's mutator for the tests: the real pod wiring (``pod_injection``), with a
token of the tests' own and the shipped image name."""

from __future__ import annotations

from proxy.adopt.pod_injection import pod_mutator
from proxy.adopt.wiring import Options

TOKEN = "0123456789abcdef" * 4
IMAGE = "registry.example.invalid/drain-proxy:0.1.0"
NOTES: list[str] = []  # what the wiring said, as the webhook would log it

wiring = pod_mutator(Options(image=IMAGE, token=TOKEN), NOTES.append)
