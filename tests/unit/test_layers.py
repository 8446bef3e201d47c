"""The package layout is the architecture: a module imports only from its own floor or
the floors below it, and no two modules import each other, directly or round a cycle.

An import that runs upward (a connection protocol reaching into the server that wires
it, or HTTP/2 into the HTTP/1.1 pool) is how the layout stops meaning anything; this
test names it.  Imports under ``TYPE_CHECKING`` and inside functions count too: they
are dependencies all the same.  The README draws the same floors.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import proxy

PACKAGE = Path(proxy.__file__).parent

# Top to bottom.  The package root (``proxy/__init__.py``: the version) is below them all.
FLOORS: list[tuple[str, ...]] = [
    ("proxy.__main__", "proxy.cli"),
    ("proxy.rollout", "proxy.adopt"),
    ("proxy.server", "proxy.admin", "proxy.readiness", "proxy.coordinator"),
    ("proxy.http1",),
    ("proxy.http2",),
    ("proxy.tcp",),
    ("proxy.context",),
    ("proxy.drain",),
    ("proxy.telemetry",),
    ("proxy.settings", "proxy.flags", "proxy.limits", "proxy.app_connect", "proxy.transitions",
     "proxy.flow", "proxy.buffers", "proxy.h11_server"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _floor(module: str) -> int | None:
    """The floor of ``module``; None for the package root, below every floor."""
    if module == "proxy":
        return None
    for index, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is on no floor: add it to FLOORS (and to the README)")


def _imports(module: str, path: Path) -> set[str]:
    """The proxy modules ``module`` imports, resolved to module names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {name for name in found if name == "proxy" or name.startswith("proxy.")}


GRAPH = {module: _imports(module, path) - {module} for module, path in MODULES.items()}


def test_every_module_is_on_a_floor() -> None:
    for module in MODULES:
        _floor(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_floor_above_its_own(module: str) -> None:
    floor = _floor(module)
    targets = GRAPH[module] - {"proxy"}
    if floor is None:
        assert not targets, f"the package root imports {sorted(targets)}: it is below them all"
        return
    upward = sorted(t for t in targets if (other := _floor(t)) is not None and other < floor)
    assert not upward, f"{module} (floor {floor}) imports from above: {upward}"


def test_no_import_cycle() -> None:
    graph = {module: {t for t in targets if t != "proxy"} for module, targets in GRAPH.items()}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as cycle:
        pytest.fail(f"an import cycle: {' -> '.join(cycle.args[1])}")


def test_the_floors_name_real_packages() -> None:
    for prefixes in FLOORS:
        for prefix in prefixes:
            assert prefix in MODULES, f"{prefix} is no module or package of drain-proxy"
