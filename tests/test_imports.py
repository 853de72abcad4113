"""mcsim's import graph has no loop.

The graph is read from the sources (``ast``), not from a running interpreter, so that it holds
every import a module can make: at the top, inside functions (the lazy imports that keep the CLI
light) and under ``TYPE_CHECKING``. An edge goes to the module an import names (``from mcsim.runner
import driver`` names ``mcsim.runner.driver``; ``from mcsim.hardware import Hardware`` names
``mcsim.hardware``); the parent packages a dotted import runs first are not edges (every module
would reach ``mcsim/__init__.py``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import mcsim

PACKAGE = Path(mcsim.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module ``name`` is (or lies in: an attribute of it), within mcsim; None outside."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported mcsim module: line of the first such import}}`` for every module."""
    files = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [_resolve(a.name, modules) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .data import x, from .. import y
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [_resolve(f"{base}.{a.name}", modules) for a in node.names]
            else:
                continue
            for target in targets:
                if target is not None and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; mcsim's graph is shallow enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # the shortest way back to the component's first module
        start, inside = component[0], set(component)
        paths = {start: [start]}
        frontier = [start]
        while frontier:
            v = frontier.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    cycles.append(paths[v] + [start])
                    frontier = []
                    break
                if w in inside and w not in paths:
                    paths[w] = paths[v] + [w]
                    frontier.append(w)
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
    return "import loop: " + "; ".join(steps)


def test_the_import_graph_has_no_loop():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "mcsim.progress" in graph["mcsim.cli"]  # at the top
    assert "mcsim.runner.driver" in graph["mcsim.api"]  # inside a function (``from mcsim.runner import driver``)
    assert "mcsim.api" in graph["mcsim"]  # under TYPE_CHECKING
    assert "mcsim.errors" in graph["mcsim.models"]  # relative (``from .errors import``)
    assert "mcsim.cli" not in graph["mcsim.api"] and "mcsim.scenario" not in graph["mcsim.sweep"]


def test_a_loop_is_found_and_named():
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7, "d": 1}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert _describe(["a", "b", "c", "a"], graph) == "import loop: a (line 3) -> b; b (line 5) -> c; c (line 7) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_the_public_api_is_listed_where_tools_look():
    """``__all__``, ``dir()`` and the ``TYPE_CHECKING`` imports (IDEs) name what ``__getattr__`` loads
    (``import mcsim`` itself stays light: test_cli)."""
    init = PACKAGE / "__init__.py"
    checked = [node for node in ast.walk(ast.parse(init.read_text())) if isinstance(node, ast.If)
               and getattr(node.test, "id", None) == "TYPE_CHECKING"]
    typed = {(f"{n.module}", a.name) for node in checked for n in node.body for a in n.names}
    assert typed == {(module, name) for name, module in mcsim._LAZY.items()}
    assert set(mcsim.__all__) == {"__version__", *mcsim._LAZY} and set(mcsim.__all__) <= set(dir(mcsim))
    for name in mcsim._LAZY:
        assert getattr(mcsim, name).__doc__, name
