"""Self-signed certificates for the webhook's TLS tests, made by the real ``openssl``."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (an EC key: fast to make) and its key, as
    ``directory/<name>.crt`` and ``directory/<name>.key``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl (apt-get install openssl): the webhook's TLS not tested")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def replace_file(source: Path, target: Path) -> None:
    """Put ``source``'s content at ``target`` as a rotation does: a new file renamed over it."""
    staged = target.with_name(target.name + ".new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def client_context(*trusted: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for cert in trusted:
        context.load_verify_locations(cert)
    return context
