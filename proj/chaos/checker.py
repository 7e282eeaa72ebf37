"""The verdict of a chaos run, from what was published, what the ledger says ran, and the faults.

Pure: no broker, no processes. :func:`count` counts, :func:`explain` explains each duplicate, and
:func:`check` puts both into a :class:`Verdict`. The counts are those of RabbitMQ's Jepsen checks:

- **lost**: a task the broker confirmed that has no 'done' row. Must be 0.
- **unexpected**: a ledger row whose task id was never published. Must be 0.
- **duplicated**: a task with more than one 'done' row. At-least-once delivery allows it only
  when something interrupted a delivery before its ack: a fault that hit one of the task's
  executions (the process running it was killed or stopped, or the broker restarted, while it ran
  or just after it finished, before the ack could arrive) and the task started again after it, or
  a publish that failed and was sent again. Each extra run needs one such cause, else it is
  **unexplained** and the run fails.
- **held**: a message a worker held without starting it (while a pool process was idle) for longer
  than the run's bound, or a worker that did not answer for that long (seen by the run's watch, not
  by the count). Must be none: the worker's guard gives such a message back sooner.
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


@dataclasses.dataclass
class Counts:
    """What ran, against what was published: every id list complete and sorted."""

    published: int
    completed: int
    lost_ids: list[str]
    unexpected_ids: list[str]
    #: Rows of tasks sent but never confirmed (a run cut short): neither published nor unexpected.
    indeterminate_ids: list[str]
    #: Tasks that ran with another message than the one published.
    mismatched_ids: list[str]
    executions: int
    interrupted_executions: int


def count(
    published: Mapping[str, str],
    runs: Mapping[str, list[Execution]],
    done_count: Mapping[str, int],
    unconfirmed: set[str],
) -> Counts:
    """Lost, unexpected, indeterminate and mismatched tasks, and the executions."""
    return Counts(
        published=len(published),
        completed=sum(1 for t in published if done_count[t] > 0),
        lost_ids=sorted(t for t in published if done_count[t] == 0),
        unexpected_ids=sorted(t for t in runs if t not in published and t not in unconfirmed),
        indeterminate_ids=sorted(t for t in runs if t not in published and t in unconfirmed),
        mismatched_ids=sorted(
            t for t, rs in runs.items() if t in published and any(e.message != published[t] for e in rs)
        ),
        executions=sum(len(r) for r in runs.values()),
        interrupted_executions=sum(1 for r in runs.values() for e in r if e.done is None),
    )


@dataclasses.dataclass
class Explanation:
    """Which duplicates a fault (or a republish) explains, and how long redelivery took after each fault."""

    explained: list[str] = dataclasses.field(default_factory=list)
    unexplained: list[dict] = dataclasses.field(default_factory=list)
    #: Explained duplicates by the kind of their cause(s).
    causes: Counter = dataclasses.field(default_factory=Counter)
    #: Task executions a fault cut off and that ran again after it, by fault kind.
    hits: Counter = dataclasses.field(default_factory=Counter)
    #: Fault begin -> the task started again, by fault kind.
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    def all_latencies(self) -> list[float]:
        return [x for kind in self.latencies.values() for x in kind]


def redeliveries(task_runs: list[Execution], faults: list[Fault]) -> list[tuple[str, float]]:
    """(fault kind, latency) of each fault that cut off one of the task's runs and made it run again."""
    found = []
    for fault in faults:
        for i, ex in enumerate(task_runs):
            if not hit(fault, ex):
                continue
            again = next((e for e in task_runs[i + 1 :] if e.start >= fault.begin), None)
            if again is None:
                continue  # the fault did not make it run again (a warm shutdown finished it)
            found.append((fault.kind, max(0.0, again.start - fault.begin)))
            break  # one cause per fault and task
    return found


def explain(
    runs: Mapping[str, list[Execution]],
    done_count: Mapping[str, int],
    faults: list[Fault],
    republished: Mapping[str, int],
) -> Explanation:
    """Each extra 'done' of a task needs one cause: a fault that cut off one of its runs, or a send after a failure."""
    result = Explanation()
    for task_id, task_runs in runs.items():
        found = redeliveries(task_runs, faults)
        kinds = [kind for kind, _ in found]
        for kind, latency in found:
            result.hits[kind] += 1
            result.latencies[kind].append(latency)
        kinds.extend(["republished"] * republished.get(task_id, 0))
        extra = done_count[task_id] - 1
        if extra <= 0:
            continue
        if len(kinds) >= extra:
            result.explained.append(task_id)
            result.causes.update(set(kinds))
        else:
            result.unexplained.append(
                {
                    "task_id": task_id,
                    "done": done_count[task_id],
                    "causes": len(kinds),
                    "runs": [dataclasses.asdict(e) for e in task_runs],
                }
            )
    return result


@dataclasses.dataclass
class Verdict:
    """The checker's answer; its fields, in order, are the keys of its JSON form."""

    ok: bool
    published: int
    completed: int
    lost: int
    lost_ids: list[str]
    duplicated: int
    duplicated_explained: int
    duplicated_unexplained: int
    duplicated_by_cause: dict[str, int]
    unexplained: list[dict]
    unexpected: int
    unexpected_ids: list[str]
    indeterminate: int
    mismatched: int
    mismatched_ids: list[str]
    republished: int
    executions: int
    interrupted_executions: int
    faults: dict[str, int]
    faults_total: int
    redeliveries_after_faults: dict[str, int]
    redelivery_latency: dict
    redelivery_latency_by_fault: dict[str, dict]
    queue: dict | None
    leftover: bool
    #: Messages held without starting past the bound: worker, hostname, task id (None: a silent worker), seconds.
    held: list[dict] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check(
    published: Mapping[str, str],
    rows: Iterable[Mapping],
    faults: Iterable[Fault] = (),
    republished: Mapping[str, int] | Iterable[str] = (),
    unconfirmed: Iterable[str] = (),
    queue: Mapping | None = None,
    held: Iterable[Mapping] = (),
) -> Verdict:
    """Count lost, duplicated (explained or not) and unexpected tasks; measure redelivery latency.

    ``published``: task id -> message, every publish the broker confirmed. ``rows``: the ledger.
    ``republished``: task id -> sends after a failed send (each copy may exist; an id alone: one such send).
    ``unconfirmed``: ids sent but never confirmed (a run cut short); their rows are not unexpected.
    ``queue``: the work queue at the end (``ready``, ``unacked``); anything left fails the run.
    ``held``: what the watch found held without starting past its bound; anything fails the run.
    """
    faults = sorted(faults, key=lambda f: f.begin)
    republished = Counter(republished)  # ids alone: one such send each
    rows = list(rows)
    runs = executions(rows)
    done_count = Counter(r["task_id"] for r in rows if r["event"] == "done")
    held = [dict(h) for h in held]
    # A held message is on the broker, unacknowledged, not lost: the held verdict accounts for it.
    counts = count(published, runs, done_count, set(unconfirmed))
    held_ids = {h["task_id"] for h in held}
    counts.lost_ids = [t for t in counts.lost_ids if t not in held_ids]
    why = explain(runs, done_count, faults, republished)

    queue = dict(queue) if queue is not None else None
    leftover = queue is not None and bool(queue.get("ready") or queue.get("unacked"))
    ok = not (counts.lost_ids or counts.unexpected_ids or why.unexplained or counts.mismatched_ids or leftover or held)
    return Verdict(
        ok=ok,
        published=counts.published,
        completed=counts.completed,
        lost=len(counts.lost_ids),
        lost_ids=counts.lost_ids[:MAX_IDS],
        duplicated=len(why.explained) + len(why.unexplained),
        duplicated_explained=len(why.explained),
        duplicated_unexplained=len(why.unexplained),
        duplicated_by_cause=dict(why.causes),
        unexplained=why.unexplained[:MAX_IDS],
        unexpected=len(counts.unexpected_ids),
        unexpected_ids=counts.unexpected_ids[:MAX_IDS],
        indeterminate=len(counts.indeterminate_ids),
        mismatched=len(counts.mismatched_ids),
        mismatched_ids=counts.mismatched_ids[:MAX_IDS],
        republished=len(republished),
        executions=counts.executions,
        interrupted_executions=counts.interrupted_executions,
        faults=dict(Counter(f.kind for f in faults)),
        faults_total=len(faults),
        redeliveries_after_faults=dict(why.hits),
        redelivery_latency=_latency(why.all_latencies()),
        redelivery_latency_by_fault={k: _latency(v) for k, v in sorted(why.latencies.items())},
        queue=queue,
        leftover=leftover,
        held=held,
    )


def _latency(values: list[float]) -> dict:
    def r(x):
        return None if x is None else round(x, 3)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }
