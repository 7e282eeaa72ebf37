"""The verdict of a chaos run, from what was published, what the ledger says ran, and the faults.

Pure: no broker, no processes. The counts are those of RabbitMQ's Jepsen checks:

- **lost**: a task the broker confirmed that has no 'done' row. Must be 0.
- **unexpected**: a ledger row whose task id was never published. Must be 0.
- **duplicated**: a task with more than one 'done' row. At-least-once delivery allows it only
  when something interrupted a delivery before its ack: a fault that hit one of the task's
  executions (the process running it was killed or stopped, or the broker restarted, while it ran
  or just after it finished, before the ack could arrive) and the task started again after it, or
  a publish that failed and was sent again. Each extra run needs one such cause, else it is
  **unexplained** and the run fails.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from proj.harness.stats import percentile

#: A task that finished this long before a fault may still have had its ack in flight.
ACK_GRACE = 1.0
#: A task may start just after the fault began (a message already handed to the pool child).
START_GRACE = 1.0
#: At most this many task ids of each kind in the report.
MAX_IDS = 20


@dataclasses.dataclass
class Fault:
    """A fault as injected: when it began and ended, and which processes it hit (None: all, the broker)."""

    kind: str
    begin: float
    end: float
    pids: frozenset[int] | None = None
    worker: str | None = None
    note: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pids"] = sorted(self.pids) if self.pids is not None else None
        return d


@dataclasses.dataclass
class Execution:
    """One run of a task in one process: its 'start' row and, if it finished, its 'done' row."""

    task_id: str
    pid: int
    start: float
    done: float | None = None
    redelivered: bool = False
    message: str = ""


def executions(rows: Iterable[Mapping]) -> dict[str, list[Execution]]:
    """Pair each 'start' row with the next 'done' row of the same task in the same process."""
    by_task: dict[str, list[Execution]] = defaultdict(list)
    open_: dict[tuple[str, int], Execution] = {}
    for row in sorted(rows, key=lambda r: r["at"]):
        key = (row["task_id"], int(row["pid"]))
        if row["event"] == "start":
            ex = Execution(row["task_id"], int(row["pid"]), float(row["at"]), None, bool(row["redelivered"]))
            ex.message = row["message"]
            open_[key] = ex
            by_task[row["task_id"]].append(ex)
        elif row["event"] == "done":
            ex = open_.pop(key, None)
            if ex is None:  # a 'done' without a 'start' cannot happen; count it as its own run
                ex = Execution(row["task_id"], int(row["pid"]), float(row["at"]), None, bool(row["redelivered"]))
                ex.message = row["message"]
                by_task[row["task_id"]].append(ex)
            ex.done = float(row["at"])
    for runs in by_task.values():
        runs.sort(key=lambda e: e.start)
    return by_task


def hit(fault: Fault, ex: Execution) -> bool:
    """Whether ``fault`` could have kept ``ex``'s delivery from being acked."""
    if fault.pids is not None and ex.pid not in fault.pids:
        return False
    if ex.start > fault.end + START_GRACE:
        return False
    return ex.done is None or ex.done >= fault.begin - ACK_GRACE


def check(
    published: Mapping[str, str],
    rows: Iterable[Mapping],
    faults: Iterable[Fault] = (),
    republished: Iterable[str] = (),
    unconfirmed: Iterable[str] = (),
    queue: Mapping | None = None,
) -> dict:
    """Count lost, duplicated (explained or not) and unexpected tasks; measure redelivery latency.

    ``published``: task id -> message, every publish the broker confirmed. ``rows``: the ledger.
    ``republished``: ids whose publish failed once and was sent again (each may exist twice).
    ``unconfirmed``: ids sent but never confirmed (a run cut short); their rows are not unexpected.
    ``queue``: the work queue at the end (``ready``, ``unacked``); anything left fails the run.
    """
    faults = sorted(faults, key=lambda f: f.begin)
    republished = set(republished)
    unconfirmed = set(unconfirmed)
    rows = list(rows)
    runs = executions(rows)
    done_count = Counter(r["task_id"] for r in rows if r["event"] == "done")

    lost = sorted(t for t in published if done_count[t] == 0)
    unexpected = sorted(t for t in runs if t not in published and t not in unconfirmed)
    indeterminate = sorted(t for t in runs if t not in published and t in unconfirmed)
    mismatched = sorted(t for t, rs in runs.items() if t in published and any(e.message != published[t] for e in rs))

    explained: list[str] = []
    unexplained: list[dict] = []
    latencies: list[float] = []
    latencies_by_kind: dict[str, list[float]] = defaultdict(list)
    hits_by_kind: Counter = Counter()
    duplicate_causes: Counter = Counter()
    for task_id, task_runs in runs.items():
        causes = 0
        kinds = []
        for fault in faults:
            for i, ex in enumerate(task_runs):
                if not hit(fault, ex):
                    continue
                again = next((e for e in task_runs[i + 1 :] if e.start >= fault.begin), None)
                if again is None:
                    continue  # the fault did not make it run again (a warm shutdown finished it)
                causes += 1
                kinds.append(fault.kind)
                hits_by_kind[fault.kind] += 1
                latency = max(0.0, again.start - fault.begin)
                latencies.append(latency)
                latencies_by_kind[fault.kind].append(latency)
                break  # one cause per fault and task
        if task_id in republished:
            causes += 1
            kinds.append("republished")
        extra = done_count[task_id] - 1
        if extra <= 0:
            continue
        if causes >= extra:
            explained.append(task_id)
            duplicate_causes.update(set(kinds))
        else:
            unexplained.append(
                {
                    "task_id": task_id,
                    "done": done_count[task_id],
                    "causes": causes,
                    "runs": [dataclasses.asdict(e) for e in task_runs],
                }
            )

    queue = dict(queue) if queue is not None else None
    leftover = queue is not None and bool(queue.get("ready") or queue.get("unacked"))
    duplicated = len(explained) + len(unexplained)
    ok = not lost and not unexpected and not unexplained and not mismatched and not leftover
    return {
        "ok": ok,
        "published": len(published),
        "completed": sum(1 for t in published if done_count[t] > 0),
        "lost": len(lost),
        "lost_ids": lost[:MAX_IDS],
        "duplicated": duplicated,
        "duplicated_explained": len(explained),
        "duplicated_unexplained": len(unexplained),
        "duplicated_by_cause": dict(duplicate_causes),
        "unexplained": unexplained[:MAX_IDS],
        "unexpected": len(unexpected),
        "unexpected_ids": unexpected[:MAX_IDS],
        "indeterminate": len(indeterminate),
        "mismatched": len(mismatched),
        "mismatched_ids": mismatched[:MAX_IDS],
        "republished": len(republished),
        "executions": sum(len(r) for r in runs.values()),
        "interrupted_executions": sum(1 for r in runs.values() for e in r if e.done is None),
        "faults": dict(Counter(f.kind for f in faults)),
        "faults_total": len(faults),
        "redeliveries_after_faults": dict(hits_by_kind),
        "redelivery_latency": _latency(latencies),
        "redelivery_latency_by_fault": {k: _latency(v) for k, v in sorted(latencies_by_kind.items())},
        "queue": queue,
        "leftover": leftover,
    }


def _latency(values: list[float]) -> dict:
    def r(x):
        return None if x is None else round(x, 3)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }
