"""The package's layering, read from the source: the tensor core imports no Ray, MLflow or tracking code, and
no module imports another that imports it back (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

CORE = [
    "aop_ray.tasks",
    "aop_ray.protein.alignment",
    "aop_ray.tasks.protein",
    "aop_ray.protein.potts",
    "aop_ray.models",
    "aop_ray.losses",
    "aop_ray.orders",
    "aop_ray.sampling",
    "aop_ray.aop",
    "aop_ray.grpo",
    "aop_ray.precision",
]
SHELLS = ("ray", "mlflow", "aop_ray.tracking", "aop_ray.training", "aop_ray.tune", "aop_ray.ray_session")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("aop_ray", "envs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module `name` imports, anywhere in its file; `from a import b` counts as `a.b` when that is a module."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _within(module: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_core_imports_no_ray_mlflow_or_tracking_even_indirectly():
    graph = _graph()
    for start in [m for m in graph if _within(m, CORE)]:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            for imported in graph.get(module, ()):
                assert not _within(imported, SHELLS), f"{start} reaches {imported} (through {module})"
                if imported in graph and imported not in seen:
                    seen.add(imported)
                    todo.append(imported)


def test_the_package_has_no_import_cycle():
    graph = _graph()
    internal = {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}
    # A package's __init__ importing its own submodules is how a package exposes them, not a cycle.
    internal = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in internal.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(internal[module]):
            if state.get(imported) == 1:
                cycle = path[path.index(imported) :] + [imported] if imported in path else [module, imported]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(internal):
        if module not in state:
            visit(module, [module])


def test_the_graph_holds_the_edges_the_checks_look_for():
    """The two checks above can fail: function-level and `from` imports of modules are edges of the graph."""
    graph = _graph()
    assert {"aop_ray.training.driver", "aop_ray.pipeline"} <= graph["aop_ray.train"]
    assert any(_within(i, ["ray"]) for i in graph["aop_ray.training.loop"])  # `import ray.train` inside a function
    assert any(_within(i, ["mlflow"]) for i in graph["aop_ray.tracking"])
