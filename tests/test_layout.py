"""Package layout: the tree is the architecture. Every import counts (also the ones inside
functions; ``if TYPE_CHECKING:`` blocks never run and do not): no module imports a higher layer,
no import cycles, and the registries hold exactly the choices the config schema offers."""

import ast
import typing
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "simclr"

# Lowest first. A module imports only modules of its own layer or lower ones.
LAYERS = [
    {"errors"},
    {"runtime"},
    {"config"},
    {"data", "augment", "models"},
    {"train"},
    {"evaluation"},
    {"tools"},
    {"cli"},
    {"__init__", "__main__"},
]
# The one import that runs up a layer: training's kNN monitor uses evaluation's pure functions
# (features of a frozen encoder, the protocols, the labeled splits), not its orchestrator.
TRAIN_MAY_USE = {"evaluation.features", "evaluation.protocols", "evaluation.splits"}


def module_name(path: Path, package: Path) -> str:
    """``train/loop.py`` -> ``train.loop``; ``data/__init__.py`` -> ``data``."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module (``train.loop``) -> the package modules it imports anywhere in its code."""
    paths = sorted(package.rglob("*.py"))
    mods = {module_name(p, package) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name = module_name(path, package)
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
                base = node.module.split(".", 1)[1] if "." in node.module else ""
                for a in node.names:  # `from simclr.train import dist` imports a module
                    sub = f"{base}.{a.name}" if base else a.name
                    deps.add(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".", 1)[1] for a in node.names
                         if a.name.startswith("simclr.")}
        graph[name] = (deps & mods) - {name}
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


def layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, group in enumerate(LAYERS) if top in group)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a higher layer (:data:`LAYERS`, :data:`TRAIN_MAY_USE`)."""
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                  if layer(b) > layer(a)
                  and not (a.split(".")[0] == "train" and b in TRAIN_MAY_USE))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_layer_check_finds_an_upward_import():
    graph = {"data.loader": {"runtime.compute", "train.step"}, "train.monitor":
             {"evaluation.protocols", "evaluation.pipeline"}, "cli": {"tools.sweep"}}
    assert upward_imports(graph) == ["data.loader -> train.step",
                                     "train.monitor -> evaluation.pipeline"]


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert {"train.loop", "config", "data.datasets", "train.step"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_is_in_a_layer_and_imports_only_downward():
    graph = import_graph(PACKAGE)
    for module in graph:
        layer(module)  # StopIteration: a top-level entry that LAYERS does not place
    assert upward_imports(graph) == []


def test_the_top_level_is_the_layers():
    entries = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith(("_", ".")) or
                     p.name in ("__init__.py", "__main__.py"))
    assert entries == ["__init__.py", "__main__.py", "augment", "cli.py", "config", "data",
                       "errors.py", "evaluation", "models", "runtime", "tools", "train"]
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")):
        assert (folder / "__init__.py").is_file(), folder  # a package, not a namespace


def test_train_is_not_a_hub():
    """Statistics live in data, resume rules in the run directory, the step in step: no other
    module of the package imports the training loop except the entry points that run it."""
    graph = import_graph(PACKAGE)
    importers = sorted(m for m, deps in graph.items()
                       if deps & {"train.pretrain", "train.loop"} and not m.startswith("train."))
    assert importers == ["cli", "tools.sweep"]  # (__init__ names it for lazy import only)


@pytest.mark.parametrize("key,registry", [
    ("data.name", "simclr.data.datasets:DATASETS"),
    ("optim.name", "simclr.train.optim:OPTIMIZERS"),
    ("optim.name", "simclr.config.schema:OPTIM_DEFAULTS"),
    ("train.step_rule", "simclr.train.optim:STEP_RULES"),
    ("model.shortcut", "simclr.models.resnet:SHORTCUTS"),
    ("model.init", "simclr.models.resnet:INITS"),
])
def test_registries_hold_the_schemas_choices(key, registry):
    import importlib

    from simclr.config import Config

    section, name = key.split(".")
    choices = typing.get_args(typing.get_type_hints(type(getattr(Config(), section)))[name])
    module, attr = registry.split(":")
    assert set(getattr(importlib.import_module(module), attr)) == set(choices)


def test_our_resnets_are_the_schemas():
    from simclr.config import RESNETS
    from simclr.models.resnet import ARCHS

    assert tuple(ARCHS) == RESNETS
