"""The import graph of proj/, read from the source: no cycles, and every import inside a function says why.

Pure: no broker, nothing of proj is imported. A module's imports are every ``import``/``from ... import``
of a proj module in it, at module level and inside functions alike (an import inside a function that
closes a cycle is still a cycle: it only moves the failure to run time). ``from proj import x`` is an
import of proj.x when proj/x.py (or proj/x/) exists. Imports under ``if TYPE_CHECKING:`` never run and
are left out.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PROJ = Path(__file__).resolve().parents[1] / "proj"

#: Imports that close a cycle through a module this change could not edit, as (importer, imported).
#: Each is left out of the graph here; any other cycle fails the test.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()

#: Modules whose function-level imports are not checked for a reason comment (none: every one says why).
UNCHECKED_FOR_REASONS: tuple[str, ...] = ()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJ.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PROJ.rglob("*.py"))}


def is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports(tree: ast.Module):
    """Every import statement that can run, with whether it sits inside a function or class (nested)."""

    def walk(node: ast.AST, nested: bool):
        for child in ast.iter_child_nodes(node):
            if is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, nested
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            yield from walk(child, inner)

    yield from walk(tree, False)


def targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The proj modules one import statement loads (the most specific that exists)."""

    def existing(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    if isinstance(node, ast.Import):
        found = {existing(alias.name) for alias in node.names if alias.name.split(".")[0] == "proj"}
        return {m for m in found if m}
    if node.level:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] != "proj":
        return set()
    found = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.add(sub if sub in known else existing(base))
    return {m for m in found if m}


def graph() -> dict[str, set[str]]:
    mods = sources()
    known = set(mods)
    edges: dict[str, set[str]] = {name: set() for name in mods}
    for name, (path, tree) in mods.items():
        for node, _nested in imports(tree):
            edges[name] |= {t for t in targets(name, path, node, known) if t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    found = []
    for component in components:
        members = set(component)
        start = component[0]
        # shortest path from start back to start inside the component (breadth first)
        previous: dict[str, str] = {}
        queue = [start]
        while queue and start not in previous:
            v = queue.pop(0)
            for w in sorted(edges[v] & members):
                if w not in previous:
                    previous[w] = v
                    queue.append(w)
        path = [start]
        v = previous[start]
        while v != start:
            path.append(v)
            v = previous[v]
        found.append([start, *reversed(path[1:]), start])
    return found


def test_the_import_graph_has_no_cycle():
    # Given every import of a proj module in proj/, module level and inside functions
    edges = graph()
    # (less the known imports that close a cycle through a module this change could not edit)
    for importer, imported in KNOWN_CYCLE_EDGES:
        assert imported in edges.get(importer, ()), f"known cycle edge {importer} -> {imported} is gone: remove it"
        edges[importer].discard(imported)
    # Then no module reaches itself
    found = cycles(edges)
    assert not found, "import cycles in proj/:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    # Given a graph a -> b -> c -> a, d -> a
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    # Then the cycle is named, d is not in it
    assert cycles(edges) == [["a", "b", "c", "a"]]


def comment_lines(source: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def test_every_import_inside_a_function_says_why():
    # Given every import inside a function (or class) of proj/ (start-up time, or a cycle that cannot be broken)
    silent = []
    for name, (path, tree) in sources().items():
        if any(name == m or name.startswith(m + ".") for m in UNCHECKED_FOR_REASONS):
            continue
        comments = comment_lines(path.read_text())
        reasoned: set[int] = set()  # end lines of nested imports that have their reason
        for node, nested in sorted(imports(tree), key=lambda item: item[0].lineno):
            if not nested:
                continue
            lines = range(node.lineno - 1, node.end_lineno + 1)
            # Then its reason is a comment on its line(s) or the line above; a run of imports shares one
            if comments.intersection(lines) or node.lineno - 1 in reasoned:
                reasoned.add(node.end_lineno)
            else:
                silent.append(f"{path.relative_to(PROJ.parent)}:{node.lineno}")
    why = "imports inside a function without a comment saying why (start-up time? a cycle?):\n"
    assert not silent, why + "\n".join(silent)
