"""The shipped packages' import graph has no cycles: module-level, in-function and type-checking imports alike
(a cycle that only type hints close is still two modules that cannot be understood apart).

Run as a script to print the graph's cycles: python tests/test_imports.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("realtime", "engines", "templates")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in SHIPPED:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out["avatarcast." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "avatarcast").glob("*.py"):  # the namespace's own modules (the vocabulary)
        if path.stem != "__init__":
            out[f"avatarcast.{path.stem}"] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The shipped modules `path` imports anywhere in its code."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                found.add(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    out = set()
    for name in found:  # `import a.b.c` also imports a and a.b; the edge that matters is the deepest module
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def test_the_shipped_packages_have_no_import_cycle() -> None:
    g = graph()
    assert (
        "avatarcast.realtime.hub" in g and "avatarcast.realtime.runner" in g["avatarcast.realtime.hub"]
    )  # the graph sees real edges
    assert cycles(g) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    for c in cycles(graph()):
        print(" <-> ".join(c))
