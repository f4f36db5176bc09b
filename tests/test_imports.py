"""Imports flow one way: no cycle in ``src/prunesweep``, and the pruning package's layers only import downward.

The graph is read from the source with ``ast`` (nothing is imported), so a function-level import counts as much
as a module-level one, and so do relative imports. ``from X import Y`` is an edge to ``X.Y`` when that is a module,
else to ``X``. Parent packages are not edges: importing ``a.b`` runs ``a/__init__.py`` first, but an
``__init__`` re-exports its children by design, so counting it would make every package a cycle.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: The pruning package's layers, bottom first: a module may import only modules listed before it.
PRUNING_LAYERS = (
    "_util",
    "spec",
    "units",
    "structures",
    "discover",
    "plan",
    "verify",
    "variational",
    "importance",
    "thresholds",
    "sensitivity",
    "planner",
    "reconstruct",
    "measure",
    "schedule",
    "callback",
    "__init__",
)
#: Frameworks the plain-PyTorch engine must not know about; only ``callback`` may import Lightning.
FRAMEWORKS = frozenset({"lightning", "pytorch_lightning", "lightning_fabric", "mlflow", "hydra", "omegaconf"})


@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``src/prunesweep`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((SRC / "prunesweep").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _base(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved against ``name``)."""
    if not node.level:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@cache
def imported(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """``(modules of src/prunesweep that name imports, top-level names of everything it imports)``."""
    path = modules()[name]
    inside: set[str] = set()
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, path, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
        else:
            continue
        roots.update(target.split(".")[0] for target in targets)
        inside.update(target for target in targets if target in modules() and target != name)
    return frozenset(inside), frozenset(roots)


def graph() -> dict[str, frozenset[str]]:
    return {name: imported(name)[0] for name in modules()}


def cycles(edges: dict[str, frozenset[str]]) -> list[str]:
    """Per strongly connected component of more than one module (Tarjan's algorithm): its members and one
    concrete cycle through them, e.g. ``a -> b -> a (in a, b, c)``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [f"{' -> '.join(_cycle_in(c, edges))} (in {', '.join(sorted(c))})" for c in components]


def _cycle_in(component: set[str], edges: dict[str, frozenset[str]]) -> list[str]:
    """A path start -> ... -> start inside ``component`` (breadth-first, so it is a shortest one)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(edges[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    nxt.append(target)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


def test_the_graph_sees_every_kind_of_import() -> None:
    # relative and function-level imports, and `from package import module`, are all edges
    assert "prunesweep.pruning.plan" in imported("prunesweep.pruning.importance")[0]
    assert "prunesweep.pruning.structures" in imported("prunesweep.pruning.planner")[0]
    edges = {"a": frozenset({"b"}), "b": frozenset({"a", "c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert cycles(edges) == ["a -> b -> a (in a, b, c)"]


def test_no_import_cycle_in_src() -> None:
    found = cycles(graph())
    assert not found, "import cycles (one per group of mutually importing modules):\n" + "\n".join(found)


def test_pruning_layers_import_only_downward() -> None:
    package = "prunesweep.pruning"
    present = {name.removeprefix(package + ".") for name in modules() if name.startswith(package + ".")}
    assert present | {"__init__"} == set(PRUNING_LAYERS), "place every pruning module in PRUNING_LAYERS"
    wrong = []
    for rank, layer in enumerate(PRUNING_LAYERS):
        name = package if layer == "__init__" else f"{package}.{layer}"
        for target in imported(name)[0]:
            if target.startswith(package + ".") and PRUNING_LAYERS.index(target.removeprefix(package + ".")) >= rank:
                wrong.append(f"{name} imports {target}, which is not below it")
    assert not wrong, "\n".join(wrong)


def test_pruning_engine_is_plain_pytorch() -> None:
    package = "prunesweep.pruning"
    allowed = {f"{package}.callback": {"pytorch_lightning", "lightning"}}
    wrong = {
        name: sorted((imported(name)[1] & FRAMEWORKS) - allowed.get(name, set()))
        for name in modules()
        if name == package or name.startswith(package + ".")
    }
    assert not {name: found for name, found in wrong.items() if found}
    assert "pytorch_lightning" in imported(f"{package}.callback")[1]  # the check can see a framework import
