"""The layering of docs/ARCHITECTURE.md ("Layers"), enforced: every import in ``ensemble_fer/``
and ``pipelines/`` -- at the top, inside functions, under ``TYPE_CHECKING`` and through
``importlib.import_module`` -- runs from a layer to the same layer or one below, never up, and
no two modules import each other, directly or round a longer loop.

Static (``ast``, no module is imported), so it takes well under a second and sees the lazy,
function-level imports that an import-time check would miss.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Lowest first. A module may import from its own layer or any lower one. A layer listing
#: several prefixes holds siblings: they may not import each other (a module imports only its
#: own prefix's modules within that layer). The longest matching prefix wins; ``ensemble_fer``
#: itself (the package's ``__init__``, its public API) matches only exactly, so that a new
#: top-level module must be placed in a layer by name.
EXACT = {"ensemble_fer"}
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("ensemble_fer.errors", "ensemble_fer.labels", "ensemble_fer.memory", "ensemble_fer.paths",
                    "ensemble_fer.tf_startup", "ensemble_fer.distribute", "ensemble_fer.artifacts",
                    "ensemble_fer.release", "ensemble_fer.metrics")),
    ("features", ("ensemble_fer.features",)),
    ("models", ("ensemble_fer.models",)),
    ("ensemble", ("ensemble_fer.ensemble",)),
    ("inference", ("ensemble_fer.inference",)),
    ("training, evaluation", ("ensemble_fer.training", "ensemble_fer.evaluation")),
    ("applications", ("ensemble_fer.demo",)),
    ("package API", ("ensemble_fer",)),
    ("command line", ("pipelines",)),
]


def _modules(root: Path = REPO) -> dict[str, Path]:
    found = {}
    for path in sorted((root / "ensemble_fer").rglob("*.py")) + sorted((root / "pipelines").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _literals(tree: ast.AST) -> dict[str, object]:
    """Module-level ``NAME = <literal>`` values (tuples of names, a dict of stages), to resolve
    ``import_module(f"pkg.{x}")`` over ``for x in NAME`` or ``NAME[key][0]``."""
    out = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def _candidates(expr: ast.expr, loops: dict, literals: dict) -> list | None:
    """Every value ``expr`` can take, when it is a loop name over a literal, a literal, or a
    subscript of one (any key of a dict, a fixed index of its values); else None."""
    if isinstance(expr, ast.Name):
        if expr.id in loops:
            return list(loops[expr.id])
        if expr.id in literals:
            return [literals[expr.id]]
        return None
    if isinstance(expr, ast.Constant):
        return [expr.value]
    if isinstance(expr, ast.Subscript):
        bases = _candidates(expr.value, loops, literals)
        if bases is None:
            return None
        keys = _candidates(expr.slice, loops, literals) if isinstance(expr.slice, ast.Constant) else None
        out = []
        for base in bases:
            if keys is not None:
                out += [base[k] for k in keys]
            elif isinstance(base, dict):
                out += list(base.values())     # any key: every value
            else:
                return None
        return out
    return None


def _dynamic_targets(call: ast.Call, loops: dict, literals: dict) -> list[str] | None:
    """What ``importlib.import_module(arg)`` imports, or None when the test cannot tell."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr):
        pieces = [[]]
        for part in arg.values:
            values = [part.value] if isinstance(part, ast.Constant) else \
                _candidates(part.value, loops, literals) if isinstance(part, ast.FormattedValue) else None
            if values is None or not all(isinstance(v, str) for v in values):
                return None
            pieces = [p + [v] for p in pieces for v in values]
        return ["".join(p) for p in pieces]
    return None


def _is_import_module(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in ("import_module", "__import__")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of this project, line) for every import statement or call in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    loops: dict[str, tuple[str, ...]] = {}
    literals = _literals(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            if isinstance(node.iter, ast.Name) and isinstance(literals.get(node.iter.id), (tuple, list)):
                loops[node.target.id] = tuple(literals[node.iter.id])
            elif isinstance(node.iter, (ast.Tuple, ast.List)):
                try:
                    loops[node.target.id] = tuple(ast.literal_eval(node.iter))
                except ValueError:
                    pass
    found = []

    def add(module: str, line: int):
        if module.split(".")[0] in ("ensemble_fer", "pipelines"):
            found.append((module, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod, ``from mod import name`` mod
                add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module, node.lineno)
        elif isinstance(node, ast.Call) and _is_import_module(node):
            targets = _dynamic_targets(node, loops, literals)
            if targets is None:
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno}: an importlib import this test "
                                     f"cannot resolve; import by a literal name so the layering can be checked")
            for target in targets:
                add(target, node.lineno)
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed it)."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix not in EXACT and module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    if best is None:
        raise AssertionError(f"{module}: in no layer of LAYERS; add it where it belongs (and to docs/ARCHITECTURE.md)")
    return best


def import_graph(root: Path = REPO) -> dict[str, list[tuple[str, int]]]:
    modules = _modules(root)
    graph = {}
    for name, path in modules.items():
        graph[name] = [(target, line) for target, line in imports_of(name, path, modules)
                       if target != name and target in modules]
    return graph


def upward_imports(graph) -> list[str]:
    problems = []
    modules = _modules()
    for name, edges in sorted(graph.items()):
        here, own = layer_of(name)
        for target, line in edges:
            there, theirs = layer_of(target)
            where = f"{modules[name].relative_to(REPO)}:{line}: {name} imports {target}"
            if there > here:
                problems.append(f"{where}, an upward import (layer {LAYERS[here][0]!r} -> {LAYERS[there][0]!r})")
            elif there == here and own != theirs and here != 0:
                problems.append(f"{where}, a sibling of its layer {LAYERS[here][0]!r} ({own} -> {theirs})")
    return problems


def cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    for name in _modules():
        layer_of(name)


def test_no_upward_import():
    problems = upward_imports(import_graph())
    assert not problems, "imports against docs/ARCHITECTURE.md's layers:\n" + "\n".join(problems)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_see_lazy_and_importlib_imports(tmp_path):
    # the checker itself: a function-level upward import, a cycle through importlib
    (tmp_path / "ensemble_fer" / "features").mkdir(parents=True)
    (tmp_path / "ensemble_fer" / "inference").mkdir()
    (tmp_path / "pipelines").mkdir()
    for package in ("ensemble_fer", "ensemble_fer/features", "ensemble_fer/inference", "pipelines"):
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "ensemble_fer" / "features" / "a.py").write_text(
        "def f():\n    from ensemble_fer.inference import b\n")
    (tmp_path / "ensemble_fer" / "inference" / "b.py").write_text(
        "import importlib\nNAMES = ('a',)\nfor n in NAMES:\n    importlib.import_module(f'ensemble_fer.features.{n}')\n")
    modules = _modules(tmp_path)
    graph = {name: [(t, line) for t, line in imports_of(name, path, modules) if t in modules and t != name]
             for name, path in modules.items()}
    assert ("ensemble_fer.inference.b", 2) in graph["ensemble_fer.features.a"]
    assert ("ensemble_fer.features.a", 4) in graph["ensemble_fer.inference.b"]
    assert cycles(graph) == [["ensemble_fer.features.a", "ensemble_fer.inference.b"]]
    assert layer_of("ensemble_fer.features.a")[0] < layer_of("ensemble_fer.inference.b")[0]


@pytest.mark.parametrize("module", ["ensemble_fer.features.augment", "ensemble_fer.models.forward",
                                    "ensemble_fer.metrics", "ensemble_fer.features.image_io"])
def test_shared_building_blocks_sit_below_their_users(module):
    graph = import_graph()
    users = sorted(name for name, edges in graph.items() if any(t == module for t, _ in edges))
    assert users, f"nothing imports {module}"
    assert all(layer_of(user)[0] >= layer_of(module)[0] for user in users)
