"""``proj bench --soak SECONDS``: memory under sustained load, proj's worker beside the reference workers.

One private node; one ``celery -A proj worker -c 1`` (the shipped settings: hard time limit, events,
acks late, prefetch 1), one tutorial pika worker and one dramatiq worker (when installed), each fed no-op
tasks by its own steady producer at the same rate, a fraction of the Celery worker's capacity measured
first, all at once for SECONDS. Every few seconds the RSS of every worker process is sampled beside the
tasks its queue has acked (the broker's cumulative ``ack`` count). The figure is the slope of RSS against tasks
done, in KiB per 1,000 tasks, fitted by least squares after a warm-up, with its 95 % interval
(2 standard errors).

Noise: RSS moves in whole pages, and an allocator grows its arenas in steps, so a flat process still
shows a step of a page or a few now and then (a single 4 KiB step over the run gives a slope whose
interval excludes zero). A slope is read as flat when its interval holds zero, or when the growth it
fits over the whole run is under :data:`NOISE_KIB`; the leak this exists to catch (every finished task's
time-limit timer kept) was ~480 KiB per 1,000 tasks, several MiB over any soak.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from proj.bench.fleet import (
    CeleryFleet,
    DramatiqFleet,
    DramatiqProcess,
    PikaFleet,
    PikaProcess,
    dramatiq_available,
    rss_kib,
)
from proj.bench.load import command as load_command
from proj.bench.run import SECONDS_PER_DOT, TIMEOUT, Bench, Plan, say, versions
from proj.harness.processes import children_of
from proj.harness.workers import REPO_ROOT
from proj.rabbit.management import Management

#: The share of one Celery worker's drain capacity both producers offer (steady, not a backlog).
FRACTION = 0.3
#: Seconds between samples (the broker's statistics refresh every 5 s).
SAMPLE_INTERVAL = 5.0
#: The share of the run left out of the fit: start-up, first connections, caches filling.
WARM_UP = 0.2
#: Fitted growth over a whole run below which a slope is noise: 16 pages, a few allocator steps.
NOISE_KIB = 64
#: No-op tasks drained to measure the Celery worker's capacity.
CAPACITY_TASKS = 3000


def slope(points: list[tuple[float, float]]) -> dict:
    """Least-squares slope of y over x, its standard error and the fit's point count."""
    n = len(points)
    if n < 3:
        return {"slope": None, "stderr": None, "points": n}
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return {"slope": None, "stderr": None, "points": n}
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    sse = sum((y - a - b * x) ** 2 for x, y in points)
    return {"slope": b, "stderr": math.sqrt(sse / (n - 2) / sxx), "points": n}


def acked(mgmt: Management, queue: str) -> int:
    stats = (mgmt.queue(queue) or {}).get("message_stats") or {}
    return int(stats.get("ack", 0))


def _producer(url: str, kind: str, queue: str, rate: float, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(load_command(kind, url, queue, round(rate, 1), seconds, out), cwd=REPO_ROOT)


def run(plan: Plan, seconds: float, work_dir: Path | None = None, fraction: float = FRACTION) -> dict:
    """The soak: returns per contender its samples and the fitted slopes."""
    began = time.monotonic()
    bench = Bench(plan, work_dir)
    producers: list[subprocess.Popen] = []
    try:
        bench.start_broker()
        url, logs = bench.node.url, bench.dir / "workers"
        celery = CeleryFleet(
            "soak-celery", url, logs, 1, seconds_per_dot=SECONDS_PER_DOT, management_url=bench.node.management_url
        )
        pika = PikaFleet("soak-pika", url, logs, 1, seconds_per_dot=SECONDS_PER_DOT)
        # The references keep no per-task records here: they would be memory they grow by design.
        pika.workers = [PikaProcess("soak-pika1", url, logs, seconds_per_dot=SECONDS_PER_DOT, record=False)]
        fleets = {"celery": celery, "pika": pika}
        if dramatiq_available():
            dramatiq = DramatiqFleet("soak-dramatiq", url, logs, 1, seconds_per_dot=SECONDS_PER_DOT)
            dramatiq.workers = [
                DramatiqProcess("soak-dramatiq1", url, logs, seconds_per_dot=SECONDS_PER_DOT, record=False)
            ]
            fleets["dramatiq"] = dramatiq
        else:
            say("dramatiq is not installed (pip install 'proj[tools]'): its column is left out")
        say(f"starting workers: one each of {', '.join(fleets)}")
        bench.start_fleets(list(fleets.values()))
        capacity = bench.drain(celery, 1, ["bench"] * CAPACITY_TASKS)
        rate = capacity * fraction
        say(f"capacity {capacity:.0f} tasks/s; soak: {rate:.0f} tasks/s to each for {seconds:.0f} s")
        machine = versions(bench.node)
        mgmt = Management(bench.node.management_url)
        for kind, fleet in fleets.items():
            fleet.resume(1)
            bench.probe.wait(fleet.queue, lambda ready, consumers: consumers == 1, 60, f"{kind} consuming")
        # The capacity drain's acks reach the broker's statistics up to a few seconds late.
        deadline = time.monotonic() + 60
        while acked(mgmt, celery.queue) < CAPACITY_TASKS - 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        base = {kind: acked(mgmt, fleet.queue) for kind, fleet in fleets.items()}
        for kind, fleet in fleets.items():
            producers.append(_producer(url, kind, fleet.queue, rate, seconds, bench.dir / f"soak-{kind}.json"))
        samples: dict[str, list[dict]] = {kind: [] for kind in fleets}
        start = time.monotonic()
        next_at = start
        while any(p.poll() is None for p in producers):
            next_at += SAMPLE_INTERVAL
            time.sleep(max(0.0, next_at - time.monotonic()))
            t = time.monotonic() - start
            for kind, fleet in fleets.items():
                row = {"t": t, "tasks": acked(mgmt, fleet.queue) - base[kind], "total_kib": rss_kib(fleet.pids(1))}
                if kind == "celery":  # the main process (where the timers were) apart from the pool process
                    main = celery.workers[0].pid
                    row.update(main_kib=rss_kib([main]), pool_kib=rss_kib(children_of(main)))
                samples[kind].append(row)
            if t > seconds + TIMEOUT:
                raise TimeoutError(f"the soak's producers still run {t:.0f} s after a {seconds:.0f} s soak")
        failed = [p.returncode for p in producers if p.returncode]
        if failed:
            raise RuntimeError(f"a soak producer exited with status {failed[0]}")
    finally:
        for p in producers:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        bench.close()
    result = {"machine": machine, "seconds": seconds, "rate": rate, "capacity": capacity, "fraction": fraction}
    for kind, rows in samples.items():
        kept = [r for r in rows if r["t"] >= WARM_UP * seconds]
        fits = {}
        span = kept[-1]["tasks"] - kept[0]["tasks"] if kept else 0
        for key in ("main_kib", "pool_kib", "total_kib"):
            if rows and key in rows[0]:
                fits[key] = slope([(r["tasks"] / 1000, r[key]) for r in kept])
                fits[key]["verdict"] = verdict(fits[key], span)
        result[kind] = {
            "fitted_tasks": span,
            "tasks": rows[-1]["tasks"] if rows else 0,
            "first_kib": kept[0]["total_kib"] if kept else None,
            "last_kib": kept[-1]["total_kib"] if kept else None,
            "slopes": fits,
            "samples": rows,
        }
    result["elapsed_seconds"] = time.monotonic() - began
    return result


def verdict(fit: dict, span_tasks: float) -> str:
    """flat (within noise), grows or shrinks: see the module's docstring."""
    b, se = fit.get("slope"), fit.get("stderr")
    if b is None:
        return "n/a"
    if abs(b) <= 2 * se or abs(b) * span_tasks / 1000 < NOISE_KIB:
        return "flat"
    return "grows" if b > 0 else "shrinks"


def _fit(fit: dict, span_tasks: float) -> str:
    if fit.get("slope") is None:
        return "n/a"
    return f"{fit['slope']:+.2f} ± {2 * fit['stderr']:.2f} ({verdict(fit, span_tasks)})"


def markdown(figures: dict) -> str:
    m = figures["machine"]
    c = figures["celery"]
    lines = [
        f"## proj bench --soak {figures['seconds']:.0f}",
        "",
        f"RabbitMQ {m['rabbitmq']}, Celery {m['celery']}, kombu {m['kombu']}, pika {m['pika']}, "
        f"Python {m['python']}, {m['cores']} cores. Every worker at once, {figures['rate']:.0f} no-op tasks/s each "
        f"({figures['fraction']:.0%} of the Celery worker's measured {figures['capacity']:.0f} tasks/s), "
        f"RSS sampled every {SAMPLE_INTERVAL:.0f} s, fitted after the first {WARM_UP:.0%} of the run; flat: "
        f"the 95 % interval holds zero or the fitted growth over the run is under {NOISE_KIB} KiB.",
        "",
        "| worker | tasks | RSS at warm-up end | RSS at end | slope, KiB per 1,000 tasks (95 %) |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [
        ("proj, main process", c, "main_kib"),
        ("proj, pool process", c, "pool_kib"),
        ("proj, both", c, "total_kib"),
        ("pika worker.py", figures["pika"], "total_kib"),
    ]
    if "dramatiq" in figures:
        rows.append(("dramatiq, both processes", figures["dramatiq"], "total_kib"))
    for name, fig, key in rows:
        kept = [r for r in fig["samples"] if r["t"] >= WARM_UP * figures["seconds"]]
        a = f"{kept[0][key] / 1024:.1f} MiB" if kept else "n/a"
        b = f"{kept[-1][key] / 1024:.1f} MiB" if kept else "n/a"
        lines.append(
            f"| {name} | {fig['tasks']:,} | {a} | {b} | {_fit(fig['slopes'].get(key, {}), fig['fitted_tasks'])} |"
        )
    return "\n".join(lines) + "\n"
