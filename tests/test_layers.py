"""The shape of the library: dgnet's import graph (imports inside functions included) has no cycle, no module
imports a command, commands sit at the top level, and the folders form layers that import only downwards.
A command is a module that runs as ``python -m``: it has an ``if __name__ == "__main__":`` block (or is a
package's ``__main__``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dgnet"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(ROOT.rglob("*.py"))}


def _is_command(name: str, tree: ast.Module) -> bool:
    if name.endswith(".__main__"):
        return True
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            left, comps = node.test.left, node.test.comparators
            if isinstance(left, ast.Name) and left.id == "__name__" and any(
                    isinstance(c, ast.Constant) and c.value == "__main__" for c in comps):
                return True
    return False


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The dgnet modules ``name`` imports anywhere in its body (functions included), resolved to known modules:
    ``from dgnet.x import y`` counts as importing ``dgnet.x.y`` when that is a module, else ``dgnet.x``."""
    package = name if name in known and (ROOT.parent / name.replace(".", "/") / "__init__.py").exists() \
        else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "dgnet":
                    add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "dgnet":
                continue
            for a in node.names:
                full = f"{mod}.{a.name}"
                add(full if full in known else mod)
    return found


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imports(n, t, known) for n, t in mods.items()}, {n for n, t in mods.items() if _is_command(n, t)}


def test_the_walk_sees_imports_inside_functions(graph):
    """A check that the walk itself works: training imports the protocol only inside a function."""
    edges, commands = graph
    assert "dgnet.data.pipeline_dali" in edges["dgnet.data.streams"]  # DALI is optional: imported where used
    assert {"dgnet.train", "dgnet.test"} <= commands and "dgnet.training.loop" not in commands


def test_no_module_imports_a_command(graph):
    edges, commands = graph
    bad = sorted(f"{a} -> {b}" for a, deps in edges.items() for b in deps & commands)
    assert not bad, "modules importing a command module: " + ", ".join(bad)


def test_no_import_cycle(graph):
    edges, _ = graph
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if m.startswith(n + "."):  # a package importing its own submodules is how packages are built
                continue
            if state.get(m) == 1:
                cycles.append(path[path.index(m):] + [m])
            elif m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# The library's layers, bottom up: a module imports its own layer and those below, never one above. The package
# ``dgnet`` itself (its lazy public names, ``__version__``) and commands are outside the layers.
LAYERS = (
    {"ops", "kernels", "_C"},
    {"config", "losses", "fileio", "runtime", "distributed", "profiling", "data", "models"},
    {"checkpoints", "evaluation"},
    {"training", "inference", "generative"},
    {"studies"},  # whole runs (training, generation, evaluation) over arms and seeds
)
# Top-level modules that are not commands: the few every layer needs. Everything else lives in a folder.
SHARED = {"config", "losses", "fileio", "runtime", "distributed", "profiling"}


def _layer(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return next((i for i, names in enumerate(LAYERS) if part in names), None)


def test_commands_sit_at_the_top_level(graph):
    """``python -m dgnet.X`` for every command; a folder's only commands are the data tools' ``__main__``."""
    _, commands = graph
    nested = sorted(c for c in commands if c.count(".") > 1 and not c.endswith(".__main__"))
    assert not nested, "commands inside a folder: " + ", ".join(nested)


def test_top_level_holds_commands_and_a_few_shared_modules(graph):
    edges, commands = graph
    top = {n.split(".")[1] for n in edges if n.count(".") == 1 and n not in commands}
    folders = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert top - folders <= SHARED, f"library modules at the top level: {sorted(top - folders - SHARED)}"


def test_layers_import_only_downwards(graph):
    edges, commands = graph
    bad = []
    for a, deps in edges.items():
        la = _layer(a)
        if a in commands or la is None:
            continue
        bad += [f"{a} -> {b}" for b in deps if (lb := _layer(b)) is not None and lb > la]
    assert not bad, "imports up the layers: " + ", ".join(sorted(bad))
