"""A run's record as plain data: what the event stream says each worker did with each message.

A *run* is one batch of messages sent to one set of workers. Its record is JSON-ready::

    {"label": "unlimited prefetch", "t0": <first publish, epoch s>, "workers": [...],
     "tasks": [{"message": "First message.", "uuid": "...", "dots": 1, "published": ...,
                "deliveries": [{"worker": "w1@host", "received": ..., "started": ...,
                                "finished": ..., "outcome": "succeeded", "redelivered": false}]}],
     "marks": [{"kind": "kill", "at": ..., "worker": "w1@host", "signal": "SIGKILL", ...}]}

Timestamps are the workers' own (the events' ``timestamp``), epoch seconds on this machine.
"""

from __future__ import annotations

from proj.harness.events import TaskRecord

#: Sort order of events that share a timestamp: a delivery is received, started, flagged, finished.
_ORDER = {"received": 0, "started": 1, "redelivered": 2, "succeeded": 3, "failed": 3}


def short(hostname: str | None) -> str:
    """``w1@host`` -> ``w1``: the name people gave the worker."""
    return (hostname or "?").split("@", 1)[0]


def deliveries(task: TaskRecord) -> list[dict]:
    """One entry per time a worker was handed the message, in order, from the task's events."""
    events = [
        (ts, _ORDER[kind], kind, host)
        for kind in ("received", "started", "redelivered", "succeeded")
        for host, ts in getattr(task, kind)
    ]
    events += [(ts, _ORDER["failed"], "failed", host) for host, ts, _ in task.failed]
    out: list[dict] = []
    for ts, _, kind, host in sorted(events):
        if kind == "received":
            out.append(_delivery(host, received=ts))
            continue
        # The latest open delivery on that worker (a pool child's death gives one worker two deliveries).
        current = next((d for d in reversed(out) if d["worker"] == host and d["finished"] is None), None)
        if current is None:  # the recorder missed the task-received event
            current = _delivery(host)
            out.append(current)
        if kind == "started":
            current["started"], current["outcome"] = ts, "running"
        elif kind == "redelivered":
            current["redelivered"] = True
        else:
            current["finished"], current["outcome"] = ts, kind
    return out


def _delivery(host: str, received: float | None = None) -> dict:
    return {
        "worker": host,
        "received": received,
        "started": None,
        "finished": None,
        "outcome": "held",
        "redelivered": False,
    }


def close_abandoned(task: dict, marks: list[dict]) -> None:
    """End the deliveries that a later delivery replaced: at the kill that ended them, if one did."""
    dels = task["deliveries"]
    for i, d in enumerate(dels[:-1]):
        if d["finished"] is not None:
            continue
        begin = d["started"] or d["received"] or 0.0
        kill = next((m for m in marks if m["kind"] == "kill" and m["worker"] == d["worker"] and m["at"] >= begin), None)
        if kill is not None:
            d["finished"], d["outcome"] = kill["at"], "killed"
        else:
            d["finished"], d["outcome"] = dels[i + 1]["received"] or begin, "lost"


def task_entry(published: dict, record: TaskRecord | None) -> dict:
    """A task's JSON entry from what was published and what the event stream says."""
    message = published["message"]
    dels = deliveries(record) if record is not None else []
    return {
        "message": message,
        "uuid": published["uuid"],
        "dots": message.count("."),
        "published": published["published"],
        "deliveries": dels,
        "worker": final_worker({"deliveries": dels}),
        "redelivered": any(d["redelivered"] for d in dels),
        "done": any(d["outcome"] == "succeeded" for d in dels),
    }


def final_worker(task: dict) -> str | None:
    """The worker that finished the task, else the last one that had it."""
    dels = task["deliveries"]
    done = [d for d in dels if d["outcome"] == "succeeded"]
    if done:
        return done[-1]["worker"]
    return dels[-1]["worker"] if dels else None


# -- figures of a run ------------------------------------------------------------------------------


def first_start(run: dict) -> float | None:
    starts = [d["started"] for t in run["tasks"] for d in t["deliveries"] if d["started"] is not None]
    return min(starts) if starts else None


def last_finish(run: dict) -> float | None:
    ends = [d["finished"] for t in run["tasks"] for d in t["deliveries"] if d["outcome"] == "succeeded"]
    return max(ends) if ends else None


def makespan(run: dict) -> float | None:
    """From the first task started to the last one finished, in seconds."""
    begin, end = first_start(run), last_finish(run)
    return None if begin is None or end is None else end - begin


def busy(run: dict) -> dict[str, float]:
    """Seconds each worker spent running a task (killed runs included), by hostname."""
    out = {w["hostname"]: 0.0 for w in run["workers"]}
    for t in run["tasks"]:
        for d in t["deliveries"]:
            if d["started"] is not None and d["finished"] is not None:
                out[d["worker"]] = out.get(d["worker"], 0.0) + d["finished"] - d["started"]
    return out


def idle(run: dict) -> dict[str, float]:
    """Seconds each worker had nothing to run while the run lasted (makespan minus busy)."""
    span = makespan(run) or 0.0
    return {host: max(0.0, span - b) for host, b in busy(run).items()}


def peak_held(run: dict) -> dict[str, int]:
    """The most messages each worker had been handed and not yet finished at one moment."""
    points: dict[str, list[tuple[float, int]]] = {w["hostname"]: [] for w in run["workers"]}
    for t in run["tasks"]:
        for d in t["deliveries"]:
            if d["received"] is None:
                continue
            points.setdefault(d["worker"], []).append((d["received"], +1))
            if d["finished"] is not None:
                points[d["worker"]].append((d["finished"], -1))
    peaks = {}
    for host, steps in points.items():
        level = peak = 0
        for _, step in sorted(steps):  # a finish sorts before a receive at the same instant
            level += step
            peak = max(peak, level)
        peaks[host] = peak
    return peaks


def lower_bound(messages: list[str], seconds_per_dot: float, workers: int) -> float:
    """No schedule beats max(longest task, total work / workers)."""
    work = [m.count(".") * seconds_per_dot for m in messages]
    return max(max(work), sum(work) / workers)


def received_by(run: dict) -> dict[str, list[str]]:
    """The messages each worker was handed first, in the order they were sent."""
    out: dict[str, list[str]] = {w["hostname"]: [] for w in run["workers"]}
    for t in sorted(run["tasks"], key=lambda t: t["published"]):
        if t["deliveries"]:
            out.setdefault(t["deliveries"][0]["worker"], []).append(t["message"])
    return out
