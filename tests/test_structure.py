"""The package's shape: small modules, small classes, no import cycle (deferred imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_msam"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 350


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    assert len(mods) > 20, f"found only {len(mods)} modules under {SRC}"
    return mods


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every package module each module imports, at top level or inside functions."""
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, path.name == "__init__.py")
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            for n in names:
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n != mod and n.startswith("napari_msam"):
                    deps.add(n)
        graph[mod] = deps
    return graph


def _is_package_of(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_module_over_the_limit():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_class_over_the_limit():
    big = {}
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (n := node.end_lineno - node.lineno + 1) > MAX_CLASS_LINES:
                big[f"{mod}.{node.name}"] = n
    assert not big, f"classes over {MAX_CLASS_LINES} lines: {big}"


def test_no_import_cycle():
    """A package's __init__ re-exporting its children is not a cycle; anything else is."""
    graph = _imports(_modules())
    edges = {m: {d for d in ds if not _is_package_of(m, d) and not _is_package_of(d, m)} for m, ds in graph.items()}
    assert sum(map(len, edges.values())) > 100, "the import graph is suspiciously small: is the parser blind?"
    assert "napari_msam.session" in edges["napari_msam.widgets.jobs"] | edges["napari_msam.cli"]
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if seen.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in seen and (cyc := visit(d)):
                return cyc
        stack.pop()
        seen[m] = 2
        return None

    for m in sorted(edges):
        if m not in seen and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))
