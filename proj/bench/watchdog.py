"""A hard time limit for ``-P threads`` (which has none): a watchdog that fails the task, then ends the worker.

Explored for issue 22, item 2 (``proj bench --variants``), not shipped: ``celery -A proj worker -P threads
--include proj.bench.watchdog``. Celery's threads pool runs the task in a thread of the worker's main
process, so heartbeats, remote control and events go on during a task (the main thread runs the event
loop), but nothing can stop a thread: Celery ignores ``task_time_limit`` there. This module keeps the
guarantee the prefork pool gives ("a hung task fails once and is never redelivered"):

- ``task_received`` (main thread) keeps each request; ``task_prerun``/``task_postrun`` (the pool thread)
  mark its start and end: two dictionary operations per task;
- a watchdog thread looks every :data:`CHECK_INTERVAL` seconds; a task running past ``task_time_limit``
  is recorded as failed (``TimeLimitExceeded`` stored in its result backend, logged), its message acked
  (as the prefork pool acks a timed-out task), and the process ends with :data:`EXIT_STATUS`; its
  supervisor (systemd, compose's ``restart:``, honcho) starts it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from billiard.exceptions import TimeLimitExceeded
from celery import signals

CHECK_INTERVAL = 0.5
#: The worker's exit status after a hard time limit (EX_SOFTWARE).
EXIT_STATUS = 70

logger = logging.getLogger("proj.watchdog")
_requests: dict[str, object] = {}
_running: dict[str, tuple[float, object, object]] = {}
_lock = threading.Lock()
_started = threading.Event()


@signals.task_received.connect
def _received(request=None, **_):
    _requests[request.id] = request
    if not _started.is_set():
        _started.set()
        threading.Thread(target=_watch, args=(request.app,), name="proj-watchdog", daemon=True).start()


@signals.task_prerun.connect
def _prerun(task_id=None, task=None, **_):
    limit = task.time_limit or task.app.conf.task_time_limit
    if limit:
        _running[task_id] = (time.monotonic() + limit, task, task.request)


@signals.task_postrun.connect
def _postrun(task_id=None, **_):
    _running.pop(task_id, None)
    _requests.pop(task_id, None)


def _watch(app) -> None:
    while True:
        time.sleep(CHECK_INTERVAL)
        now = time.monotonic()
        for task_id, (deadline, task, context) in list(_running.items()):
            if now > deadline:
                _expire(task_id, task, context)


def _expire(task_id: str, task, context) -> None:
    limit = task.time_limit or task.app.conf.task_time_limit
    exc = TimeLimitExceeded(limit)
    logger.error("Hard time limit (%ss) exceeded for %s[%s]: failed, ending the worker", limit, task.name, task_id)
    try:
        task.backend.mark_as_failure(task_id, exc, request=context)
    except Exception:  # the failure is logged either way
        logger.exception("could not store the failure of %s", task_id)
    request = _requests.get(task_id)
    if request is not None:
        try:
            request.message.ack()
        except Exception:
            logger.exception("could not ack %s", task_id)
    time.sleep(0.2)  # the ack's frame on its way before the socket closes
    os._exit(EXIT_STATUS)
