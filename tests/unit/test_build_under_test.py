"""The guard that stops a test run on the wrong drain-proxy build."""

from __future__ import annotations

import os
from pathlib import Path

from build_under_test import differing_sources, stale_compiled_modules


def test_a_compiled_module_older_than_its_source_is_stale(tmp_path: Path) -> None:
    package = tmp_path / "proxy"
    package.mkdir()
    (package / "client.py").write_text("x = 1\n")
    compiled = package / "client.cpython-311-x86_64-linux-gnu.so"
    compiled.write_bytes(b"\x7fELF")
    assert stale_compiled_modules(package) == []
    os.utime(compiled, (1, 1))  # built before the last edit of client.py
    assert stale_compiled_modules(package) == ["proxy/client.cpython-311-x86_64-linux-gnu.so"]


def test_an_install_that_is_not_the_source_tree_is_found(tmp_path: Path) -> None:
    source, installed = tmp_path / "src" / "proxy", tmp_path / "site" / "proxy"
    for package in (source, installed):
        (package / "sub").mkdir(parents=True)
        (package / "a.py").write_text("a = 1\n")
        (package / "sub" / "b.py").write_text("b = 1\n")
    assert differing_sources(source, installed) == []
    (source / "a.py").write_text("a = 2\n")  # edited, not reinstalled
    (source / "sub" / "c.py").write_text("c = 1\n")  # added, not reinstalled
    assert differing_sources(source, installed) == ["proxy/a.py", "proxy/sub/c.py"]
