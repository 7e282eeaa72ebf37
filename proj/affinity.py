"""One CPU for a threads-pool worker: ``PROJ_CPU_AFFINITY=one``.

A worker of proj's threads pool (proj/threads.py) runs Python in one thread at a time (the GIL): the event loop's
thread takes a message and hands it to a task thread, which runs it and acks; the loop's thread takes the next.
Left to the kernel, the two threads wake each other on different CPUs, and every handoff moves the task's data
from one CPU's cache to the other's. Measured on this project's 2-CPU machine, one worker draining no-op tasks:
1,150-1,250 tasks/s and 550-590 µs of CPU per task unpinned, 1,710 tasks/s and 390 µs pinned to one CPU (the
``-P solo`` figure, where there is no handoff). ``proj bench --variants`` has it as "one CPU per worker".

With ``PROJ_CPU_AFFINITY=one`` the worker claims a CPU of its own as its pool starts and keeps every thread of
its process on it. The claim is a lock file per CPU (``flock``: released when the process ends, however it
ends) in a folder every worker of the host shares (``PROJ_CPU_LOCK_DIR``, default ``/dev/shm``), taken from
the CPU the kernel runs the worker on first, then the next free one: two workers of one host never share a
CPU. When every allowed CPU is claimed, the worker stays unpinned (one log line). Workers that cannot see one
another's lock files (containers with a private ``/dev/shm``) may pick the same CPU: give them a shared
folder, or leave this off. The prefork pool is never pinned (its pool processes are the parallelism).

The cost: a task's code that releases the GIL to compute (compression, numpy) shares its worker's one CPU with
the worker's other threads; such work belongs in the prefork pool anyway.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os

from proj import config

logger = logging.getLogger("proj.affinity")

#: The lock file held by this process (kept open: closing it would release the claim).
_claim = None


def current_cpu() -> int | None:
    """The CPU the calling thread runs on now (glibc's ``sched_getcpu``), or None."""
    try:
        cpu = ctypes.CDLL(None, use_errno=True).sched_getcpu()
    except (OSError, AttributeError):
        return None
    return cpu if cpu >= 0 else None


def claim_cpu(lock_dir: str):
    """Lock a free CPU among those this process may use, the current one first: (cpu, the open lock file), or None.

    The claim lasts as long as the file stays open (the process's life, when :func:`apply` keeps it).
    """
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    here = current_cpu()
    start = allowed.index(here) if here in allowed else 0
    os.makedirs(lock_dir, exist_ok=True)
    for cpu in allowed[start:] + allowed[:start]:
        handle = open(os.path.join(lock_dir, f"proj-cpu-{os.getuid()}-{cpu}.lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return cpu, handle
    return None


def pin_process(cpu: int) -> None:
    """Every thread of this process on ``cpu`` (threads started later inherit it from the one starting them)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def apply() -> int | None:
    """What a threads-pool worker does as its pool starts; the CPU it is pinned to, or None."""
    global _claim
    if config.CPU_AFFINITY != "one" or _claim is not None:
        return None
    try:
        claimed = claim_cpu(config.CPU_LOCK_DIR)
    except OSError as exc:
        logger.warning("PROJ_CPU_AFFINITY=one: no CPU claimed (%s): the worker runs unpinned", exc)
        return None
    if claimed is None:
        logger.warning("PROJ_CPU_AFFINITY=one: no CPU of this worker's is free of another worker: it runs unpinned")
        return None
    cpu, _claim = claimed
    pin_process(cpu)
    logger.info("PROJ_CPU_AFFINITY=one: the worker runs on CPU %d", cpu)
    return cpu
