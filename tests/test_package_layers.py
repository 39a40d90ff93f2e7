"""The package's layers: envs -> data -> modules -> adaptation -> callbacks -> cli, no upward import, no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "mql_lightning"
# Each layer may import from the layers before it; the modules beside the layers (stop requests, shipped configs,
# Lightning's private API, the run directory, plots) sit below the first layer that uses them.
LAYERS = ["interrupt", "configs", "envs", "data", "modules", "adaptation", "lightning_internals", "run_directory",
          "callbacks", "plot", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The ``mql_lightning`` modules a file imports at run time (not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skipped = {id(n) for node in guarded for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mql_lightning"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mql_lightning"))
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_from_a_later_layer() -> None:
    upward = [
        (module, target) for module, targets in GRAPH.items() for target in targets
        if target in GRAPH and layer(module) >= 0 and layer(target) > layer(module)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    # A package's __init__ importing its own modules, and a module importing its package, are not cycles of interest.
    edges = {
        m: {t for t in targets if t in GRAPH and t != m and not m.startswith(f"{t}.") and not t.startswith(f"{m}.")}
        for m, targets in GRAPH.items()
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in edges[module]:
            visit(target, (*path, module))
        done.add(module)

    for module in edges:
        visit(module, ())
