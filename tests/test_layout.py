"""Package layout: no import cycles between simclr's modules (every import counts, also the
ones inside functions; ``if TYPE_CHECKING:`` blocks never run and do not)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simclr"


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its code."""
    mods = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                       "TYPE_CHECKING" for b in node.body for n in ast.walk(b)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "simclr":
                parts = node.module.split(".")
                deps |= ({parts[1]} if len(parts) > 1 else {a.name for a in node.names})
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names
                         if a.name.startswith("simclr.")}
        graph[path.stem] = (deps & mods) - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert {"train", "config", "data", "step"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_train_is_not_a_hub():
    """Statistics live in data, resume rules in checkpoint, the step in step: no other
    module of the package imports the training loop except the entry points that run it."""
    graph = import_graph(PACKAGE)
    importers = sorted(m for m, deps in graph.items() if "train" in deps)
    assert importers == ["cli", "sweep"]  # (__init__ names it for lazy import only)
