"""Build and run the drain-proxy image with no Docker engine: buildah, and a stand-in base.

CI machines run no container engine, so the Docker SDK test in test_deploy_image.py skips there
and the Dockerfile would never be built. buildah needs no daemon: as root, with ``--isolation
chroot`` and the ``vfs`` storage driver, it builds the unchanged Dockerfile and runs the image
with no cgroups and no overlay filesystem. Every buildah call gets a private storage root and
runroot inside one temporary directory, so no image store of the machine is read or written.

The official ``python:3.11-bookworm`` and ``python:3.11-slim-bookworm`` bases are pulled when a
registry answers. Where none does, a stand-in is made from Debian bookworm with debootstrap,
from the mirror apt itself is configured with, and tagged under both official names, so the
Dockerfile builds unchanged with ``--pull=never``: a slim stand-in (python3, no compiler, no
pip) and a full one (the slim one plus gcc, the Python headers and pip). Python is linked into
/usr/local/bin as in the official images, where the virtualenv's interpreter symlink points.

The build reaches the package index the machine's own pip is configured for: that
configuration (files and PIP_* variables, as ``pip config list`` merges them) is written to one
pip.conf mounted read-only at /etc/pip.conf for the build's RUN steps, and the local files it
names (a find-links directory, a file:// index, a constraints file, a CA bundle) are mounted
read-only at the same paths. Nothing about the machine is written into the repository.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
FULL_BASE = "docker.io/library/python:3.11-bookworm"
SLIM_BASE = "docker.io/library/python:3.11-slim-bookworm"
PYTHON = "python3.11"
# The slim stand-in: what the final stage runs on. The full one adds what the builder stage
# compiles with (the official full image has them) and pip, which its RUN step calls.
SLIM_PACKAGES = ("python3", "python3-venv", "ca-certificates")
FULL_PACKAGES = ("gcc", "libc6-dev", "python3-dev", "python3-pip")
STAND_IN_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# containers/image keeps a blob-info cache here for root, whatever --root says, and buildah
# has no flag to move it: the workspace removes it afterwards if it was not there before.
BLOB_INFO_CACHE = Path("/var/lib/containers")
# Values of pip options that are never local files, even when they look like one.
NOT_A_PATH = {"/", "/etc", "/usr", "/var", "/opt", "/tmp", "/root", "/home", "/bin", "/lib"}


class Unavailable(Exception):
    """This machine cannot build the image this way: the test skips with this reason."""


def run_process(argv: Sequence[str], timeout_s: float, *, env: dict[str, str] | None = None,
                output: Path | None = None) -> str:
    """Run argv to completion and return its output (stdout, and stderr merged when `output`
    names a log file). On timeout the whole process group it started is killed: a build
    leaves compilers and buildah helpers behind that a kill of buildah alone would orphan."""
    log = output.open("w") if output is not None else None
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log or subprocess.PIPE,
            stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True, env=env,
            start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError(f"{argv[:3]} ran more than {timeout_s} s") from None
    finally:
        if log is not None:
            log.close()
    text = output.read_text(errors="replace") if output is not None else stdout
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, list(argv), text, stderr)
    return text


def missing_prerequisites() -> str | None:
    """Why buildah cannot build and run images here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "buildah's chroot isolation needs Linux"
    if os.geteuid() != 0:
        return "buildah with --isolation chroot and vfs storage, unprivileged, needs root here"
    for tool in ("buildah", "unshare", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"no {tool} executable (apt-get install buildah)"
    probe = subprocess.run(["unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "true"],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"cannot create the namespaces chroot isolation uses: {probe.stderr.strip()}"
    return None


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian archive apt is configured with here, as apt reads its sources."""
    if shutil.which("apt-get") is None:
        raise Unavailable("no apt-get: cannot find a Debian mirror for the stand-in base")
    listing = run_process(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"], 60)
    for line in listing.splitlines():
        uri, _, release = line.partition(" ")
        if release.strip() == suite:
            return uri
    raise Unavailable(f"apt has no source for Debian {suite}: no mirror for the stand-in base")


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below `directory`, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if point == directory or point.is_relative_to(directory):
            found.append(point)
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


class Buildah:
    """buildah on a private storage root, runroot and TMPDIR, all inside `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()
        self.env = {**os.environ, "TMPDIR": str(self.tmp)}
        self.globals = ["--root", str(workdir / "storage"), "--runroot", str(workdir / "run"),
                        "--storage-driver", "vfs"]

    def argv(self, *args: str) -> list[str]:
        return ["buildah", *self.globals, *args]

    def __call__(self, *args: str, timeout_s: float = 120, output: Path | None = None) -> str:
        return run_process(self.argv(*args), timeout_s, env=self.env, output=output).strip()

    def rootfs(self, container: str) -> Path:
        """The container's root filesystem: with vfs, a plain directory of the storage root."""
        path = Path(self("mount", container))
        if not path.is_absolute() or not path.is_relative_to(self.workdir) or not path.is_dir():
            raise AssertionError(f"buildah mount gave {path!r}, not a directory of the workspace")
        return path

    def remove_everything(self) -> None:
        """Containers, then images, of this private store (the rest goes with the directory)."""
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            with contextlib.suppress(subprocess.CalledProcessError, AssertionError):
                self(*args, timeout_s=300)


def pull_official_bases(buildah: Buildah, timeout_s: float = 60) -> bool:
    """Pull the real bases, or remove any half of them and say False."""
    try:
        for name in (FULL_BASE, SLIM_BASE):
            buildah("pull", "--policy", "always", "--quiet", name, timeout_s=timeout_s)
        return True
    except (subprocess.CalledProcessError, AssertionError):
        for name in (FULL_BASE, SLIM_BASE):
            with contextlib.suppress(subprocess.CalledProcessError):
                buildah("rmi", "--force", name)
        return False


def make_stand_in_bases(buildah: Buildah, mirror: str) -> None:
    """debootstrap bookworm, commit it as the slim base, and add a compiler for the full one."""
    if shutil.which("debootstrap") is None:
        raise Unavailable("no debootstrap executable, and the official bases cannot be pulled")
    rootfs = buildah.workdir / "debootstrap"
    run_process(["debootstrap", "--variant=minbase", f"--include={','.join(SLIM_PACKAGES)}",
                 SUITE, str(rootfs), mirror], 900, output=buildah.workdir / "debootstrap.log")
    for leftover in [*rootfs.glob("var/cache/apt/archives/*.deb"),
                     *rootfs.glob("var/lib/apt/lists/*_*")]:
        leftover.unlink()
    (rootfs / "etc/resolv.conf").write_text("")  # debootstrap copied the machine's
    interpreter = rootfs / "usr/bin" / PYTHON
    if not interpreter.exists():
        raise AssertionError(f"debootstrap installed no /usr/bin/{PYTHON}: the bases need it")
    # As in the official images: python3.11 in /usr/local/bin, python3 and python beside it.
    local_bin = rootfs / "usr/local/bin"
    (local_bin / PYTHON).symlink_to(f"/usr/bin/{PYTHON}")
    (local_bin / "python3").symlink_to(PYTHON)
    (local_bin / "python").symlink_to("python3")

    container = buildah("from", "--name", "stand-in-slim", "scratch")
    run_process(["cp", "-a", f"{rootfs}/.", str(buildah.rootfs(container))], 300)
    buildah("umount", container)
    buildah("config", "--env", f"PATH={STAND_IN_PATH}", "--env", "LANG=C.UTF-8",
            "--cmd", '["python3"]', container)
    buildah("commit", "--quiet", "--rm", container, SLIM_BASE, timeout_s=300)
    shutil.rmtree(rootfs)

    container = buildah("from", "--pull=never", "--name", "stand-in-full", SLIM_BASE)
    run = ("run", "--isolation", "chroot", "--network", "host", container, "--")
    log = buildah.workdir / "stand-in-full.log"
    buildah(*run, "apt-get", "update", "-q", timeout_s=300, output=log)
    buildah(*run, "apt-get", "install", "-y", "-q", "--no-install-recommends", *FULL_PACKAGES,
            timeout_s=600, output=buildah.workdir / "stand-in-full-install.log")
    buildah(*run, "apt-get", "clean")
    buildah(*run, "find", "/var/lib/apt/lists", "-type", "f", "-delete")
    buildah("commit", "--quiet", "--rm", container, FULL_BASE, timeout_s=300)


def provide_bases(buildah: Buildah) -> str:
    """The official bases where they can be pulled, else the stand-in: which one is used."""
    if pull_official_bases(buildah):
        return "official"
    make_stand_in_bases(buildah, debian_mirror())
    return "stand-in (debootstrap)"


def pip_configuration() -> dict[str, dict[str, str]]:
    """The machine's pip configuration, merged as pip merges it: files, then PIP_* variables."""
    listing = run_process([sys.executable, "-m", "pip", "config", "list"], 60)
    merged: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, quoted = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or not section:
            continue
        value = str(ast.literal_eval(quoted))
        if section == ":env:":
            from_env[key] = value
        else:
            merged.setdefault(section, {})[key] = value
    for options in merged.values():  # a variable overrides that option in every section
        options.update({key: value for key, value in from_env.items() if key in options})
    merged.setdefault("global", {}).update(from_env)
    return merged


def local_paths(configuration: dict[str, dict[str, str]]) -> list[Path]:
    """The files and directories the configuration names on this machine. A file:// index
    (``.../simple``) links to its files with relative URLs, usually beside it (``../files``):
    the directory that holds the index is mounted, unless it is a system directory."""
    paths: set[Path] = set()
    for section in configuration.values():
        for value in section.values():
            for token in value.split():
                candidate = Path(token.removeprefix("file://"))
                if not candidate.is_absolute() or str(candidate) in NOT_A_PATH:
                    continue
                if token.startswith("file://") and str(candidate.parent) not in NOT_A_PATH:
                    candidate = candidate.parent
                if candidate.exists():
                    paths.add(candidate)
    return sorted(paths)


def pip_volumes(workdir: Path) -> list[str]:
    """``--volume`` values that give the build's RUN steps this machine's pip configuration."""
    configuration = pip_configuration()
    # pip hides a build backend's output unless verbose: with it, the build log shows
    # setup.py's own words about the mypyc step.
    configuration.setdefault("global", {})["verbose"] = "1"
    text = "".join(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in
                                               options.items())
                   for section, options in configuration.items())
    conf = workdir / "pip.conf"
    conf.write_text(text)
    volumes = [f"{conf}:/etc/pip.conf:ro"]
    volumes += [f"{path}:{path}:ro" for path in local_paths(configuration)]
    return volumes


def build_image(buildah: Buildah, context: Path, tag: str) -> str:
    """Build the Dockerfile in `context`, as it is, on the bases in the private store."""
    args = ["build", "--isolation", "chroot", "--pull=never", "--tag", tag,
            "--file", str(context / "Dockerfile")]
    for volume in pip_volumes(buildah.workdir):
        args += ["--volume", volume]
    log = buildah.workdir / "build.log"
    try:
        return buildah(*args, str(context), timeout_s=1200, output=log)
    except subprocess.CalledProcessError as error:
        raise AssertionError(f"the image build failed:\n{str(error.output)[-6000:]}") from None


def _remove_blob_info_cache(existed: bool) -> None:
    if existed or not BLOB_INFO_CACHE.is_dir():
        return
    held = [path for path in BLOB_INFO_CACHE.rglob("*")
            if path.is_file() and not path.name.startswith("blob-info-cache")]
    if not held:
        shutil.rmtree(BLOB_INFO_CACHE)


@contextlib.contextmanager
def workspace() -> Iterator[Buildah]:
    """A private buildah store in a temporary directory, all of it removed on exit.

    A mount left under the directory (a bind mount of a container's root, /proc in an
    interrupted debootstrap) is unmounted first: removing through it would reach the mounted
    filesystem. If one cannot be unmounted, the directory is left and the exit fails."""
    cache_existed = BLOB_INFO_CACHE.exists()
    workdir = Path(tempfile.mkdtemp(prefix="drain-proxy-image-"))
    buildah = Buildah(workdir)
    try:
        yield buildah
    finally:
        buildah.remove_everything()
        for point in mounts_under(workdir):
            subprocess.run(["umount", str(point)], capture_output=True, timeout=60, check=False)
        left = mounts_under(workdir)
        if left:
            raise AssertionError(f"still mounted, {workdir} left in place: {left}")
        shutil.rmtree(workdir)
        _remove_blob_info_cache(cache_existed)


def timed(label: str, timings: dict[str, float]) -> contextlib.AbstractContextManager[None]:
    """Record how long the block took under `label`."""

    @contextlib.contextmanager
    def timer() -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            timings[label] = time.monotonic() - start

    return timer()
