"""The package's layers, lowest first (impulse_attn/__init__.py states them): no module imports from a layer
above its own, lazily inside a function or not."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "impulse_attn"
LAYERS = [
    {"_validate"},
    {"filters", "targets"},
    {"fitting"},
    {"init"},
    {"attention"},
    {"models", "timm", "families"},
    {"analysis", "plots"},
    {"training", "data"},
    {"backends", "cli", "demo", "__main__"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts == ("__init__.py",):
            continue  # the package root re-exports the public API from every layer
        yield path, rel


def _top(rel: Path) -> str:
    return rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]


def _imported_tops(path: Path, rel: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package_parts = ["impulse_attn", *rel.parts[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "impulse_attn" and len(parts) > 1:
                    yield node.lineno, parts[1]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "impulse_attn":
                    continue
                target = parts[1:]
            else:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = base[1:] + (node.module.split(".") if node.module else [])
            if target:
                yield node.lineno, target[0]
            else:  # "from .. import x": x is a top-level module of the package
                for alias in node.names:
                    yield node.lineno, alias.name


def test_every_module_has_a_layer():
    missing = sorted({_top(rel) for _, rel in _modules()} - set(LEVEL))
    assert not missing, f"add these to LAYERS (and to the package docstring): {missing}"


@pytest.mark.parametrize("path,rel", list(_modules()), ids=lambda v: str(v) if isinstance(v, Path) else "")
def test_no_import_from_a_higher_layer(path, rel):
    own = LEVEL[_top(rel)]
    bad = [(line, top) for line, top in _imported_tops(path, rel) if top in LEVEL and LEVEL[top] > own]
    assert not bad, f"{rel} (layer {own}, {_top(rel)}) imports from higher layers: " + ", ".join(
        f"line {line}: {top} (layer {LEVEL[top]})" for line, top in bad)


def test_the_package_docstring_states_the_same_order():
    import re

    import impulse_attn
    stated = []
    for line in impulse_attn.__doc__.splitlines():
        m = re.match(r"^    (\S.*?)\s{2,}\S", line)
        if m:
            stated.append({name.strip() for name in m.group(1).split(",")})
    assert stated == LAYERS
