"""Source patterns that run under CPython but break once mypyc compiles them.

The suite runs the compiled build (``build_under_test``), which catches these where a
test reaches them; this scan also catches them in paths no test reaches yet, and in
the pure-build run.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def compiled_modules() -> list[str]:
    """The modules setup.py hands to mypyc (its HOT_MODULES list)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "HOT_MODULES" for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return [str(v) for v in value]
    raise AssertionError("setup.py has no HOT_MODULES list")


def names_bound_to_two_exception_types(source: str) -> list[str]:
    """``except A as e`` and ``except B as e`` in one function: mypyc types ``e`` from the
    first clause, so the second raises TypeError at run time."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        types_by_name: dict[str, set[str]] = defaultdict(set)
        for node in ast.walk(function):
            if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                types_by_name[node.name].add(ast.unparse(node.type))
        found += [f"{function.name}(): {name} is bound to {sorted(types)}"
                  for name, types in types_by_name.items() if len(types) > 1]
    return found


def test_the_scan_finds_the_hazard() -> None:
    source = ("def f():\n    try:\n        pass\n    except KeyError as error:\n        pass\n"
              "    except ValueError as error:\n        pass\n")
    assert names_bound_to_two_exception_types(source) == [
        "f(): error is bound to ['KeyError', 'ValueError']"]


@pytest.mark.parametrize("module", compiled_modules())
def test_compiled_modules_bind_one_exception_type_per_name(module: str) -> None:
    assert names_bound_to_two_exception_types((ROOT / module).read_text()) == []


# Not Final, with the reason in the module: mypyc folds a Final tuple of floats into each use.
NOT_FINAL_BY_DESIGN = {"DURATION_BUCKETS"}


def constants_without_final(source: str) -> list[str]:
    """Module-level CONSTANT names assigned without ``Final``.  The compiled build looks such
    a name up in the module's dict at every use; a ``Final`` one is a C static (counted with
    bench_instructions.py: the request path's role constants alone cost 4 %)."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if "Final" in ast.unparse(node.annotation):
                continue
            names = [node.target.id]
        else:
            continue
        found += [name for name in names
                  if name.lstrip("_").isupper() and name not in NOT_FINAL_BY_DESIGN]
    return found


def test_the_constant_scan_finds_a_constant_without_final() -> None:
    source = "A: Final = 1\nB = 2\n(_C, _D) = range(2)\nE: int = 3\nlog = object()\n"
    assert constants_without_final(source) == ["B", "_C", "_D", "E"]


@pytest.mark.parametrize("module", compiled_modules())
def test_compiled_modules_declare_their_constants_final(module: str) -> None:
    assert constants_without_final((ROOT / module).read_text()) == []
