"""The package's import graph follows the layers (data flows down; nothing imports upward).

From the bottom: base helpers (``_validation``, ``backend``, ``_registry``, ``synthetic``,
``assets``) <
``ops`` < ``nn``, ``cache`` < ``methods`` (and ``patterns``) < ``integrations`` < the public
facade (``sparsa/__init__.py``, ``api.py``) < ``eval``, ``bench``, ``train``, ``cost``, ``demo``
< ``cli``. A module may import its own layer and the layers below it. Besides:

* no op folder imports another op folder (what they share lives in ``sparsa/ops/_shared``);
* no import circle between modules.

Every import counts: module level and function local, absolute and relative, including those
under ``if TYPE_CHECKING``. Importing ``a.b.c`` is an edge to ``a.b.c`` only (not to the
parent packages Python also runs). The graph is read from the source with :mod:`ast`; nothing
is imported. To see it: ``python tests/test_layering.py`` prints every violation.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "sparsa"

# rank of each layer; a module may import only modules of its rank or lower
LAYER_RANK = {
    "base": 0,
    "ops": 1,
    "nn": 2,
    "cache": 2,
    "methods": 3,
    "integrations": 4,
    "facade": 5,
    "apps": 6,
    "cli": 7,
}

# first component under ``sparsa`` -> layer (a package folder or a top-level module)
LAYER_OF_TOP = {
    "_validation": "base",
    "backend": "base",
    "_registry": "base",
    "synthetic": "base",
    "assets": "base",
    "ops": "ops",
    "nn": "nn",
    "cache": "cache",
    "methods": "methods",
    "patterns": "methods",
    "integrations": "integrations",
    "api": "facade",
    "eval": "apps",
    "bench": "apps",
    "train": "apps",
    "cost": "apps",
    "demo": "apps",
    "cli": "cli",
    "__main__": "cli",
}

# Violations the code has today. Each entry says why it is still there; remove it with the
# violation (the test fails while an entry no longer occurs, so this list only shrinks).
KNOWN_VIOLATIONS: dict[str, str] = {}


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """``root/ops/nsa/triton.py`` -> ``sparsa.ops.nsa.triton``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of the dotted ``name`` that is a module of the package, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (any import statement anywhere in the file)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_package = path.name == "__init__.py"
        here = mod.split(".") if is_package else mod.split(".")[:-1]     # the package a relative import starts from
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # ``from pkg import sub`` imports the module pkg.sub when there is one, else names of pkg
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != mod:
                    targets.add(target)
        graph[mod] = targets
    return graph


def layer_of(module: str) -> str:
    """The layer of a module of the package (see the module docstring)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"                                 # sparsa/__init__.py
    try:
        return LAYER_OF_TOP[parts[1]]
    except KeyError:
        raise AssertionError(f"{module}: no layer for 'sparsa.{parts[1]}'; add it to LAYER_OF_TOP") from None


def op_folder(module: str) -> str | None:
    """``sparsa.ops.<folder>...`` -> folder (``_shared`` and ``sparsa/ops/__init__.py`` give None)."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "ops" and parts[2] != "_shared":
        return parts[2]
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def violations(graph: dict[str, set[str]], layer=layer_of) -> set[str]:
    """Every broken rule of ``graph``, one line each: an upward import, an import between op
    folders, or an import circle (its modules)."""
    found: set[str] = set()
    for src, targets in graph.items():
        for dst in targets:
            ls, ld = layer(src), layer(dst)
            if LAYER_RANK[ld] > LAYER_RANK[ls]:
                found.add(f"upward: {src} ({ls}) -> {dst} ({ld})")
            fs, fd = op_folder(src), op_folder(dst)
            if fs is not None and fd is not None and fs != fd:
                found.add(f"op folder: {src} -> {dst}")
    for component in cycles(graph):
        found.add("cycle: " + " <-> ".join(component))
    return found


def test_layers_of_the_package():
    graph = import_graph()
    assert "sparsa.ops.block_sparse.triton" in graph and graph["sparsa.ops.block_sparse.triton"]
    found = violations(graph)
    new = sorted(found - set(KNOWN_VIOLATIONS))
    gone = sorted(set(KNOWN_VIOLATIONS) - found)
    assert not new, "imports that break the layering (fix them; see the module docstring):\n  " + "\n  ".join(new)
    assert not gone, "KNOWN_VIOLATIONS entries that no longer occur (delete them):\n  " + "\n  ".join(gone)


def test_every_module_has_a_layer():
    for mod in import_graph():
        assert layer_of(mod) in LAYER_RANK


# ------------------------------------------------------------------ the checker itself can fail

def test_checker_reports_upward_imports_op_folders_and_cycles():
    graph = {
        "sparsa.ops.a.triton": {"sparsa.methods.m"},          # upward: ops -> methods
        "sparsa.methods.m": {"sparsa.ops.a.triton"},          # ... and so a circle
        "sparsa.ops.b.reference": {"sparsa.ops.a.reference", "sparsa.ops._shared.tiles", "sparsa.backend"},
        "sparsa.ops.a.reference": set(),
        "sparsa.ops._shared.tiles": set(),
        "sparsa.backend": set(),
        "sparsa.cache.c": {"sparsa.nn.n"},                    # same rank: allowed
        "sparsa.nn.n": set(),
        "sparsa.eval.x": {"sparsa.api", "sparsa.integrations.hf.apply"},
        "sparsa.api": {"sparsa.methods.m"},
        "sparsa.integrations.hf.apply": {"sparsa.cli"},       # upward: integrations -> cli
        "sparsa.cli": {"sparsa.eval.y"},
        "sparsa.eval.y": {"sparsa.eval.z"},
        "sparsa.eval.z": {"sparsa.eval.y"},                   # a circle inside one layer
    }
    assert violations(graph) == {
        "upward: sparsa.ops.a.triton (ops) -> sparsa.methods.m (methods)",
        "upward: sparsa.integrations.hf.apply (integrations) -> sparsa.cli (cli)",
        "op folder: sparsa.ops.b.reference -> sparsa.ops.a.reference",
        "cycle: sparsa.methods.m <-> sparsa.ops.a.triton",
        "cycle: sparsa.eval.y <-> sparsa.eval.z",
    }


def test_graph_reads_local_relative_and_absolute_imports(tmp_path):
    root = tmp_path / "sparsa"
    (root / "ops" / "k").mkdir(parents=True)
    (root / "methods").mkdir()
    for init in (root, root / "ops", root / "ops" / "k", root / "methods"):
        (init / "__init__.py").write_text("")
    (root / "backend.py").write_text("")
    (root / "methods" / "m.py").write_text("from ..ops.k import ref\n")
    (root / "ops" / "k" / "ref.py").write_text("from ... import backend\n")
    (root / "ops" / "k" / "__init__.py").write_text(
        "def f():\n    from sparsa.methods import m\n    import sparsa.backend\n")
    graph = import_graph(root)
    assert graph["sparsa.methods.m"] == {"sparsa.ops.k.ref"}
    assert graph["sparsa.ops.k.ref"] == {"sparsa.backend"}
    assert graph["sparsa.ops.k"] == {"sparsa.methods.m", "sparsa.backend"}
    assert "upward: sparsa.ops.k (ops) -> sparsa.methods.m (methods)" in violations(graph)


def test_known_violations_give_reasons():
    for entry, reason in KNOWN_VIOLATIONS.items():
        assert entry.split(":")[0] in ("upward", "op folder", "cycle") and reason.strip(), entry


if __name__ == "__main__":
    for line in sorted(violations(import_graph())):
        print(("known  " if line in KNOWN_VIOLATIONS else "NEW    ") + line)
