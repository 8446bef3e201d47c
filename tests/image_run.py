"""Look inside a built image, and run it with buildah as the manifests run the proxy.

The manifests run the proxy as 65532 with a read-only root filesystem and no capabilities.
``buildah run --isolation chroot`` has no read-only option, so the container's root is
bind-mounted read-only onto itself before the run: buildah's own mount of the root inherits
that, and the proxy's ``/`` is read-only for its whole life (its /proc/PID/mountinfo says so).
The bind is taken away once the proxy runs, so that buildah can remove the mount points it
made when the run ends (buildah 1.28 panics when it cannot). Mount points buildah creates
(/etc/hosts, /run/.containerenv) are made by a first run (``drain-proxy --version``) and by
hand, while the root is still writable.

buildah does not forward signals to the process it runs, so SIGTERM goes to the drain-proxy
process itself, found among the descendants of the ``buildah run`` this module started.
``buildah run`` exits with that process's exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_build import Buildah

NON_ROOT = 65532
RUN_FLAGS = ("--isolation", "chroot", "--network", "host")
VENV = "opt/drain-proxy"
SITE_PACKAGES = f"{VENV}/lib/python3.11/site-packages"
BIN_DIRS = ("usr/bin", "usr/local/bin", "bin", "usr/sbin", "sbin")
COMPILERS = re.compile(r"^(?:[\w-]+-)?(?:gcc|cc|c\+\+|g\+\+|clang)(?:-[\d.]+)?$")
LISTENING = re.compile(r"listening on [\d.]+:(\d+), admin on [\d.]+:(\d+)")


def image_config(buildah: Buildah, tag: str) -> dict[str, Any]:
    """The image's OCI configuration: user, entrypoint, ports, stop signal, environment."""
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", tag))[
        "OCIv1"]["config"]
    return config


def image_size(buildah: Buildah, tag: str) -> str:
    """The size ``buildah images`` reports for the image."""
    for image in json.loads(buildah("images", "--json")):
        names = image.get("names") or []
        if tag in names or f"localhost/{tag}" in names:
            return str(image["size"])
    raise AssertionError(f"{tag} is not among the images")


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root`, each hard-linked file counted once."""
    seen: set[int] = set()
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            if stat.st_ino not in seen and not os.path.islink(os.path.join(directory, name)):
                seen.add(stat.st_ino)
                total += stat.st_size
    return total


def resolve_inside(root: Path, path: str) -> Path | None:
    """Where `path` leads inside the image whose root is `root` (symlinks followed as the
    container sees them), or None when the chain ends at nothing."""
    current = path
    for _ in range(40):
        host = root / current.lstrip("/")
        if host.is_symlink():
            target = os.readlink(host)
            current = target if target.startswith("/") else str(Path(current).parent / target)
            continue
        return host if host.exists() else None
    return None


@dataclass
class Inside:
    """What the final image's filesystem holds."""

    compilers: list[str]
    venv_pip: list[str]
    base_pip: list[str]
    compiled_modules: set[str]
    packages: set[str]  # the top-level names in the virtualenv's site-packages
    interpreter: str
    interpreter_target: Path | None
    venv_bytes: int
    total_bytes: int
    shells: list[str] = field(default_factory=list)


def _module_name(site: Path, extension: Path) -> str:
    """``proxy.http1.client`` for ``proxy/http1/client.cpython-311-x86_64-linux-gnu.so``."""
    relative = extension.relative_to(site)
    return ".".join((*relative.parent.parts, relative.name.split(".", 1)[0]))


def look_inside(root: Path) -> Inside:
    """Inspect a mounted image root."""
    # /bin and /sbin are links to /usr/bin and /usr/sbin on bookworm: list each file once.
    binaries = [f"/{d}/{path.name}" for d in BIN_DIRS
                if (root / d).is_dir() and not (root / d).is_symlink()
                for path in (root / d).iterdir()]
    site = root / SITE_PACKAGES
    venv_pip = [f"/{path.relative_to(root)}" for path in (root / VENV / "bin").glob("pip*")]
    venv_pip += [f"/{path.relative_to(root)}" for pattern in ("pip", "pip-*", "setuptools*")
                 for path in site.glob(pattern)]
    interpreter = root / VENV / "bin/python"
    return Inside(
        compilers=sorted(b for b in binaries if COMPILERS.match(b.rsplit("/", 1)[1])),
        venv_pip=sorted(venv_pip),
        base_pip=sorted(b for b in binaries if re.match(r"pip[\d.]*$", b.rsplit("/", 1)[1])),
        compiled_modules={_module_name(site, path) for path in (site / "proxy").rglob("*.so")},
        packages={path.name for path in site.iterdir()},
        interpreter=os.readlink(interpreter) if interpreter.is_symlink() else "not a symlink",
        interpreter_target=resolve_inside(root, f"/{VENV}/bin/python"),
        venv_bytes=tree_bytes(root / VENV),
        total_bytes=tree_bytes(root),
        shells=sorted(b for b in binaries if b.rsplit("/", 1)[1] in ("sh", "bash", "dash")),
    )


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, by walking /proc."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _is_drain_proxy(pid: int) -> bool:
    with contextlib.suppress(OSError):
        argv = [Path(arg.decode()).name for arg in
                Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
        # buildah's helper, "buildah-chroot-exec /opt/drain-proxy/bin/drain-proxy", is not it.
        if argv and not argv[0].startswith("buildah"):
            return "drain-proxy" in argv[:2]
    return False


class RunningProxy:
    """The proxy process a ``buildah run`` started, with its log and its ports."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        self.pid = 0
        self.port = 0
        self.admin_port = 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout_s: float) -> None:
        """Wait for the proxy's "listening on" line, then find its process."""
        deadline = time.monotonic() + timeout_s
        while not (match := LISTENING.search(self.log_text())):
            assert self.process.poll() is None, f"the container exited:\n{self.log_text()}"
            assert time.monotonic() < deadline, f"not listening:\n{self.log_text()}"
            time.sleep(0.2)
        self.port, self.admin_port = int(match[1]), int(match[2])
        found = [pid for pid in descendants(self.process.pid) if _is_drain_proxy(pid)]
        assert len(found) == 1, f"drain-proxy processes under buildah run: {found}"
        self.pid = found[0]

    def status(self) -> dict[str, str]:
        lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}

    def root_mount_options(self) -> set[str]:
        """The mount options of the proxy's "/", as its own mount namespace has it."""
        for line in Path(f"/proc/{self.pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == "/":
                return set(fields[5].split(","))
        raise AssertionError("the proxy has no / in its mountinfo")

    def signal(self, signum: int) -> None:
        """Signal the proxy, if it is still the process found below our buildah run."""
        if self.pid and self.pid in descendants(self.process.pid):
            os.kill(self.pid, signum)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """End whatever is left: SIGTERM to the proxy, then SIGKILL to the process group of
        the buildah run this test started."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def running_proxy(buildah: Buildah, container: str, entrypoint: list[str],
                  env: Mapping[str, str]) -> Iterator[RunningProxy]:
    """Run the image's entrypoint in `container` as 65532, no capabilities, read-only root."""
    root = buildah.rootfs(container)
    version = buildah("run", *RUN_FLAGS, "--user", f"{NON_ROOT}:{NON_ROOT}", container, "--",
                      *entrypoint, "--version")
    assert version.startswith("drain-proxy "), version
    (root / "run/.containerenv").touch()
    _mount("--bind", str(root), str(root))
    bound = True
    try:
        _mount("-o", "remount,bind,ro", str(root), str(root))
        log = buildah.workdir / "proxy.log"
        flags = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                buildah.argv("run", *RUN_FLAGS, "--user", f"{NON_ROOT}:{NON_ROOT}",
                             "--cap-drop", "ALL", *flags, container, "--", *entrypoint),
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                env=buildah.env, start_new_session=True)
        proxy = RunningProxy(process, log)
        try:
            proxy.wait_listening(60)
            subprocess.run(["umount", str(root)], check=True, capture_output=True, timeout=30)
            bound = False
            yield proxy
        finally:
            proxy.stop()
    finally:
        if bound:
            subprocess.run(["umount", str(root)], capture_output=True, timeout=30, check=False)
