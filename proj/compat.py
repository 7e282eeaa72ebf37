"""Every reach into a private name of Celery, kombu, py-amqp or billiard, checked before it is used.

Each reach is an :class:`Internal`: the library and the versions it was written for, the private name,
the feature it buys and what a user loses when it is off. A feature asks :func:`usable` once with the
object it would touch; when the name is missing or has changed shape, the feature is off, one warning
line says so (library, version, feature, what is lost), and the app goes on through Celery's public path.

:data:`INTERNALS` lists them all; :func:`main` checks each against the installed libraries and prints
one line per internal (exit status 1 if any is off).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from celery.utils.log import get_logger

logger = get_logger(__name__)


@dataclass(frozen=True)
class Internal:
    """One private name the app relies on."""

    key: str
    library: str
    written_for: str
    owner: str
    attr: str
    feature: str
    loses: str

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.attr}"


#: kombu's timer keeps a cancelled entry in its heap until the entry's time comes. billiard's prefork pool
#: schedules every task's hard time limit (task_time_limit, 1500 s) and cancels it when the task ends, so a
#: worker's main process carried every finished task's entry for 25 minutes: ~0.5 KiB per task, ~14 MiB
#: after 30,000 no-op tasks (measured, proj/timelimit.py). Purging cancelled entries keeps it flat.
TIMER_HEAP = Internal(
    key="timer-heap",
    library="kombu",
    written_for="5.7",
    owner="kombu.asynchronous.timer.Timer",
    attr="_queue",  # a heapq list of scheduled(eta, priority, entry)
    feature="flat worker memory with task_time_limit (cancelled time-limit timers purged)",
    loses="the worker's main process grows ~0.5 KiB per task for task_time_limit seconds",
)

INTERNALS: tuple[Internal, ...] = (TIMER_HEAP,)

_warned: set[str] = set()


def library_version(library: str) -> str:
    try:
        return version(library)
    except PackageNotFoundError:
        return "not installed"


def turned_off(internal: Internal, why: str) -> None:
    """Say once per process that ``internal``'s feature is off, and what the user loses."""
    if internal.key in _warned:
        return
    _warned.add(internal.key)
    logger.warning(
        "proj.compat: %s %s (written for %s): %s is off, %s: %s",
        internal.library,
        library_version(internal.library),
        internal.written_for,
        internal.feature,
        why,
        internal.loses,
    )


def timer_heap(timer) -> list | None:
    """The heap of kombu ``timer``, or None (and one warning) when it is not the list of ``scheduled``
    tuples this app was written for."""
    heap = getattr(timer, TIMER_HEAP.attr, None)
    if not isinstance(heap, list):
        turned_off(TIMER_HEAP, f"Timer has no {TIMER_HEAP.attr} list")
        return None
    if heap and not _is_scheduled(heap[0]):
        turned_off(TIMER_HEAP, f"Timer.{TIMER_HEAP.attr} holds {type(heap[0]).__name__}, not (eta, priority, entry)")
        return None
    return heap


def _is_scheduled(item) -> bool:
    return isinstance(item, tuple) and len(item) == 3 and hasattr(item[2], "canceled")


def purge_cancelled(timer) -> int:
    """Drop the cancelled entries of kombu ``timer``'s heap now; returns how many were dropped.

    kombu skips a cancelled entry when its time comes; dropping it earlier changes nothing it runs.
    """
    heap = timer_heap(timer)
    if heap is None:
        return 0
    kept = [item for item in heap if not item[2].canceled]
    dropped = len(heap) - len(kept)
    if dropped:
        heapq.heapify(kept)
        heap[:] = kept  # in place: the hub holds this very list
    return dropped


def self_check() -> list[tuple[Internal, str | None]]:
    """Each internal with None if it is usable with the installed libraries, else why not."""
    from kombu.asynchronous.timer import Timer

    results: list[tuple[Internal, str | None]] = []
    timer = Timer()
    timer.call_after(60, print)
    heap = getattr(timer, TIMER_HEAP.attr, None)
    ok = isinstance(heap, list) and len(heap) == 1 and _is_scheduled(heap[0])
    results.append((TIMER_HEAP, None if ok else f"{TIMER_HEAP.name} is not a heap of (eta, priority, entry)"))
    return results


def main(argv: list[str] | None = None) -> int:
    off = 0
    for internal, problem in self_check():
        state = "ok" if problem is None else f"OFF ({problem}): {internal.loses}"
        off += problem is not None
        print(f" [x] {internal.library} {library_version(internal.library)}: {internal.feature}: {state}")
    return 1 if off else 0
