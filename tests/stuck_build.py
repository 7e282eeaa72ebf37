"""A test build of the worker that widens the stuck-prefetch race: ``celery -A stuck_build worker``.

proj's own app and settings, plus one fault chosen by ``PROJ_TEST_STUCK`` (read only here):

- ``hang-first-child``: the first pool process stalls at start, before its WORKER_UP (in a
  ``worker_process_init`` handler), as a process blocked in its initializer would. Its replacements start
  normally. Celery gives no start-up deadline to the first pool's processes (proj/guard.py).
- ``swallow-first-job``: the pool takes the first job the worker hands it and never runs it, as a pool
  that loses a write would; later jobs run. Only the guard (PROJ_STUCK_AFTER) recovers that message.
  Prefork by default (``build_worker``); with ``PROJ_POOL=threads`` the threads pool's queue loses the job.

``PROJ_TEST_STUCK_MARKER`` names a file created when the fault has fired, so it fires once per test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery.signals import worker_process_init, worker_ready

from proj.celery import app

FAULT = os.environ.get("PROJ_TEST_STUCK", "")
MARKER = Path(os.environ.get("PROJ_TEST_STUCK_MARKER", "/nonexistent/marker"))

__all__ = ["app"]


def _fire_once() -> bool:
    try:
        MARKER.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


@worker_process_init.connect
def hang_first_child(**kwargs) -> None:
    if FAULT == "hang-first-child" and _fire_once():
        print(f"stuck_build: pool process {os.getpid()} hangs at start", flush=True)
        while True:
            time.sleep(3600)


@worker_ready.connect
def swallow_first_job(sender=None, **kwargs) -> None:
    if FAULT != "swallow-first-job":
        return
    if hasattr(sender.controller.pool, "take_back"):  # proj's threads pool (PROJ_POOL=threads): its job queue
        swallow_first_queued_job(sender.controller.pool)
        return
    pool = sender.controller.pool._pool
    put = pool._quick_put

    def quick_put(tup):
        if _fire_once():
            print("stuck_build: the pool swallowed a job", flush=True)
            return None
        return put(tup)

    pool._quick_put = quick_put


class _SwallowingQueue:
    """The threads pool's job queue, as the pool puts to it: the first job is registered but never queued."""

    def __init__(self, jobs):
        self.jobs = jobs

    def put(self, job) -> None:
        if _fire_once():
            print("stuck_build: the pool swallowed a job", flush=True)
            return
        self.jobs.put(job)


def swallow_first_queued_job(pool) -> None:
    # The task threads took the queue's own get() when they started; the pool's on_apply puts through this.
    pool._jobs = _SwallowingQueue(pool._jobs)


def build_worker(name: str, broker_url: str, log_dir: Path, fault: str, **options):
    """A ``WorkerProcess`` (not started) running this build with ``fault``; its marker lives in ``log_dir``."""
    from proj.harness.workers import WorkerProcess

    env = {"PROJ_POOL": "prefork", **(options.pop("env", None) or {})}  # its faults are the prefork pool's
    env.update(
        PROJ_TEST_STUCK=fault,
        PROJ_TEST_STUCK_MARKER=str(Path(log_dir) / f"{name}.fired"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
    )
    worker = WorkerProcess(name, broker_url, log_dir, env=env, **options)
    worker.argv[worker.argv.index("-A") + 1] = "stuck_build"
    return worker
