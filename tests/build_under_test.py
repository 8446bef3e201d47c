"""Which drain-proxy build the tests run, and a guard that it is the intended one.

The suite tests what ships: ``pip install .`` compiles the per-request modules with
mypyc, and compiled code differs from CPython in ways only running it shows (an
``except ... as error`` name bound to two exception types is a runtime TypeError
there).  So every test, in-process ones included, imports the *installed* package,
never the source tree that ``python -m pytest`` puts first on ``sys.path``.

Running a build other than the intended one is a failed run, not a pass:

* the installed package must be this source tree (an edit not reinstalled would
  otherwise be tested as its previous version);
* a compiled module left in the source tree must not be older than its ``.py``
  (it would shadow the edited source wherever the tree is imported);
* ``DRAIN_PROXY_TEST_BUILD=compiled|pure`` names the build the run must use (CI
  runs the suite once for each); unset, whatever was installed is tested.

An editable install (``pip install -e``) imports the source tree by design and passes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parent.parent
SOURCE_PACKAGE = SOURCE_TREE / "proxy"
BUILD_VARIABLE = "DRAIN_PROXY_TEST_BUILD"
BUILDS = ("compiled", "pure-python")


def import_the_installed_package() -> None:
    """Take the source tree off ``sys.path`` so ``import proxy`` finds the installed build."""
    sys.path[:] = [entry for entry in sys.path
                   if Path(entry or os.curdir).resolve() != SOURCE_TREE]


def _editable_install() -> bool:
    try:
        direct_url = importlib.metadata.distribution("drain-proxy").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    return bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


def stale_compiled_modules(package: Path) -> list[str]:
    """Compiled modules in ``package`` older than the ``.py`` they were built from."""
    stale = []
    for compiled in sorted(package.rglob("*.so")):
        source = compiled.with_name(compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and compiled.stat().st_mtime < source.stat().st_mtime:
            stale.append(f"{package.name}/{compiled.relative_to(package)}")
    return stale


def differing_sources(source_package: Path, installed: Path) -> list[str]:
    """Source files whose installed copy is missing or different."""
    differing = []
    for source in sorted(source_package.rglob("*.py")):
        relative = source.relative_to(source_package)
        copy = installed / relative
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            differing.append(f"{source_package.name}/{relative}")
    return differing


def problem_with_build_under_test() -> str | None:
    """None when the imported drain-proxy is the intended build, else what is wrong."""
    stale = stale_compiled_modules(SOURCE_PACKAGE)
    if stale:
        return (f"compiled modules older than their source shadow it: {', '.join(stale)}; "
                f"delete them (git clean -fX proxy) or rebuild")
    import proxy

    package = Path(proxy.__file__).resolve().parent
    if package == SOURCE_PACKAGE and not _editable_install():
        return ("drain-proxy is imported from the source tree, not installed: run "
                "pip install '.[test]' (or pip install -e for development)")
    if package != SOURCE_PACKAGE:
        differing = differing_sources(SOURCE_PACKAGE, package)
        if differing:
            return (f"the installed drain-proxy ({package}) is not this source tree "
                    f"({', '.join(differing[:3])} differ): run pip install '.[test]' again")
    wanted = os.environ.get(BUILD_VARIABLE, "")
    wanted = "pure-python" if wanted == "pure" else wanted
    if wanted and wanted not in BUILDS:
        return f"{BUILD_VARIABLE}={wanted!r}: allowed: compiled, pure"
    if wanted and proxy.build() != wanted:
        return (f"{BUILD_VARIABLE} wants the {wanted} build but the installed drain-proxy is "
                f"{proxy.build()} (compiled: pip install .; pure: DRAIN_PROXY_NO_EXTENSIONS=1 "
                f"pip install .)")
    return None
