"""Tasks in threads of the worker's own process, with the hard time limit kept: ``PROJ_POOL=threads``.

A Celery pool (``worker_pool = "proj.threads:TaskThreads"``, Celery's public extension point for pools): one
thread per unit of concurrency runs the task; the worker's main thread keeps its event loop, so AMQP
heartbeats, remote control (``celery inspect``) and task events go on while a task runs, and one process
holds the whole worker (no pool process, no pipes). What it keeps of the prefork pool's guarantees:

- acks late: the task's thread acks its message as the task returns (py-amqp writes each frame under a
  lock); a worker that dies (killed, OOM, connection lost) never acked, and the broker hands the message to
  another worker;
- fair dispatch: ``-c N`` runs N threads and prefetches N messages;
- the hard time limit (``task_time_limit``): a watchdog thread fails an overdue task once (Celery's own
  timeout handling: logged, stored, ``task-failed`` event, message acked), interrupts its thread and gives
  the slot a new thread at once. A thread cannot be killed: the interruption is an exception raised in it
  at its next Python instruction; one still running ``PROJ_ABANDON_GRACE`` seconds later (blocked in C: a
  read with no timeout) ends the worker with a warm shutdown, so its supervisor (compose's ``restart:``,
  systemd) starts a clean one. ``revoke(terminate=True)`` and Celery's cancelling of a lost connection's
  tasks interrupt a task the same way (its thread then ends when it next runs Python: no grace, no exit).
  A soft time limit (``task_soft_time_limit``, unset in proj) is not enforced, as in Celery's threads pool.

What it gives up: a task that crashes the interpreter (a segfault in a C extension, ``os._exit``) ends the
worker, not a pool process (its message goes back to the queue, acks late); CPU-bound tasks in N threads
share one core (the GIL); use the prefork pool for those.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import queue
import signal
import threading
import time

from billiard.exceptions import WorkerLostError
from celery.concurrency.base import BasePool, apply_target

from proj import affinity, config

logger = logging.getLogger("proj.threads")

#: Seconds between the watchdog's looks at the running tasks' deadlines (a task fails this much late, at most).
CHECK_INTERVAL = 0.25

_local = threading.local()


def on_task_thread() -> bool:
    """True in a thread of a :class:`TaskThreads` pool (proj.consumer sends its acks at once from there)."""
    return getattr(_local, "task_thread", False)


class Interrupted(BaseException):
    """Raised in a task's thread that the pool gave up (time limit, terminate): not a task failure (a
    BaseException, so Celery's tracer records nothing more; the failure is already recorded)."""


@dataclasses.dataclass(eq=False)
class Job:
    target: object
    args: tuple
    kwargs: dict
    callback: object
    accept_callback: object
    timeout_callback: object
    timeout: float | None
    correlation_id: str | None = None
    thread: threading.Thread | None = None
    started: float | None = None
    #: Set once the pool gave the job up: its thread's callbacks (the ack, the events) must not run.
    abandoned: bool = False
    #: Set by :meth:`TaskThreads.take_back` while it waited in the queue: no thread runs it.
    taken_back: bool = False


def _raise_in(ident: int, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next Python instruction (CPython's C API)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


class TaskThreads(BasePool):
    """N task threads in the worker's process; see the module's documentation."""

    body_can_be_buffer = True
    signal_safe = False

    def on_start(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[int, Job] = {}  # thread id (threading.get_ident) -> job
        self._queued: dict[str | None, Job] = {}  # task id -> job not started yet
        self._threads: list[threading.Thread] = []
        self._abandoned: list[tuple[float, Job]] = []
        self._stopping = threading.Event()
        self.timeout = self.options.get("timeout")
        for _ in range(self.limit or 1):
            self._add_thread()
        threading.Thread(target=self._watch, name="proj-pool-watchdog", daemon=True).start()
        affinity.apply()

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"proj-task-{len(self._threads) + 1}", daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- a task thread ----------------------------------------------------------------------------

    def _serve(self) -> None:
        _local.task_thread = True
        me = threading.current_thread()
        ident = threading.get_ident()  # the id PyThreadState_SetAsyncExc takes
        get = self._jobs.get
        while True:  # until a None (warm shutdown), or the pool gives up this thread's job (it has a new one)
            job = get()
            if job is None:
                return
            with self._lock:  # claimed here, or taken back by take_back(): never both
                if job.taken_back:
                    continue
                self._queued.pop(job.correlation_id, None)
            job.thread = me
            try:
                self._run(job, ident)
            except Interrupted:  # landed outside the task (after it returned): the thread ends below
                pass
            except BaseException:  # a callback failed (Celery logs its own errors): the slot goes on
                logger.exception("task thread %s: %s failed", me.name, job.correlation_id)
            if job.abandoned:
                return  # the pool replaced this thread

    def _run(self, job: Job, ident: int) -> None:
        """Run the job: Interrupted, when the pool gave it up, ends up here (apply_target reports it to the
        callback as a lost worker; the callback of an abandoned job does nothing) or in :meth:`_serve`."""
        job.started = time.monotonic()
        with self._lock:
            self._running[ident] = job

        def finished(result) -> None:
            with self._lock:
                self._running.pop(ident, None)
            if not job.abandoned:
                job.callback(result)
                return
            how = "interrupted" if getattr(result, "type", None) is WorkerLostError else "finished"
            logger.warning(
                "task %s, given up by the pool, %s in thread %s: nothing of it reported",
                job.correlation_id,
                how,
                threading.current_thread().name,
            )

        try:
            if job.accept_callback:
                # Celery's "pid" of the process running the task: this thread's id, for terminate_job().
                job.accept_callback(ident, job.started)
            # Celery's own: the task (its tracer), then the callback; what the task raises past the tracer
            # (SystemExit, this pool's Interrupted) is reported to the callback as WorkerLostError.
            apply_target(job.target, job.args, job.kwargs, finished)
        finally:
            with self._lock:
                self._running.pop(ident, None)

    # -- the watchdog -----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(CHECK_INTERVAL):
            now = time.monotonic()
            with self._lock:
                running = list(self._running.items())
            for ident, job in running:
                hard = job.timeout or self.timeout
                if hard and now - job.started > hard:
                    self._abandon(ident, job, hung=True)
                    self._call(job.timeout_callback, False, hard)
            self._check_abandoned(now)

    def _abandon(self, ident: int, job: Job, hung: bool = False) -> None:
        """Give the job up: no callback of its thread runs, the thread is interrupted and replaced.

        ``hung``: it ran past its hard time limit, so a thread still running ABANDON_GRACE seconds after the
        interruption is stuck outside Python and ends the worker. A task terminated for another reason (revoked,
        its connection lost) may legitimately finish a long sleep first: its thread is left to end on its own.
        """
        with self._lock:
            if job.abandoned or self._running.get(ident) is not job:
                return
            job.abandoned = True
            self._running.pop(ident, None)
            if hung:
                self._abandoned.append((time.monotonic(), job))
            self._threads.remove(job.thread)
        _raise_in(ident, Interrupted)
        if not self._stopping.is_set():
            self._add_thread()

    def _check_abandoned(self, now: float) -> None:
        for since, job in list(self._abandoned):
            if not job.thread.is_alive():
                self._abandoned.remove((since, job))
            elif now - since > config.ABANDON_GRACE:
                self._abandoned.remove((since, job))
                logger.error(
                    "a task interrupted %.0f s ago still runs in thread %s (blocked outside Python): ending the "
                    "worker with a warm shutdown, for its supervisor to start a clean one",
                    now - since,
                    job.thread.name,
                )
                os.kill(os.getpid(), signal.SIGTERM)

    @staticmethod
    def _call(callback, *args) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # the watchdog goes on
            logger.exception("a time-limit callback failed")

    # -- Celery's pool interface ------------------------------------------------------------------

    def on_apply(self, target, args=None, kwargs=None, callback=None, accept_callback=None, **options):
        job = Job(
            target,
            args or (),
            kwargs or {},
            callback,
            accept_callback,
            options.get("timeout_callback"),
            options.get("timeout"),
            options.get("correlation_id"),
        )
        with self._lock:
            self._queued[job.correlation_id] = job
        self._jobs.put(job)

    def take_back(self, correlation_id: str) -> bool:
        """Remove a job no thread has started (proj/guard.py gives its message back): True if it was queued."""
        with self._lock:
            job = self._queued.pop(correlation_id, None)
            if job is None:
                return False
            job.taken_back = True
            return True

    def terminate_job(self, pid, signal=None) -> None:
        """``revoke(terminate=True)``, or a lost connection's acks-late tasks: interrupt the task's thread."""
        with self._lock:
            job = self._running.get(pid)
        if job is not None:
            self._abandon(pid, job)

    def on_stop(self) -> None:
        """Warm shutdown: the running tasks finish (Celery waits for them), then each thread ends."""
        self._stopping.set()
        threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()

    def on_terminate(self) -> None:
        """Cold shutdown: nothing more waits; the threads are daemons and end with the process."""
        self._stopping.set()

    def on_close(self) -> None:
        self._stopping.set()

    def _get_info(self) -> dict:
        info = super()._get_info()
        info.update(
            {
                "max-concurrency": self.limit,
                "threads": len(self._threads),
                "processes": [os.getpid()],
                "timeouts": (0, self.timeout or 0),
            }
        )
        return info

    @property
    def num_processes(self) -> int:
        return self.limit
