"""``celery -A proj worker`` relaunches itself as ``python -m proj.worker`` (proj/worker.py): a lighter process.

``celery`` builds its whole command line before it runs ``worker``: every subcommand, the ``amqp`` shell's
prompt_toolkit, and each installed plugin (Flower registers one, with Tornado), all kept in the worker's
memory for its life. On Celery's ``celeryd_init`` signal (sent as the worker is created, before it connects
or prints its banner) the process replaces itself (``exec``: same PID, same environment, same worker
options) with ``python -m proj.worker``, Celery's own ``worker`` command without the rest. Supervisors, the
Procfile and compose see one process as before. ``PROJ_LEAN_WORKER=0`` keeps Celery's own process; command
lines this does not read (global options other than ``-A proj``, ``-b``, ``--result-backend``, ``--loader``,
``--config``, ``--skip-checks``, whose values Celery has already put in the environment) are left to Celery.
Loaded with the app (proj/celery.py): the signal is sent before the worker imports the app's includes.
"""

from __future__ import annotations

import os
import sys

from celery.signals import celeryd_init

#: ``0`` keeps ``celery -A proj worker`` in Celery's own process (its whole command line in memory).
LEAN_ENV = "PROJ_LEAN_WORKER"
#: Set in the relaunched process, so that it never relaunches again.
RELAUNCHED_ENV = "PROJ_LEAN_WORKER_RELAUNCHED"
#: ``celery``'s global options before ``worker`` that the relaunch carries (each takes a value, which Celery has
#: moved to the environment: CELERY_BROKER_URL, ...), and its flag that it carries the same way.
CARRIED = {"-b", "--broker", "--result-backend", "--loader", "--config"}
CARRIED_FLAGS = {"--skip-checks"}
#: The ``-A`` values that name this app.
APP_NAMES = {"proj", "proj.celery", "proj.celery:app", "proj.celery.app"}


def worker_options(argv: list[str]) -> list[str] | None:
    """The options after ``worker`` of a ``celery -A proj ... worker ...`` command line, else None."""
    app_name = os.environ.get("APP")
    i = 1
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg == "worker":
            return argv[i + 1 :] if app_name in APP_NAMES else None
        if name in ("-A", "--app"):
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else None
            app_name = value
        elif name in CARRIED:
            i += 0 if eq else 1
        elif arg not in CARRIED_FLAGS:
            return None  # -q, -C, --workdir, or something this does not know: Celery's own process
        i += 1
    return None


def interpreter_options() -> list[str]:
    """The Python options the process was started with (``-X importtime``, ...), without ``-m celery``."""
    orig, argv = list(sys.orig_argv), sys.argv
    head = orig[1 : len(orig) - (len(argv) - 1)] if len(argv) > 1 else orig[1:]
    if len(head) >= 2 and head[-2] == "-m":
        head = head[:-2]
    elif head and head[-1] == argv[0]:
        head = head[:-1]
    return head


@celeryd_init.connect
def relaunch_lean(sender=None, **_) -> None:
    """``celery -A proj worker ...`` -> ``python -m proj.worker ...`` in the same process (see the module)."""
    if os.environ.get(LEAN_ENV) == "0" or os.environ.get(RELAUNCHED_ENV):
        return
    options = worker_options(sys.argv)
    if options is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *interpreter_options(), "-m", "proj.worker", *options]
    os.execve(sys.executable, argv, {**os.environ, RELAUNCHED_ENV: "1"})
