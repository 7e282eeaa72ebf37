"""The documented options, measured beside the shipped defaults in the same ``proj bench`` run.

- Bulk publish: ``proj.tasks.send_many`` (``new-task --file``), pipelined confirms on one channel,
  alternated with pika's confirmed ``basic_publish`` one at a time (the issue's target: 2x).
- The solo worker: ``python -m proj.worker -P solo`` (the task in the worker's main process, no pool
  child; Celery's command line without its other commands), alternated with pika on the drain and
  the 10 ms tasks, with its memory idle and busy.
"""

from __future__ import annotations

import statistics
import time

from proj.bench.fleet import PIKA_QUEUE, CeleryFleet, rss_kib
from proj.bench.load import publish_pika
from proj.bench.run import SECONDS_PER_DOT, Bench, RssSampler, W, say
from proj.bulk import send_many

#: What the solo option runs instead of ``celery -A proj worker -c 1``.
SOLO_ARGS = ("-P", "solo")


class SoloFleet(CeleryFleet):
    """Workers started as ``python -m proj.worker -P solo``: one process each, no pool child."""

    def __init__(self, name: str, url: str, log_dir, n: int):
        super().__init__(name, url, log_dir, n, seconds_per_dot=SECONDS_PER_DOT, extra_args=SOLO_ARGS)

    def _new(self, i: int):
        worker = super()._new(i)
        at = worker.argv.index("worker")
        worker.argv[1 : at + 1] = ["-m", "proj.worker"]  # the rest are the same worker options
        return worker


def start_solo(bench: Bench) -> SoloFleet:
    fleet = SoloFleet("solo", bench.node.url, bench.dir / "workers", W)
    say(f"starting workers: {W} solo (python -m proj.worker -P solo)")
    bench.start_fleets([fleet])
    return fleet


def section_bulk(bench: Bench) -> dict:
    """``send_many(n)`` against pika's ``n`` confirmed publishes one at a time, alternated."""
    n = bench.plan.publish_messages
    say(f"bulk publish: {n} messages with send_many vs pika basic_publish one at a time, {bench.plan.reps} runs each")
    url = bench.node.url
    send_many(["warm-up"], url)

    def bulk() -> float:
        started = time.perf_counter()
        send_many(["bench"] * n, url)
        rate = n / (time.perf_counter() - started)
        bench.probe.purge(bench.celery.queue)
        return rate

    def pika() -> float:
        rate = n / publish_pika(url, PIKA_QUEUE, n)
        bench.probe.purge(PIKA_QUEUE)
        return rate

    runs = bench.alternate({"bulk": bulk, "pika": pika}, bench.plan.reps)
    med = {name: statistics.median(values) for name, values in runs.items()}
    return {"messages": n, "bulk": med["bulk"], "pika": med["pika"], "ratio": med["bulk"] / med["pika"], "runs": runs}


def section_solo(bench: Bench, solo: SoloFleet) -> dict:
    """The solo option on W processes: no-op drain and 10 ms tasks against pika, and its memory."""
    plan = bench.plan
    idle = rss_kib(solo.pids(1))
    no_ops, short = ["bench"] * plan.drain_tasks, ["."] * plan.short_tasks
    say(f"solo option: {plan.drain_tasks} no-op and {plan.short_tasks} 10 ms tasks, W = {W}, vs pika, {plan.reps} runs")
    drain = bench.alternate(
        {"solo": lambda: bench.drain(solo, W, no_ops), "pika": lambda: bench.drain(bench.pika, W, no_ops)}, plan.reps
    )
    sampler = RssSampler({"solo": lambda: solo.pids(1), "pika": lambda: bench.pika.pids(1)})
    with sampler:
        tens = bench.alternate(
            {"solo": lambda: bench.drain(solo, W, short), "pika": lambda: bench.drain(bench.pika, W, short)}, plan.reps
        )
    ceiling = W / SECONDS_PER_DOT
    d = {k: statistics.median(v) for k, v in drain.items()}
    t = {k: statistics.median(v) for k, v in tens.items()}
    return {
        "workers": W,
        "command": "python -m proj.worker -P solo",
        "drain": d["solo"],
        "drain_pika": d["pika"],
        "drain_ratio": d["solo"] / d["pika"],
        "short": t["solo"],
        "short_ratio": t["solo"] / ceiling,
        "idle_kib": idle,
        "busy_kib": sampler.peaks["solo"],
        "pika_busy_kib": sampler.peaks["pika"],
        "runs": {"drain": drain, "short": tens},
    }
