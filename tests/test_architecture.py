"""The package's structure: its layers, lowest first (impulse_attn/__init__.py states them), where no module imports
from a layer above its own; and no import cycle between any two modules, inside a package or across packages.
Imports made lazily inside a function count as much as those at the top of a module."""
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
    {"training"},
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
    tops = {_top(rel) for _, rel in _modules()}
    missing = sorted(tops - set(LEVEL))
    assert not missing, f"add these to LAYERS (and to the package docstring): {missing}"
    gone = sorted(set(LEVEL) - tops)
    assert not gone, f"LAYERS names modules that no longer exist (remove them here and in the docstring): {gone}"


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


# --- import cycles, module by module ------------------------------------------------------------------------------


def _module_name(rel: Path) -> str:
    parts = ["impulse_attn", *rel.parts[:-1]]
    return ".".join(parts if rel.name == "__init__.py" else [*parts, rel.stem])


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def _exists(name: str) -> bool:
    return _is_package(name) or (PACKAGE.parent / (name.replace(".", "/") + ".py")).is_file()


def _type_checking_nodes(tree):
    """Import nodes under ``if TYPE_CHECKING:`` (never run, so never part of a cycle)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                out.update(id(n) for n in ast.walk(child))
    return out


def _module_imports(path: Path, rel: Path):
    """(line, module) for every import of a package module, at any depth (function-level imports included).
    ``from a import b`` names the module a.b when b is a submodule, else a (whose code runs on import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    me = _module_name(rel)
    package = me if rel.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "impulse_attn":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
                if base.split(".")[0] != "impulse_attn":
                    continue
            else:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if _exists(sub) else base


def _import_graph():
    """{module: {imported module: first line}}; importing a.b.c also runs a and a.b (their __init__)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        me = _module_name(rel)
        edges = graph.setdefault(me, {})
        for line, target in _module_imports(path, rel):
            while target and target != me and not me.startswith(target + "."):
                if _exists(target):
                    edges.setdefault(target, line)
                target = target.rpartition(".")[0]
    return graph


def _cycles(graph):
    """The strongly connected components with more than one module (Tarjan), each as one cycle through them."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # one shortest cycle through the component's first module, by breadth-first search
        members, start = set(comp), comp[0]
        parent, queue, found = {start: None}, [start], None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    found = v
                    break
                if w in members and w not in parent:
                    parent[w] = v
                    queue.append(w)
        path = [found]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        path.reverse()
        cycles.append(path + [start])
    return cycles


def _describe(cycle, graph) -> str:
    hops = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(hops + [cycle[-1]])


def test_no_import_cycle_between_modules():
    graph = _import_graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module (line of its import) -> module it imports):\n" + "\n".join(
        "  " + _describe(c, graph) for c in cycles)


def test_the_cycle_check_finds_a_planted_cycle_and_lazy_imports():
    graph = {"p.a": {"p.b": 3}, "p.b": {"p.c": 7}, "p.c": {"p.a": 12}, "p.d": {"p.a": 1}}
    assert _cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]
    assert _describe(_cycles(graph)[0], graph) == "p.a (line 3) -> p.b (line 7) -> p.c (line 12) -> p.a"
    assert _cycles({"p.a": {"p.b": 1}, "p.b": {}}) == []
    # function-level imports are in the graph: the lazy import in training.config's validation of datasets
    assert "impulse_attn.training.data" in _import_graph()["impulse_attn.training.config"]


def test_no_function_is_longer_than_a_screen():
    """Each function reads on one screen (docstring included): about 80 lines at most."""
    import ast
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
