"""The documented options, measured beside the shipped defaults in the same ``proj bench`` run.

- Bulk publish: ``proj.tasks.send_many`` (``new-task --file``), pipelined confirms on one channel,
  alternated with pika's confirmed ``basic_publish`` one at a time (the issue's target: 2x).
- The solo worker: ``python -m proj.worker -P solo`` (the task in the worker's main process, no pool
  child, no heartbeats during a task), and Celery's default pool: ``PROJ_POOL=prefork`` (the task in a pool
  process), each alternated with pika and dramatiq on the drain and the 10 ms tasks, with its memory idle
  and busy (every process).
"""

from __future__ import annotations

import statistics
import time

from proj.bench.fleet import PIKA_QUEUE, CeleryFleet, rss_kib
from proj.bench.load import publish_pika
from proj.bench.run import SECONDS_PER_DOT, Bench, RssSampler, W, say
from proj.bulk import send_many

#: Each option (figures key -> worker options, environment, the command as documented): run in place of
#: ``celery -A proj worker -c 1`` (proj's threads pool), launched as ``python -m proj.worker``, which
#: ``celery -A proj worker`` relaunches itself as (proj/worker.py).
OPTIONS = {
    "solo": (("-P", "solo"), {}, "python -m proj.worker -P solo"),
    "prefork": ((), {"PROJ_POOL": "prefork"}, "PROJ_POOL=prefork celery -A proj worker"),
}


class LeanFleet(CeleryFleet):
    """Workers started as ``python -m proj.worker ...`` (what ``celery -A proj worker`` relaunches itself as)."""

    def __init__(self, name: str, url: str, log_dir, n: int, extra_args=(), env=None):
        super().__init__(name, url, log_dir, n, seconds_per_dot=SECONDS_PER_DOT, extra_args=extra_args, env=env)

    def _new(self, i: int):
        worker = super()._new(i)
        at = worker.argv.index("worker")
        worker.argv[1 : at + 1] = ["-m", "proj.worker"]  # the rest are the same worker options
        return worker


def start_options(bench: Bench) -> dict[str, LeanFleet]:
    fleets = {
        key: LeanFleet(key, bench.node.url, bench.dir / "workers", W, extra_args=args, env=env)
        for key, (args, env, _) in OPTIONS.items()
    }
    say(f"starting workers: {W} of each option ({'; '.join(command for _, _, command in OPTIONS.values())})")
    bench.start_fleets(list(fleets.values()))
    return fleets


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


def section_option(bench: Bench, key: str, fleet: LeanFleet) -> dict:
    """One option on W processes: no-op drain and 10 ms tasks against pika (and dramatiq), and its memory."""
    plan = bench.plan
    command = OPTIONS[key][2]
    idle = rss_kib(fleet.pids(1))
    peer_idle = rss_kib(bench.dramatiq.pids(1)) if bench.dramatiq else None
    no_ops, short = ["bench"] * plan.drain_tasks, ["."] * plan.short_tasks
    say(f"{key} option: {plan.drain_tasks} no-op and {plan.short_tasks} 10 ms tasks, W = {W}, {plan.reps} runs")

    def contenders(messages):
        return bench.with_peer(
            {key: lambda: bench.drain(fleet, W, messages), "pika": lambda: bench.drain(bench.pika, W, messages)},
            lambda peer: bench.drain(peer, W, messages),
        )

    drain = bench.alternate(contenders(no_ops), plan.reps)
    watched = {key: lambda: fleet.pids(1), "pika": lambda: bench.pika.pids(1)}
    if bench.dramatiq:
        watched["dramatiq"] = lambda: bench.dramatiq.pids(1)
    sampler = RssSampler(watched)
    with sampler:
        tens = bench.alternate(contenders(short), plan.reps)
    ceiling = W / SECONDS_PER_DOT
    d = {k: statistics.median(v) for k, v in drain.items()}
    t = {k: statistics.median(v) for k, v in tens.items()}
    out = {
        "workers": W,
        "command": command,
        "drain": d[key],
        "drain_pika": d["pika"],
        "drain_ratio": d[key] / d["pika"],
        "short": t[key],
        "short_ratio": t[key] / ceiling,
        "idle_kib": idle,
        "busy_kib": sampler.peaks[key],
        "processes": len(fleet.pids(1)),
        "pika_busy_kib": sampler.peaks["pika"],
        "runs": {"drain": drain, "short": tens},
    }
    if bench.dramatiq:
        out.update(
            drain_dramatiq=d["dramatiq"],
            drain_ratio_dramatiq=d[key] / d["dramatiq"],
            short_dramatiq=t["dramatiq"],
            short_ratio_dramatiq=t[key] / t["dramatiq"],
            dramatiq_idle_kib=peer_idle,
            dramatiq_busy_kib=sampler.peaks["dramatiq"],
        )
    return out
