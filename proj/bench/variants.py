"""``proj bench --variants``: one setting changed at a time, against the shipped configuration.

Each variant is a set of worker processes that differ from the default ones in one respect (a
Celery setting, the pool, the number of processes per worker, or the messages they get), run in
the same rotation as the default workers on the same broker. The figures are tasks per second for
no-op tasks and for 10 ms tasks on W = 2 processes, and each one's ratio to the default: a setting
worth changing shows a ratio well above 1 in both.
"""

from __future__ import annotations

import dataclasses
import statistics

from proj.bench.fleet import CeleryFleet
from proj.bench.run import SECONDS_PER_DOT, Bench, Plan, W, say


@dataclasses.dataclass
class Variant:
    name: str
    #: What it changes, and what it costs in guarantees.
    means: str
    settings: dict = dataclasses.field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    #: Worker processes per `celery worker` (W in total either way).
    concurrency: int = 1
    #: Messages sent the way `.delay()` sends them (a result is published back for each).
    results: bool = False


VARIANTS = [
    Variant(
        "default",
        "proj.config as shipped: prefork -c 1 per worker, events on (published without confirms), confirms elsewhere",
    ),
    Variant(
        "events off",
        "worker_send_task_events = False: Flower and the event stream see no task events",
        settings={"worker_send_task_events": False},
    ),
    Variant(
        "no confirms in the worker",
        "broker_transport_options = {} in workers only: events (and results) published without waiting "
        "for the broker; producers keep confirms",
        settings={"broker_transport_options": {}},
    ),
    Variant(
        "events confirmed (before)",
        "worker_consumer = ConfirmedEventsConsumer: task events wait for the broker's confirm, as before "
        "proj.consumer published them without",
        settings={"worker_consumer": "proj.bench.tuned:ConfirmedEventsConsumer"},
    ),
    Variant(
        "one worker -c 2",
        "W processes in one `celery worker -c W` instead of W single-process workers",
        concurrency=2,
    ),
    Variant(
        "solo pool",
        "-P solo: the task runs in the worker's main process (no pool child, no pipe); a long task blocks heartbeats",
        extra_args=("-P", "solo"),
    ),
    Variant(
        "solo pool, no confirms in the worker",
        "both of the above",
        settings={"broker_transport_options": {}},
        extra_args=("-P", "solo"),
    ),
    Variant(
        "threads pool", "-P threads -c 1: the task runs in a thread of the main process", extra_args=("-P", "threads")
    ),
    Variant(
        "one worker -c 2",
        "one `celery worker -c 2` (prefetch 2 on one channel, one task per pool process) instead of two -c 1",
        concurrency=2,
    ),
    Variant(
        "results wanted",
        "messages sent like .delay() (not ignore_result): each result is published back over rpc://",
        results=True,
    ),
]


def run(plan: Plan, names: list[str] | None = None, work_dir=None) -> dict:
    chosen = [v for v in VARIANTS if names is None or v.name in names or v.name == "default"]
    bench = Bench(plan, work_dir)
    try:
        bench.start_broker()
        logs, url = bench.dir / "workers", bench.node.url
        fleets = {}
        for i, v in enumerate(chosen):
            workers = W // v.concurrency
            fleets[v.name] = CeleryFleet(
                f"v{i}-",
                url,
                logs,
                workers,
                seconds_per_dot=SECONDS_PER_DOT,
                management_url=bench.node.management_url,
                settings=v.settings,
                concurrency=v.concurrency,
                extra_args=v.extra_args,
            )
        say(f"starting {sum(len(f.workers) for f in fleets.values())} celery workers for {len(chosen)} variants")
        bench.start_fleets(list(fleets.values()))
        results = {}
        for label, messages in (("no-op", ["bench"] * plan.drain_tasks), ("10 ms", ["."] * plan.short_tasks)):
            say(f"variants: {len(messages)} {label} tasks on {W} processes, {plan.reps} rotations")
            runs = bench.alternate(
                {
                    v.name: lambda v=v: bench.drain(
                        fleets[v.name], len(fleets[v.name].workers), messages, ignore_result=not v.results
                    )
                    for v in chosen
                },
                plan.reps,
            )
            results[label] = {name: statistics.median(values) for name, values in runs.items()}
            results[f"{label} runs"] = runs
    finally:
        bench.close()
    rows = []
    for v in chosen:
        row = {"name": v.name, "means": v.means}
        for label in ("no-op", "10 ms"):
            row[label] = results[label][v.name]
            row[f"{label} ratio"] = results[label][v.name] / results[label]["default"]
        rows.append(row)
    return {"workers": W, "variants": rows, "runs": {k: v for k, v in results.items() if k.endswith("runs")}}


def markdown(figures: dict) -> str:
    lines = [
        f"Variants on W = {figures['workers']} worker processes (tasks/s, and the ratio to the default, "
        "in the same rotation):",
        "",
        "| Variant | no-op tasks/s | ratio | 10 ms tasks/s | ratio | what it changes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in figures["variants"]:
        lines.append(
            f"| {row['name']} | {row['no-op']:,.0f} | {row['no-op ratio']:.2f} | {row['10 ms']:,.0f} | "
            f"{row['10 ms ratio']:.2f} | {row['means']} |"
        )
    return "\n".join(lines) + "\n"
