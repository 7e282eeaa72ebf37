"""The ledger's rows, written by the workers that load this module: ``--include proj.chaos.ledger_hook``.

``proj chaos`` (and the tests that count tasks) start their workers with that option
(``celery -A proj worker --include proj.chaos.ledger_hook``) and ``PROJ_LEDGER`` naming the SQLite file
(proj/chaos/ledger.py). The task (proj/tasks.py) knows nothing of it; a worker started without the option
writes nothing.

Two Celery signals, both sent in the pool process that runs the task, around its body:

- ``task_prerun``: the "start" row, before the work;
- ``task_postrun`` with state SUCCESS: the "done" row, after the work and before the task's result goes
  back to the main process (and so before the late ack).

The rows are the ones ``proj.tasks.work`` wrote itself before: its task id, its message, the redelivered
flag as :func:`proj.tasks.was_redelivered` reads it from the request, no row of a message the task refuses
(a non-string or an oversized message: it fails before any work), and no "done" row of a run that did not
finish its work (a soft time limit, an exception).
"""

from __future__ import annotations

from celery.signals import task_postrun, task_prerun

from proj.chaos import ledger
from proj.tasks import TASK_NAME, check_message, was_redelivered


def _message(args, kwargs) -> str | None:
    """The task's message if it would run it: None for one it refuses before any work."""
    message = args[0] if args else (kwargs or {}).get("message")
    try:
        return check_message(message)
    except (TypeError, ValueError):
        return None


@task_prerun.connect
def record_start(sender=None, task_id=None, task=None, args=None, kwargs=None, **_) -> None:
    if task is None or task.name != TASK_NAME:
        return
    message = _message(args, kwargs)
    if message is not None:
        ledger.record(task_id, message, "start", was_redelivered(task.request))


@task_postrun.connect
def record_done(sender=None, task_id=None, task=None, args=None, kwargs=None, state=None, **_) -> None:
    if task is None or task.name != TASK_NAME or state != "SUCCESS":
        return
    message = _message(args, kwargs)
    if message is not None:
        ledger.record(task_id, message, "done", was_redelivered(task.request))
