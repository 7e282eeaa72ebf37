"""The tooling extra (``pip install 'proj[tools]'``): what a command says when it is not installed.

The app (``celery -A proj worker``, ``.delay()``, ``new-task``, Flower, ``proj health|queues|dead``) installs
with celery, kombu and flower only. The commands that drive private nodes, charts and the raw pika reference
import the extra's libraries inside the command; without them they print one line and exit CANNOT_RUN.
"""

from __future__ import annotations

import importlib.util
import sys

from proj.cli.exits import CANNOT_RUN

#: The extra's libraries, by import name (pyproject.toml's ``tools``: pika, matplotlib, pyyaml, honcho).
TOOLS_MODULES = ("pika", "matplotlib", "yaml", "honcho")


def message(command: str) -> str:
    return f"proj{' ' + command if command else ''}: needs the tooling: pip install 'proj[tools]'"


def missing(*modules: str) -> list[str]:
    """Those of ``modules`` that cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(command: str, *modules: str) -> None:
    """Exit with the one line (and CANNOT_RUN) unless every one of ``modules`` is installed."""
    if missing(*modules):
        print(message(command), file=sys.stderr, flush=True)
        sys.exit(CANNOT_RUN)


def is_missing_tool(exc: BaseException) -> bool:
    """Whether ``exc`` is the import of a library of the extra that is not installed."""
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in TOOLS_MODULES
