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

from proj.bench.fleet import CeleryFleet, DramatiqFleet, PikaFleet, dramatiq_available, rss_kib
from proj.bench.report import NO_DRAMATIQ
from proj.bench.run import SECONDS_PER_DOT, Bench, Plan, RssSampler, W, say

#: The contenders every variant is also compared with, in the same rotation (not Celery settings).
PEERS = ("pika", "dramatiq")


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
    env: dict = dataclasses.field(default_factory=dict)


VARIANTS = [
    Variant(
        "default",
        "proj.config as shipped: proj's threads pool, -c 1 per worker, events on (published without confirms), "
        "confirms elsewhere",
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
        "events published every 24",
        "worker_consumer = CeleryEventBufferConsumer: Celery's event buffer, published when 24 task events are in "
        "it (every eight tasks), as before proj.consumer.EVENT_BUFFER_LIMIT",
        settings={"worker_consumer": "proj.bench.tuned:CeleryEventBufferConsumer"},
    ),
    Variant(
        "kombu's reader",
        "worker_consumer = KombuReaderConsumer: the broker read a frame at a time, the socket switched to "
        "non-blocking and back around each (kombu's reader), as before proj/reader.py",
        settings={"worker_consumer": "proj.bench.tuned:KombuReaderConsumer"},
    ),
    Variant(
        "one CPU per worker",
        "PROJ_CPU_AFFINITY=one: each worker's threads kept on a CPU of its own (proj/affinity.py)",
        env={"PROJ_CPU_AFFINITY": "one"},
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
        "Celery's threads pool",
        "-P threads -c 1: Celery's own (no hard time limit; each ack and task event wakes the event loop)",
        extra_args=("-P", "threads"),
    ),
    Variant(
        "one worker -c 2",
        "one `celery worker -c 2` (prefetch 2 on one channel, one task per thread) instead of two -c 1",
        concurrency=2,
    ),
    Variant(
        "Celery's threads pool + watchdog",
        "-P threads -c 1 with proj.bench.watchdog: the hard time limit kept by a watchdog thread that records "
        "the failure, acks, and ends the process (its supervisor restarts it); heartbeats, remote control and "
        "events go on during a task",
        extra_args=("-P", "threads", "--include", "proj.bench.watchdog"),
    ),
    Variant(
        "prefork pool",
        "PROJ_POOL=prefork, Celery's default: the task runs in a pool process (main process + pool child, two "
        "pipes per task), killed and replaced past the hard time limit",
        env={"PROJ_POOL": "prefork"},
    ),
    Variant(
        "results wanted",
        "messages sent like .delay() (not ignore_result): each result is published back over rpc://",
        results=True,
    ),
]


def run(plan: Plan, names: list[str] | None = None, work_dir=None) -> dict:
    unknown = set(names or ()) - {v.name for v in VARIANTS} - set(PEERS)
    if unknown:
        known = ", ".join(v.name for v in VARIANTS)
        raise RuntimeError(f"no such variant: {', '.join(sorted(unknown))} (known: {known})")
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
                env=v.env,
            )
        peers = {"pika": PikaFleet("vpika-", url, logs, W, seconds_per_dot=SECONDS_PER_DOT)}
        if dramatiq_available():
            peers["dramatiq"] = DramatiqFleet("vdramatiq-", url, logs, W, seconds_per_dot=SECONDS_PER_DOT)
        else:
            say(NO_DRAMATIQ)
        fleets.update(peers)
        say(
            f"starting {sum(len(f.workers) for f in fleets.values())} workers for {len(chosen)} variants "
            f"and {', '.join(peers)}"
        )
        bench.start_fleets(list(fleets.values()))
        idle = {name: rss_kib(fleet.pids()) for name, fleet in fleets.items()}
        results, busy = {}, {}
        for label, messages in (("no-op", ["bench"] * plan.drain_tasks), ("10 ms", ["."] * plan.short_tasks)):
            say(f"variants: {len(messages)} {label} tasks on {W} processes, {plan.reps} rotations")
            contenders = {
                v.name: lambda v=v: bench.drain(
                    fleets[v.name], len(fleets[v.name].workers), messages, ignore_result=not v.results
                )
                for v in chosen
            }
            contenders.update({name: lambda name=name: bench.drain(fleets[name], W, messages) for name in peers})
            sampler = RssSampler({name: fleet.pids for name, fleet in fleets.items()}) if label == "10 ms" else None
            if sampler:
                sampler.__enter__()
            try:
                runs = bench.alternate(contenders, plan.reps)
            finally:
                if sampler:
                    sampler.__exit__()
            busy = sampler.peaks if sampler else busy
            results[label] = {name: statistics.median(values) for name, values in runs.items()}
            results[f"{label} runs"] = runs
    finally:
        bench.close()
    rows = []
    means = {v.name: v.means for v in chosen}
    means.update(
        pika="the tutorial's worker.py (pika), the reference",
        dramatiq="the peer: dramatiq --processes 1 --threads 1 per worker",
    )
    for name in [*(v.name for v in chosen), *peers]:
        row = {"name": name, "means": means[name], "idle_kib": idle[name], "busy_kib": busy[name]}
        for label in ("no-op", "10 ms"):
            row[label] = results[label][name]
            row[f"{label} ratio"] = results[label][name] / results[label]["default"]
            for peer in peers:
                row[f"{label} vs {peer}"] = results[label][name] / results[label][peer]
        rows.append(row)
    return {
        "workers": W,
        "peers": list(peers),
        "variants": rows,
        "runs": {k: v for k, v in results.items() if k.endswith("runs")},
    }


def markdown(figures: dict) -> str:
    peers = figures.get("peers", [])
    vs = "".join(f" / {p}" for p in peers)
    lines = [
        f"Variants on W = {figures['workers']} worker processes (tasks/s, and the ratio to the default{vs}, "
        "in the same rotation; memory: RSS of every process of the W workers, summed):",
        "",
        f"| Variant | no-op tasks/s | ratio to default{vs} | 10 ms tasks/s | ratio to default{vs} | "
        "RSS idle / busy | what it changes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in figures["variants"]:
        ratios = {
            label: " / ".join(f"{row[k]:.2f}" for k in [f"{label} ratio", *(f"{label} vs {p}" for p in peers)])
            for label in ("no-op", "10 ms")
        }
        lines.append(
            f"| {row['name']} | {row['no-op']:,.0f} | {ratios['no-op']} | {row['10 ms']:,.0f} | {ratios['10 ms']} | "
            f"{row['idle_kib'] / 1024:.0f} / {row['busy_kib'] / 1024:.0f} MiB | {row['means']} |"
        )
    return "\n".join(lines) + "\n"
