"""Two layers, one distribution: the app installs alone, the tooling comes with ``pip install 'proj[tools]'``.

Pure: no broker. What ``pip install proj`` gives (pyproject.toml), what the app loads at run time, what the
raw pika reference loads, what a command says when the tooling is not installed, and the compose files an
installed proj carries. The static rule (no module of the app imports the tooling) is tests/test_layout.py's.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from proj.cli.exits import CANNOT_RUN
from proj.cli.tools import TOOLS_MODULES
from proj.harness import compose

REPO = Path(__file__).resolve().parent.parent
PIKA_WORKER = REPO / "proj" / "bench" / "pika_worker.py"
#: The tooling, by import name: proj's tooling packages and the tools extra's libraries.
TOOLING = ("proj.rabbit", "proj.harness", "proj.cli", "proj.lab", "proj.chaos", "proj.bench", *TOOLS_MODULES)


def loaded_modules(code: str, cwd: Path = REPO) -> list[str]:
    """The names in sys.modules after ``code`` runs in a fresh interpreter (which prints nothing else)."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def is_tooling(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TOOLING)


def test_the_app_depends_on_celery_kombu_and_flower_and_the_tooling_is_an_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}

    # celery, kombu, flower, and the libraries the app reaches into privately, pinned to the tested minors
    assert names(project["dependencies"]) == {"celery", "kombu", "flower", "amqp", "billiard", "vine"}
    assert all("<" in r for r in project["dependencies"]), project["dependencies"]
    assert names(project["optional-dependencies"]["tools"]) == {"pika", "honcho", "matplotlib", "pyyaml", "dramatiq"}


def test_the_worker_and_the_producer_load_none_of_the_tooling():
    # Given what `celery -A proj worker` loads (the app, its includes, the consumer steps), what .delay()
    # and new-task load, and Flower's config
    code = (
        "import proj, proj.tasks, proj.signals, proj.worker, proj.consumer, proj.guard, proj.failover, "
        "proj.deadletter, proj.results, proj.bulk, proj.new_task, proj.management\n"
        "import flower.command, flowerconfig  # Flower defines the options its config reads\n"
        "proj.app.loader.import_default_modules()"
    )
    # Then none of the tooling is in sys.modules (but yaml: kombu imports it by itself when it is installed, to
    # register its yaml serializer; that proj's app never imports it is tests/test_layout.py's static check)
    assert [m for m in loaded_modules(code) if is_tooling(m) and m.split(".")[0] != "yaml"] == []


def test_the_pika_reference_imports_pika_and_the_standard_library_only():
    # Statically: every import of the file
    tree = ast.parse(PIKA_WORKER.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"pika"}

    # And at run time, as proj bench starts it (python -P FILE): nothing of Celery or proj is loaded
    code = (
        f"sys.argv = [{str(PIKA_WORKER)!r}, '--help']\n"
        "import contextlib, io, runpy\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    runpy.run_path({str(PIKA_WORKER)!r}, run_name='__main__')"
    )
    loaded = loaded_modules(code, cwd=Path("/"))
    assert "pika" in loaded
    assert [m for m in loaded if m.split(".")[0] in ("proj", "celery", "kombu", "amqp", "billiard", "vine")] == []


def test_the_pika_reference_prints_the_ready_line_of_proj_workers():
    from proj.bench import pika_worker
    from proj.console import READY_LINE

    assert pika_worker.READY_LINE == READY_LINE


def test_the_packaged_compose_files_are_the_repositorys():
    # An installed proj (no repository) runs `proj chaos --compose` on these copies (proj/harness/compose.py):
    # after a change to a compose file at the repository's root, copy it to proj/harness/compose_files/.
    for name in compose.COMPOSE_NAMES:
        packaged = compose.PACKAGED_COMPOSE_DIR / name
        assert packaged.read_bytes() == (REPO / name).read_bytes(), f"cp {name} {packaged.relative_to(REPO)}"


@pytest.mark.parametrize(
    ("args", "blocked"),
    [
        (["lab", "all"], "matplotlib"),
        (["bench"], "pika"),
        (["chaos", "--compose"], "yaml"),
    ],
)
def test_a_command_that_needs_the_tooling_says_so_in_one_line_without_it(args, blocked):
    # Given an interpreter where a library of the tools extra cannot be imported
    code = f"import sys\nsys.modules[{blocked!r}] = None\nfrom proj.cli import main\nsys.exit(main({args!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")

    # Then the command prints one line naming the extra and exits CANNOT_RUN, before doing anything
    assert result.returncode == CANNOT_RUN, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [f"proj {args[0]}: needs the tooling: pip install 'proj[tools]'"]
    assert result.stdout == ""
