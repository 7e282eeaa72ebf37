"""``proj bench --soak SECONDS``: memory under sustained load, proj's worker beside the pika reference.

One private node; one ``celery -A proj worker -c 1`` (the shipped settings: hard time limit, events,
acks late, prefetch 1) and one tutorial pika worker, each fed no-op tasks by its own steady producer
at the same rate, a fraction of the Celery worker's capacity measured first, both at once for
SECONDS. Every few seconds the RSS of every worker process is sampled beside the tasks its queue
has acked (the broker's cumulative ``ack`` count). The figure is the slope of RSS against tasks
done, in KiB per 1,000 tasks, fitted by least squares after a warm-up, with its 95 % interval
(2 standard errors): a slope whose interval holds zero is within the noise of the sampling.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

from proj.bench.fleet import PIKA_QUEUE, CeleryFleet, PikaFleet, PikaProcess, rss_kib
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
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proj.bench.load",
            *("--kind", kind, "--url", url, "--queue", queue),
            *("--rate", f"{rate:.1f}", "--seconds", str(seconds), "--out", str(out)),
        ],
        cwd=REPO_ROOT,
    )


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
        # The reference keeps no per-task records here: they would be memory it grows by design.
        pika.workers = [PikaProcess("soak-pika1", url, logs, seconds_per_dot=SECONDS_PER_DOT, record=False)]
        say("starting workers: 1 celery -A proj worker -c 1, 1 pika worker.py")
        bench.start_fleets([celery, pika])
        capacity = bench.drain(celery, 1, ["bench"] * CAPACITY_TASKS)
        rate = capacity * fraction
        say(f"capacity {capacity:.0f} tasks/s; soak: {rate:.0f} tasks/s to each for {seconds:.0f} s")
        machine = versions(bench.node)
        mgmt = Management(bench.node.management_url)
        celery.resume(1)
        pika.resume(1)
        bench.probe.wait(celery.queue, lambda ready, consumers: consumers == 1, 60, "celery consuming")
        bench.probe.wait(PIKA_QUEUE, lambda ready, consumers: consumers == 1, 60, "pika consuming")
        # The capacity drain's acks reach the broker's statistics up to a few seconds late.
        deadline = time.monotonic() + 60
        while acked(mgmt, celery.queue) < CAPACITY_TASKS - 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        base = {"celery": acked(mgmt, celery.queue), "pika": acked(mgmt, PIKA_QUEUE)}
        for kind, queue in (("celery", celery.queue), ("pika", PIKA_QUEUE)):
            producers.append(_producer(url, kind, queue, rate, seconds, bench.dir / f"soak-{kind}.json"))
        samples: dict[str, list[dict]] = {"celery": [], "pika": []}
        start = time.monotonic()
        next_at = start
        while any(p.poll() is None for p in producers):
            next_at += SAMPLE_INTERVAL
            time.sleep(max(0.0, next_at - time.monotonic()))
            t = time.monotonic() - start
            main = celery.workers[0].pid
            kids = children_of(main)
            samples["celery"].append(
                {
                    "t": t,
                    "tasks": acked(mgmt, celery.queue) - base["celery"],
                    "main_kib": rss_kib([main]),
                    "pool_kib": rss_kib(kids),
                    "total_kib": rss_kib([main, *kids]),
                }
            )
            samples["pika"].append(
                {
                    "t": t,
                    "tasks": acked(mgmt, PIKA_QUEUE) - base["pika"],
                    "total_kib": rss_kib(pika.pids(1)),
                }
            )
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
        for key in ("main_kib", "pool_kib", "total_kib"):
            if rows and key in rows[0]:
                fits[key] = slope([(r["tasks"] / 1000, r[key]) for r in kept])
        result[kind] = {
            "tasks": rows[-1]["tasks"] if rows else 0,
            "first_kib": kept[0]["total_kib"] if kept else None,
            "last_kib": kept[-1]["total_kib"] if kept else None,
            "slopes": fits,
            "samples": rows,
        }
    result["elapsed_seconds"] = time.monotonic() - began
    return result


def _fit(fit: dict) -> str:
    if fit.get("slope") is None:
        return "n/a"
    b, se = fit["slope"], fit["stderr"]
    verdict = "flat" if abs(b) <= 2 * se else "grows" if b > 0 else "shrinks"
    return f"{b:+.2f} ± {2 * se:.2f} ({verdict})"


def markdown(figures: dict) -> str:
    m = figures["machine"]
    c, p = figures["celery"], figures["pika"]
    lines = [
        f"## proj bench --soak {figures['seconds']:.0f}",
        "",
        f"RabbitMQ {m['rabbitmq']}, Celery {m['celery']}, kombu {m['kombu']}, pika {m['pika']}, "
        f"Python {m['python']}, {m['cores']} cores. Both workers at once, {figures['rate']:.0f} no-op tasks/s each "
        f"({figures['fraction']:.0%} of the Celery worker's measured {figures['capacity']:.0f} tasks/s), "
        f"RSS sampled every {SAMPLE_INTERVAL:.0f} s, fitted after the first {WARM_UP:.0%} of the run.",
        "",
        "| worker | tasks | RSS at warm-up end | RSS at end | slope, KiB per 1,000 tasks (95 %) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, fig, key in (
        ("proj, main process", c, "main_kib"),
        ("proj, pool process", c, "pool_kib"),
        ("proj, both", c, "total_kib"),
        ("pika worker.py", p, "total_kib"),
    ):
        kept = [r for r in fig["samples"] if r["t"] >= WARM_UP * figures["seconds"]]
        a = f"{kept[0][key] / 1024:.1f} MiB" if kept else "n/a"
        b = f"{kept[-1][key] / 1024:.1f} MiB" if kept else "n/a"
        lines.append(f"| {name} | {fig['tasks']:,} | {a} | {b} | {_fit(fig['slopes'].get(key, {}))} |")
    return "\n".join(lines) + "\n"
