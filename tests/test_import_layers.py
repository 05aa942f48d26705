"""The packages of ``ctsr_models`` import one way only (DESIGN.md): ``io`` ← ``physics`` ← ``nets``,
``diffusion``, ``metrics`` ← ``data`` ← ``inference`` ← ``training`` ← ``cli``. Every import statement
counts, including those inside functions and under ``TYPE_CHECKING``."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ctsr_models"

LAYERS: dict[str, int] = {"io": 0, "physics": 1, "nets": 2, "diffusion": 2, "metrics": 2, "data": 3,
                          "inference": 4, "training": 5, "cli": 6}
"""A package may import packages of a lower layer only (not its siblings on the same layer)."""


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = list(rel[:-1])  # the package a relative import starts from (also for ``__init__``)
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


def package_imports() -> dict[str, dict[str, set[str]]]:
    """``{package: {imported package: files}}`` between the sub-packages of ``ctsr_models``."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        for name in _imported_modules(path):
            target = name.split(".")
            if target[0] == "ctsr_models" and len(target) > 1 and target[1] != parts[0]:
                edges[parts[0]][target[1]].add(str(path.relative_to(PACKAGE)))
    return edges


def _cycle(edges: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One import cycle between packages, or ``None``."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, trail + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_every_package_has_a_layer():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(LAYERS), f"packages without a layer in this test: {sorted(packages - set(LAYERS))}"
    assert {"io", "physics", "inference", "training"} <= packages


def test_packages_import_only_lower_layers():
    wrong = [f"{src} -> {dst} ({', '.join(sorted(files))})"
             for src, targets in package_imports().items() for dst, files in targets.items()
             if LAYERS.get(dst, -1) >= LAYERS.get(src, -1)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycle_between_packages():
    assert _cycle(package_imports()) is None


def test_inference_never_imports_training():
    assert "training" not in package_imports().get("inference", {})


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b": {"x"}}, "b": {"c": {"y"}}}, None),
    ({"a": {"b": {"x"}}, "b": {"a": {"y"}}}, ["a", "b", "a"]),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert _cycle(edges) == expected


def test_function_level_and_relative_imports_are_seen(tmp_path, monkeypatch):
    pkg = tmp_path / "ctsr_models"
    (pkg / "inference").mkdir(parents=True)
    (pkg / "inference" / "x.py").write_text("def f():\n    from ..training import run\n    import ctsr_models.cli\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert {k: sorted(v) for k, v in package_imports()["inference"].items()} == {"training": ["inference/x.py"],
                                                                                  "cli": ["inference/x.py"]}
