"""The house rules of the layout, read from the source: configuration passed, not smuggled; one job, one helper.

Pure: no broker. Each test names the rule and the place that breaks it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJ = Path(__file__).resolve().parents[1] / "proj"
#: The app: what `celery -A proj worker`, `.delay()`, `new-task` and Flower's config load: the modules directly
#: in proj/ (and flowerconfig.py). Everything else in proj/ is tooling, and so are the tooling extra's libraries
#: (pyproject.toml, `proj[tools]`): the app installs without them.
TOOLING = (
    "proj.rabbit",
    "proj.harness",
    "proj.cli",
    "proj.lab",
    "proj.chaos",
    "proj.bench",
    "pika",
    "matplotlib",
    "yaml",
    "honcho",
)


def modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PROJ.rglob("*.py"))]


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PROJ.parent)}:{node.lineno}"


def is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def test_no_module_writes_os_environ_to_reach_another():
    # Given every module of proj
    writes = []
    for path, tree in modules():
        for node in ast.walk(tree):
            # When one assigns to os.environ[...], or calls os.environ.update/setdefault/pop, or os.putenv
            targets = node.targets if isinstance(node, ast.Assign) else []
            targets += [node.target] if isinstance(node, ast.AugAssign) else []
            if any(isinstance(t, ast.Subscript) and is_os_environ(t.value) for t in targets):
                writes.append(where(path, node))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                func = node.func
                if is_os_environ(func.value) and func.attr in ("update", "setdefault", "pop", "clear", "__setitem__"):
                    writes.append(where(path, node))
                if isinstance(func.value, ast.Name) and func.value.id == "os" and func.attr in ("putenv", "unsetenv"):
                    writes.append(where(path, node))

    # Then there is none: a URL or setting another part needs is passed to it (children get their env explicitly)
    assert writes == []


def test_no_module_of_the_app_imports_the_tooling():
    # proj/__main__.py is `python -m proj`, the commands' entry point: tooling.
    app = [(path, tree) for path, tree in modules() if path.parent == PROJ and path.name != "__main__.py"]
    flowerconfig = PROJ.parent / "flowerconfig.py"
    app.append((flowerconfig, ast.parse(flowerconfig.read_text(), str(flowerconfig))))
    offenders = []
    for path, tree in app:
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == t or n.startswith(t + ".") for n in names for t in TOOLING):
                offenders.append(where(path, node))
    assert offenders == []


def literal_strings(tree: ast.Module):
    """String constants that are not docstrings (the parts of f-strings included)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


@pytest.mark.parametrize(
    ("text", "home"),
    [
        ("Waiting for messages. To exit press CTRL+C", "proj/console.py"),  # the worker's ready line
        ("proj.tasks.work", "proj/tasks.py"),  # the task's name
    ],
)
def test_a_name_the_tutorial_and_the_broker_see_is_written_once(text, home):
    # proj/bench/pika_worker.py, the raw pika reference, imports no proj module: its copy of the ready line
    # is checked against proj.console's by tests/test_packaging.py.
    found = [
        where(path, node)
        for path, tree in modules()
        if path != PROJ / "bench" / "pika_worker.py"
        for node in literal_strings(tree)
        if node.value == text or (text.startswith("Waiting") and text in node.value)
    ]
    assert len(found) == 1 and found[0].startswith(home + ":"), found


@pytest.mark.parametrize("helper", ["pid_alive", "in_group", "group_alive", "wait_gone", "children_of", "percentile"])
def test_each_process_and_figure_helper_is_defined_once(helper):
    # A private copy (``_wait_gone``) with another meaning counts too: that is how they diverged.
    defined = [
        where(path, node)
        for path, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") == helper
    ]
    assert len(defined) == 1, defined
