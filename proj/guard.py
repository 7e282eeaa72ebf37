"""A worker never sits on a message it does not run: the stuck-prefetch fix and its guard.

The symptom (issue 14): a worker logs "ready", then "Task ... received", then nothing. With prefetch 1
the broker shows 0 ready, 1 unacked: the main process reserved the message but never handed it to a
pool process, and RabbitMQ's consumer_timeout (an hour) is the only thing that would end it.

Root cause found in Celery 5.7 / billiard 4.3 (the prefork pool, ``celery/concurrency/asynpool.py``):
a job goes to a pool process only once that process has sent ``WORKER_UP`` (``AsynPool.on_process_alive``
adds its inqueue to ``_all_inqueues``; ``on_poll_start`` / ``schedule_writes`` write only there). Until
then the job waits in ``outbound_buffer``. For a pool process that never sends ``WORKER_UP`` (stopped or
blocked while it starts, for example in ``process_initializer`` or a ``worker_process_init`` handler) Celery
has a deadline, ``worker_proc_alive_timeout`` (4 s): ``verify_process_alive``, armed by ``on_process_up``.
But ``on_process_up`` is created by ``AsynPool._create_process_handlers`` in ``register_with_event_loop``,
and billiard's ``Pool._create_worker_process`` calls it only if it is set: the processes of the worker's
*first* pool are forked in ``AsynPool.__init__``, before that, so they never get the deadline (only the
replacements of dead processes do). A first pool process that stalls at start is never replaced, its
inqueue never becomes writable for the pool, and the first message the worker reserves, typically one
received a millisecond after "ready" on a full queue, waits for ever. ``did_start_ok`` does not see it
either: it only looks for processes that have exited.

The fix (``arm_start_deadlines``): when the pool registers with the event loop, give every pool process
that has not said ``WORKER_UP`` the same deadline Celery gives replacements; past it the process is killed
and billiard replaces it (the replacement has Celery's own deadline), and the waiting job is written to it.

The guard (``Guard``) covers the whole class, whatever the cause: a message reserved (acks late, not
acked) that has not started while the pool has an idle process for longer than ``PROJ_STUCK_AFTER``
seconds gets one log line, then is taken out of the worker (the pool's buffer or cache, or the semaphore
queue it waits in) and rejected with requeue, so the broker gives it to a worker flagged redelivered. A
message already written to a pool process that never took it is recovered by killing that process:
billiard puts the job back and writes it to the replacement. ``proj health`` asks the guard, through the
``proj_stuck`` remote-control command, what the worker holds without running it.

The fix and the guard read Celery's, billiard's and kombu's private state (``proj.compat.STUCK_GUARD``),
checked when the worker starts, on its own pool. The guard is never off in silence: a missing or changed
name, or any error of the check or of arming the deadlines, is one warning line (``proj.compat: ...``),
the guard stops, and its report says ``off`` with why: ``proj health`` prints "guard off: <why>", and
so does ``celery -A proj inspect proj_stuck`` (its ``guard`` field). The worker keeps running tasks.
"""

from __future__ import annotations

import os
import signal
import time
import weakref

from celery.utils.log import get_logger
from celery.worker import state as worker_state
from celery.worker.control import inspect_command

from proj import compat, config

logger = get_logger(__name__)


# -- The fix: a start-up deadline for the first pool's processes -----------------------------------


def _a() -> dict[str, str]:
    return compat.attrs(compat.STUCK_GUARD)


def _asyn_pool(task_pool):
    """The prefork pool's billiard ``AsynPool``, or None for the solo, threads or green pools."""
    pool = getattr(task_pool, _a()["TaskPool._pool"], None)
    return pool if hasattr(pool, _a()["AsynPool.outbound_buffer"]) else None


def _processes(pool) -> list:
    return list(getattr(pool, _a()["AsynPool._pool"]))


def _is_up(pool, proc) -> bool:
    """Whether ``proc`` has sent WORKER_UP (its inqueue is the one the pool writes jobs to)."""
    return getattr(pool, _a()["AsynPool._fileno_to_inq"]).get(proc.inqW_fd) is proc


def usable(consumer) -> bool:
    """Whether the fix and the guard can read this worker's pool (checked once, at worker start)."""
    controller = consumer.controller
    return compat.usable(
        compat.STUCK_GUARD,
        lambda: compat.guard_problem(controller.pool, getattr(controller, "semaphore", None)),
        stage="worker",
    )


def arm_start_deadlines(task_pool, hub, consumer=None) -> int:
    """Give every pool process that has not said WORKER_UP Celery's ``worker_proc_alive_timeout``.

    Returns how many processes were armed (the first pool's, at the first registration). Any failure
    turns the guard off with one warning; the worker starts as Celery's.
    """
    if consumer is not None and not usable(consumer):
        return 0
    try:
        pool = _asyn_pool(task_pool)
        if pool is None:
            return 0
        armed = 0
        timeout = getattr(pool, _a()["AsynPool._proc_alive_timeout"])
        for proc in _processes(pool):
            if proc.exitcode is None and not _is_up(pool, proc):
                hub.call_later(timeout, _check_started, pool, weakref.ref(proc))
                armed += 1
        return armed
    except Exception as exc:  # noqa: BLE001 - never take the worker's start down
        compat.turned_off(compat.STUCK_GUARD, f"arming the pool's start deadlines failed: {exc!r}")
        return 0


def _check_started(pool, proc_ref) -> None:
    try:
        proc = proc_ref()
        if proc is None or proc.exitcode is not None or _is_up(pool, proc) or proc not in _processes(pool):
            return
        timeout = getattr(pool, _a()["AsynPool._proc_alive_timeout"])
    except Exception as exc:  # noqa: BLE001
        compat.turned_off(compat.STUCK_GUARD, f"a start deadline's check failed: {exc!r}")
        return
    logger.error(
        "pool process %s did not start within %g s (worker_proc_alive_timeout): killed it so that the pool "
        "replaces it and the messages waiting for it run",
        proc.pid,
        timeout,
    )
    _kill(proc.pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- The guard: a message held without running ---------------------------------------------------


class Guard:
    """Checks, in the worker's main process, that every message it reserved starts while a process is idle."""

    def __init__(self, consumer, stuck_after: float = config.STUCK_AFTER):
        self.consumer = consumer
        self.stuck_after = stuck_after
        #: request id -> monotonic time since which it waits while the pool has an idle process.
        self.waiting_since: dict[str, float] = {}
        #: pool process pid -> monotonic time since which it has not said WORKER_UP.
        self.starting_since: dict[int, float] = {}
        self.recovered = 0
        self._timer = None

    @property
    def enabled(self) -> bool:
        return self.off_reason is None

    @property
    def off_reason(self) -> str | None:
        """Why the guard does not run (None: it runs)."""
        if self.stuck_after <= 0:
            return "PROJ_STUCK_AFTER=0"
        why = compat.off().get(compat.STUCK_GUARD.key)
        return None if why is None else f"{why} ({compat.STUCK_GUARD.library} internals, proj.compat)"

    @property
    def interval(self) -> float:
        return max(0.25, min(5.0, self.stuck_after / 4))

    def register_with_event_loop(self, hub) -> None:
        # At every (re)connection: Celery cancels the timers registered for a connection that fails.
        if self.stuck_after > 0:
            usable(self.consumer)  # the warning, once, when the pool is not the one this was written for
        if not self.enabled:
            return
        if self._timer is not None:
            hub.timer.cancel(self._timer)
        self._timer = hub.call_repeatedly(self.interval, self.check)

    # What the worker holds -------------------------------------------------------------------

    def pool_size(self) -> int:
        pool = self.consumer.controller.pool
        return int(getattr(pool, "num_processes", None) or getattr(pool, "limit", None) or 1)

    def held(self) -> list:
        """Requests reserved (and not yet acked) that no pool process has taken."""
        return [r for r in tuple(worker_state.reserved_requests) if r not in worker_state.active_requests]

    def pool_is_idle(self) -> bool:
        return len(worker_state.active_requests) < self.pool_size()

    def observe(self, now: float | None = None) -> list[tuple[object, float]]:
        """Update the clocks; return (request, seconds held while the pool had an idle process)."""
        now = time.monotonic() if now is None else now
        held = self.held() if self.pool_is_idle() else []
        ids = {r.id for r in held}
        for gone in set(self.waiting_since) - ids:
            del self.waiting_since[gone]
        return [(r, now - self.waiting_since.setdefault(r.id, now)) for r in held]

    def report(self) -> dict:
        """What ``proj health`` reads: messages held without running, and for how long."""
        off = self.off_reason
        try:
            held = [{"id": r.id, "name": r.name, "seconds": round(age, 3)} for r, age in self.observe()]
            processes = self.pool_size()
        except Exception:  # noqa: BLE001 - a guard that is off may not be able to look: it says it is off
            held, processes = [], None
        return {
            "guard": "on" if off is None else f"off: {off}",
            "stuck_after": self.stuck_after,
            "pool_processes": processes,
            "active": len(worker_state.active_requests),
            "recovered": self.recovered,
            "held": held,
        }

    # The check -------------------------------------------------------------------------------

    def check(self) -> None:
        if not self.enabled:
            self.stop()
            return
        try:
            now = time.monotonic()
            for request, age in self.observe(now):
                if age > self.stuck_after:
                    self.recover(request, age)
            self.check_starting(now)
        except Exception as exc:  # noqa: BLE001 - never take the event loop down; never off in silence
            compat.turned_off(compat.STUCK_GUARD, f"its check failed: {exc!r}")
            self.stop()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def check_starting(self, now: float) -> None:
        """A pool process that has not said WORKER_UP for longer than the bound is killed (and replaced)."""
        pool = _asyn_pool(self.consumer.controller.pool)
        if pool is None:
            return
        starting = {p.pid: p for p in _processes(pool) if p.exitcode is None and not _is_up(pool, p)}
        for gone in set(self.starting_since) - set(starting):
            del self.starting_since[gone]
        for pid in starting:
            if now - self.starting_since.setdefault(pid, now) > self.stuck_after:
                logger.error(
                    "pool process %s has not started for %.0f s: killed it, the pool replaces it",
                    pid,
                    now - self.starting_since.pop(pid),
                )
                _kill(pid)

    def recover(self, request, age: float) -> None:
        """Take the request out of the worker and give its message back to the broker (or restart its process)."""
        self.waiting_since.pop(request.id, None)
        where, pid = self.take_back(request)
        if where == "process":
            logger.error(
                "task %s %s was held %.0f s without starting (PROJ_STUCK_AFTER=%g) by pool process %s, which took "
                "the message but never started it: killed that process; the pool gives the task to its replacement",
                request.name,
                request.id,
                age,
                self.stuck_after,
                pid,
            )
            _kill(pid)
            self.recovered += 1
            return
        if where == THREAD:  # it runs after all (it was claimed as the guard looked): giving it back runs it twice
            return
        if request.acknowledged:
            logger.error(
                "task %s %s was held %.0f s without starting (PROJ_STUCK_AFTER=%g) but is already acknowledged: "
                "cannot give it back",
                request.name,
                request.id,
                age,
                self.stuck_after,
            )
            return
        logger.error(
            "task %s %s was held %.0f s without starting while the pool was idle (PROJ_STUCK_AFTER=%g, it waited "
            "in %s): gave the message back to the broker, which redelivers it",
            request.name,
            request.id,
            age,
            self.stuck_after,
            where,
        )
        request.reject(requeue=True)
        worker_state.task_ready(request)
        self.recovered += 1

    def take_back(self, request) -> tuple[str, int | None]:
        """Remove ``request`` from wherever it waits in the worker; ``("process", pid)`` if a process holds it."""
        controller = self.consumer.controller
        semaphore = getattr(controller, "semaphore", None)
        a = _a()
        if semaphore is not None:
            waiting = getattr(semaphore, a["LaxBoundedSemaphore._waiting"])
            for entry in list(waiting):
                if entry[1] and entry[1][0] is request:
                    waiting.remove(entry)
                    return "the pool's semaphore queue", None
        take_back = getattr(controller.pool, "take_back", None)  # proj's threads pool (proj/threads.py)
        if take_back is not None:
            return ("the pool's queue" if take_back(request.id) else THREAD), None
        pool = _asyn_pool(controller.pool)
        if pool is None:
            return "the worker", None
        cache, outbound = getattr(pool, a["AsynPool._cache"]), getattr(pool, a["AsynPool.outbound_buffer"])
        job = next((j for j in list(cache.values()) if getattr(j, "correlation_id", None) == request.id), None)
        if job is None:
            return "the worker (in no pool queue)", None
        write_to = getattr(job, a["ApplyResult._write_to"])
        if write_to is not None and write_to.exitcode is None:
            return "process", write_to.pid
        if job in outbound:
            outbound.remove(job)
            where = "the pool's outbound buffer"
        else:
            where = "the pool's job cache"
        cache.pop(getattr(job, a["ApplyResult._job"]), None)
        if semaphore is not None:
            semaphore.release()  # the slot this job took in _process_task_sem
        return where, None


#: Where a request is when a task thread of proj's threads pool has taken it: it runs, nothing to give back.
THREAD = "a task thread"


def guard_of(consumer) -> Guard:
    guard = getattr(consumer, "stuck_guard", None)
    if guard is None:
        guard = consumer.stuck_guard = Guard(consumer)
    return guard


@inspect_command(name="proj_stuck")
def proj_stuck(state) -> dict:
    """Remote control: the messages this worker holds without running them (``proj health``)."""
    return guard_of(state.consumer).report()
