"""``.ci/run`` and the contributor's own virtualenv.

The whole script takes 20 minutes and installs system packages, so it is not run here: it is
run up to the README's test command, with ``python3`` on its PATH answering for the real one
(it records where and how it was called, then fails, and the script stops soon after).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the script calls before the README's command; without apt-get on the PATH, it skips
# the system packages (as on a machine without them).
TOOLS = ("dirname", "id", "git", "tar", "mktemp", "rm", "ls")

RECORDING_PYTHON = """#!/bin/sh
printf '%s\\n%s\\n' "$(pwd)" "$*" > "$RECORD"
ls -A > "$RECORD.ls"
exit 3
"""


def _git(clone: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", *args],
                   cwd=clone, check=True, capture_output=True)


def test_ci_runs_the_readme_command_elsewhere_and_leaves_the_venv_alone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", clone / ".ci" / "run")
    shutil.copy(ROOT / ".gitignore", clone / ".gitignore")
    (clone / "README.md").write_text("tracked\n")
    _git(clone, "init", "-q")
    _git(clone, "add", ".")
    _git(clone, "commit", "-q", "-m", "clone")
    (clone / "new.py").write_text("untracked, not ignored\n")
    venv = clone / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "mine").write_text("a contributor's working venv\n")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"no {tool}: .ci/run needs it")
        (tools / tool).symlink_to(found)
    (tools / "python3").write_text(RECORDING_PYTHON)
    (tools / "python3").chmod(0o755)
    record = tmp_path / "record"
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, ".ci/run"], cwd=clone, capture_output=True, text=True, timeout=60,
        env={"PATH": str(tools), "RECORD": str(record), "TMPDIR": str(tmp_path),
             "HOME": os.environ.get("HOME", str(tmp_path))}, check=False)
    assert result.returncode != 0, result.stderr  # stopped after the README's command
    assert (venv / "bin" / "mine").read_text() == "a contributor's working venv\n"
    where, args = record.read_text().splitlines()
    assert args == "-m venv .venv"  # the README's command, verbatim
    assert Path(where).parent == tmp_path and Path(where) != clone
    assert not Path(where).exists()  # the run's own directory is gone afterwards
    # What git would commit, new files included; nothing ignored, no virtualenv.
    copied = set((tmp_path / "record.ls").read_text().split())
    assert copied == {".ci", ".gitignore", "README.md", "new.py"}
