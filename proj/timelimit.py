"""The hard time limit without its memory cost: a worker's memory stays flat under sustained load.

``task_time_limit`` (proj/config.py) is a guarantee: a hung task fails once and is never redelivered for
ever. Celery's prefork pool enforces it with one timer entry per task (``hub.call_later``), cancelled when
the task ends; kombu's timer keeps a cancelled entry in its heap until the entry's time comes, 1500 s
later. Measured (30,000 no-op tasks drained by one ``celery -A proj worker -c 1``): the main process grew
from 57 to 71 MiB, ~0.5 KiB per task, and would carry rate x task_time_limit of them (about 400 MiB after
25 minutes at 570 tasks/s).

:class:`PurgeCancelledTimers`, a consumer bootstep, drops the cancelled entries every
:data:`PURGE_INTERVAL` seconds, so the heap holds the running tasks' limits and at most one interval's
finished ones. The limit itself is untouched: a running task's entry is never cancelled, so it fires as
before. The one private name this needs is checked in proj/compat.py; without it the step says so once
and the worker runs as Celery's (growing).
"""

from __future__ import annotations

from celery import bootsteps

from proj import compat

#: Seconds between purges: the heap holds at most this many seconds of finished tasks' entries
#: (about 1 MiB at 2,000 tasks/s) and a purge scans them all (well under a millisecond).
PURGE_INTERVAL = 1.0


class PurgeCancelledTimers(bootsteps.StartStopStep):
    """Drop finished tasks' time-limit timers from the event loop's timer every PURGE_INTERVAL seconds."""

    label = "proj: purge finished tasks' time-limit timers"
    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.tref = None

    def start(self, c):
        hub = getattr(c, "hub", None)
        if hub is None or self.tref is not None:
            return  # solo and threads pools: no event loop, no per-task timers
        timer = hub.timer
        if compat.timer_heap(timer) is not None:
            self.tref = timer.call_repeatedly(PURGE_INTERVAL, compat.purge_cancelled, (timer,))

    def stop(self, c):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


def install(app) -> None:
    """Add the bootstep to ``app``'s workers."""
    app.steps["consumer"].add(PurgeCancelledTimers)
