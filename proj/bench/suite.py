"""One ``proj bench`` run: every section in order, the shipped defaults (proj/bench/run.py) and the
documented options (proj/bench/options.py) on one private broker; the figures as one dict.

Apart from both so that each imports neither: the options' sections build on run.py's :class:`Bench`.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

from proj.bench import options
from proj.bench.run import SECONDS_PER_DOT, Bench, Plan, W, versions


def run(plan: Plan, work_dir: Path | None = None) -> dict:
    """Every section, in one run on one private broker; returns the figures."""
    began = time.monotonic()
    bench = Bench(plan, work_dir)
    interrupted = []

    def on_term(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        bench.start()
        option_fleets = options.start_options(bench)
        machine = versions(bench.node)
        memory = bench.section_memory_idle()
        publish = bench.section_publish()
        bulk = options.section_bulk(bench)
        drain, events = bench.section_drain()
        short, busy = bench.section_short()
        memory.update({"celery_busy_kib": busy["celery"], "pika_busy_kib": busy["pika"]})
        if "dramatiq" in busy:
            memory["dramatiq_busy_kib"] = busy["dramatiq"]
        capacity = next(row["celery"] for row in drain if row["workers"] == W)
        latency = bench.section_latency(capacity)
        dispatch = bench.section_dispatch()
        redelivery = bench.section_redelivery()
        chosen = {key: options.section_option(bench, key, fleet) for key, fleet in option_fleets.items()}
    finally:
        bench.close()
        signal.signal(signal.SIGTERM, old)
    return {
        "machine": machine,
        "plan": dataclasses.asdict(plan),
        "seconds_per_dot": SECONDS_PER_DOT,
        "drain": drain,
        "events": events,
        "short_tasks": short,
        "publish": publish,
        "bulk": bulk,
        **chosen,
        "latency": latency,
        "dispatch": dispatch,
        "redelivery": redelivery,
        "memory": memory,
        "elapsed_seconds": time.monotonic() - began,
        "work_dir": str(bench.dir),
    }
