"""engine/ has no import cycle, counting imports inside functions too (a deferred import is still a dependency)."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse(text: str) -> ast.Module:
    """`ast.parse`, tried again on CPython 3.11.7's "AST constructor recursion depth mismatch".

    That SystemError comes from a process-wide counter that a concurrent `ast` call in another thread (a
    leftover heartbeat, Ray or torch thread of this test process) can overwrite mid-parse; fixed in later 3.11s.
    """
    for attempt in range(3):
        try:
            return ast.parse(text)
        except SystemError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def engine_imports(root: Path = ENGINE) -> dict[str, set[str]]:
    """Every module of the package at `root` → the package's modules it imports (at any depth of its code).

    `from engine import data` counts as importing engine.data (a module), `from engine.x import name` as
    importing engine.x.
    """
    files = {module_name(f, root): f for f in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    top = root.name
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == top or node.module.startswith(top + "."):
                    subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files]
                    deps |= set(subs) if subs else {node.module}
            elif isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against this package
                base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                deps.add(".".join(base + ([node.module] if node.module else [])))
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name == top or a.name.startswith(top + ".")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of the graph (one per strongly connected component of more than one module), each as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def test_engine_has_no_import_cycle():
    cycles = find_cycles(engine_imports())
    assert not cycles, "import cycles in engine/: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_walker_sees_function_level_imports_and_cycles(tmp_path):
    pkg = tmp_path / "engine"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from engine.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from engine.c import X\n")
    (pkg / "c.py").write_text("import json\n\ndef g():\n    from engine import a\n")
    (pkg / "d.py").write_text("from engine.a import thing\n")
    graph = engine_imports(pkg)
    assert graph["engine.a"] == {"engine.sub.b"} and graph["engine.sub.b"] == {"engine.c"}
    assert graph["engine.c"] == {"engine.a"}
    assert find_cycles(graph) == [["engine.a", "engine.c", "engine.sub.b"]]
    (pkg / "c.py").write_text("import json\n")
    assert find_cycles(engine_imports(pkg)) == []
