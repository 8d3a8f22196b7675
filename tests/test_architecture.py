"""The package's layering, checked on the source with `ast` (nothing is imported to check it):

(a) the import graph of `ode_nets` has no cycle; (b) no function imports an `ode_nets` module except the documented
`IN_FUNCTION_ALLOWED` list; (c) the numerical core (fields, solvers, strategies, solve, models) imports nothing from
`ode_nets.config` or `ode_nets.build`; (d) every registry's names are exactly the config schema's allowed names.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from ode_nets.experiments.benchmark import BenchConfig
from ode_nets.config import DataConfig, GradientConfig, ModelConfig, SolverConfig
from ode_nets.data import DATASETS
from ode_nets.fields import FIELDS
from ode_nets.models import READOUTS
from ode_nets.solvers import SOLVERS
from ode_nets.strategies import STRATEGIES

PACKAGE = Path(__file__).resolve().parents[1] / "ode_nets"
CORE = ("ode_nets.fields", "ode_nets.solvers", "ode_nets.strategies", "ode_nets.solve", "ode_nets.models")
FORBIDDEN_IN_CORE = ("ode_nets.config", "ode_nets.build")

# (importing module, imported module) -> why the import is inside a function. Every entry is needed today: no
# import cycle would follow from hoisting any of them (test (a) checks the graph with these edges included).
IN_FUNCTION_ALLOWED: dict[tuple[str, str], str] = {}  # none: every ode_nets import sits at the top of its module


def module_files() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package __init__) for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


MODULES = module_files()


def imported_modules(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads: `from a.b import c` is `a.b.c` if that is a module, else `a.b`;
    relative imports resolved against `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target for alias in node.names]


def imports(module: str) -> list[tuple[str, str | None]]:
    """(imported ode_nets module, enclosing function or None) for every import anywhere in `module`."""
    path, is_package = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            function = getattr(node, "name", "<lambda>") if function is None else f"{function}.{getattr(node, 'name', '<lambda>')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend((t, function) for t in imported_modules(module, is_package, node)
                         if t == "ode_nets" or t.startswith("ode_nets."))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in it); a package __init__ importing its own
    descendants is not an edge."""
    graph: dict[str, set[str]] = {}
    for module, (_, is_package) in MODULES.items():
        targets = {t for t, _ in imports(module) if t in MODULES and t != module}
        if is_package:
            targets = {t for t in targets if not t.startswith(module + ".")}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [m0, m1, ..., m0] of the graph, or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if colour[start] == 0 and (cycle := dfs(start)):
            return cycle
    return None


def test_the_graph_walk_sees_the_package():
    graph = import_graph()
    assert {"ode_nets.build", "ode_nets.fields.cubic", "ode_nets.strategies.analytic"} <= set(graph)
    assert "ode_nets.config" in graph["ode_nets.build"]
    assert "ode_nets.fields._base" in graph["ode_nets.fields.cubic"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def in_function_imports() -> dict[tuple[str, str], list[str]]:
    """(module, imported ode_nets module) -> the functions of `module` that import it."""
    found: dict[tuple[str, str], list[str]] = {}
    for module in MODULES:
        for target, function in imports(module):
            if function is not None:
                found.setdefault((module, target), []).append(function)
    return found


def test_no_in_function_imports_of_ode_nets_outside_the_allowlist():
    unlisted = {key: fns for key, fns in in_function_imports().items() if key not in IN_FUNCTION_ALLOWED}
    assert not unlisted, ("imports of ode_nets modules inside functions (move them to the top of the module, or add "
                          "them with a reason to IN_FUNCTION_ALLOWED): "
                          + "; ".join(f"{m} ({', '.join(sorted(set(f)))}) imports {t}" for (m, t), f in unlisted.items()))


def test_the_allowlist_has_no_stale_entries():
    stale = set(IN_FUNCTION_ALLOWED) - set(in_function_imports())
    assert not stale, f"IN_FUNCTION_ALLOWED lists imports that are gone (remove them): {sorted(stale)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(CORE)))
def test_the_numerical_core_knows_no_config(module):
    """Fields, solvers, strategies, solve and models import nothing from ode_nets.config or ode_nets.build,
    directly or through another package module."""
    graph = import_graph()
    direct = [t for t, _ in imports(module) if t.startswith(FORBIDDEN_IN_CORE)]
    assert not direct, f"{module} imports {direct}"
    seen, todo = set(), [module]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert not seen & set(FORBIDDEN_IN_CORE), f"{module} reaches {sorted(seen & set(FORBIDDEN_IN_CORE))}"


def allowed(schema: type, key: str) -> tuple:
    """The names the schema accepts for `key` (the Literal, inside an Optional if there is one)."""
    hint = typing.get_type_hints(schema)[key]
    if typing.get_origin(hint) is not typing.Literal:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    assert typing.get_origin(hint) is typing.Literal, (schema, key, hint)
    return typing.get_args(hint)


@pytest.mark.parametrize("registry, schema, key", [
    (FIELDS, ModelConfig, "field"),
    (SOLVERS, SolverConfig, "method"),
    (SOLVERS, GradientConfig, "adjoint_method"),
    (SOLVERS, BenchConfig, "solver"),
    (STRATEGIES, GradientConfig, "strategy"),
    (READOUTS, ModelConfig, "readout"),
    (DATASETS, DataConfig, "name"),
], ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", None))
def test_registry_names_are_the_schema_literal(registry, schema, key):
    names = allowed(schema, key)
    assert len(set(names)) == len(names)
    assert sorted(names) == sorted(registry), (schema.__name__, key)
