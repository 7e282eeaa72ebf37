"""The figures of one run as a Markdown table, and the targets each one is held to."""

from __future__ import annotations


def _n(value: float) -> str:
    """A rate: thousands separated, no decimals."""
    return f"{value:,.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _r(value: float) -> str:
    return f"{value:.2f}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def targets(figures: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it was met."""
    drain_w2 = next(row for row in figures["drain"] if row["workers"] == 2)
    checks = [
        ("drain throughput vs pika at W = 2", drain_w2["ratio"], ">=", 0.5),
        ("short tasks vs ceiling W / 10 ms", figures["short_tasks"]["ratio"], ">=", 0.95),
        ("publish with confirms vs pika", figures["publish"]["ratio"], ">=", 0.8),
        ("bulk publish vs pika one at a time", figures["bulk"]["ratio"], ">=", 2.0),
        (
            "worker RSS vs pika (busy)",
            figures["memory"]["celery_busy_kib"] / figures["memory"]["pika_busy_kib"],
            "<=",
            1.5,
        ),
        ("dispatch makespan / lower bound (prefetch 1)", figures["dispatch"]["prefetch_1_ratio"], "<=", 1.05),
        ("redelivery p99 (s)", figures["redelivery"]["p99"], "<", 1.0),
    ]
    out = []
    for name, value, op, bound in checks:
        met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
        out.append({"name": name, "value": value, "target": f"{op} {bound}", "met": met})
    return out


def markdown(figures: dict) -> str:
    m = figures["machine"]
    mode = "quick" if figures.get("quick") else "full"
    lines = [
        f"`proj bench` ({mode}): {m['cores']} cores, RabbitMQ {m['rabbitmq']}, Celery {m['celery']} "
        f"(kombu {m['kombu']}), pika {m['pika']}, Python {m['python']}. "
        f"W = worker processes; every Celery worker is `celery -A proj worker -c 1` (main process + one pool "
        f"process), every reference worker one pika `worker.py` process; medians of alternated runs.",
        "",
        "| Figure | proj (Celery) | reference (pika) | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    t = {x["name"]: x for x in targets(figures)}

    def target(name: str) -> str:
        x = t[name]
        return f"{x['target']}: {'met' if x['met'] else 'missed'}"

    for row in figures["drain"]:
        goal = target("drain throughput vs pika at W = 2") if row["workers"] == 2 else ""
        lines.append(
            f"| Drain {row['tasks']:,} no-op tasks, W = {row['workers']} (tasks/s) | {_n(row['celery'])} | "
            f"{_n(row['pika'])} | {_r(row['ratio'])} | {goal} |"
        )
    ev = figures["events"]
    lines.append(
        f"| Drain W = {ev['workers']} with events on / off (tasks/s) | {_n(ev['events_on'])} / {_n(ev['events_off'])} "
        f"| | {_r(ev['ratio'])} | |"
    )
    st = figures["short_tasks"]
    lines.append(
        f"| 10 ms tasks, W = {st['workers']} (tasks/s; ratio to the ceiling {_n(st['ceiling'])}/s) | "
        f"{_n(st['celery'])} | {_n(st['pika'])} | {_r(st['ratio'])} | {target('short tasks vs ceiling W / 10 ms')} |"
    )
    pub = figures["publish"]
    lines.append(
        f"| Publish with confirms, one at a time (msgs/s): `.delay()` vs `basic_publish` | {_n(pub['celery'])} | "
        f"{_n(pub['pika'])} | {_r(pub['ratio'])} | {target('publish with confirms vs pika')} |"
    )
    lines.append(
        f"| ... `.delay()` with `ignore_result=True` / also no task-sent event (msgs/s) | "
        f"{_n(pub['celery_ignore_result'])} / {_n(pub['celery_no_sent_event'])} | | "
        f"{_r(pub['celery_ignore_result'] / pub['pika'])} / {_r(pub['celery_no_sent_event'] / pub['pika'])} | |"
    )
    lines.append(
        f"| ... confirms pipelined on one channel (the bench's queue filler, no task-sent events) (msgs/s) | "
        f"{_n(pub['celery_batch_confirms'])} | | | |"
    )
    bulk = figures["bulk"]
    lines.append(
        f"| Bulk publish, `send_many` ({bulk['messages']:,} messages, all confirmed) vs `basic_publish` one at a "
        f"time (msgs/s) | {_n(bulk['bulk'])} | {_n(bulk['pika'])} | {_r(bulk['ratio'])} | "
        f"{target('bulk publish vs pika one at a time')} |"
    )
    lat = figures["latency"]
    c, p = lat["celery"], lat["pika"]
    lines.append(
        f"| Latency at {_n(lat['rate'])} tasks/s, W = {lat['workers']}: enqueue->start p50 / p99 | "
        f"{_ms(c['start_p50'])} / {_ms(c['start_p99'])} | {_ms(p['start_p50'])} / {_ms(p['start_p99'])} | "
        f"{_r(lat['ratio_start_p50'])} / {_r(lat['ratio_start_p99'])} | |"
    )
    lines.append(
        f"| ... enqueue->done (acked) p50 / p99 | {_ms(c['done_p50'])} / {_ms(c['done_p99'])} | "
        f"{_ms(p['done_p50'])} / {_ms(p['done_p99'])} | {_r(lat['ratio_done_p50'])} / {_r(lat['ratio_done_p99'])} | |"
    )
    d = figures["dispatch"]
    lines.append(
        f"| Dispatch, {d['tasks']} heavy/light tasks, W = {d['workers']}: makespan / lower bound "
        f"{d['lower_bound']:.2f} s, prefetch 1 | {d['prefetch_1']:.2f} s | | {_r(d['prefetch_1_ratio'])} | "
        f"{target('dispatch makespan / lower bound (prefetch 1)')} |"
    )
    lines.append(f"| ... unlimited prefetch | {d['unlimited']:.2f} s | | {_r(d['unlimited_ratio'])} | |")
    rd = figures["redelivery"]
    lines.append(
        f"| Redelivery, SIGKILL to task started elsewhere, p50 / p99 ({rd['kills']} kills) | "
        f"{_ms(rd['p50'])} / {_ms(rd['p99'])} | | | {target('redelivery p99 (s)')} |"
    )
    mem = figures["memory"]
    lines.append(
        f"| Memory (RSS) of one idle worker, main + pool child | {_mib(mem['celery_idle_kib'])} | "
        f"{_mib(mem['pika_idle_kib'])} | {_r(mem['celery_idle_kib'] / mem['pika_idle_kib'])} | |"
    )
    lines.append(
        f"| ... of one busy worker | {_mib(mem['celery_busy_kib'])} | {_mib(mem['pika_busy_kib'])} | "
        f"{_r(mem['celery_busy_kib'] / mem['pika_busy_kib'])} | {target('worker RSS vs pika (busy)')} |"
    )
    solo = figures["solo"]
    lines.append(
        f"| Option `{solo['command']}`: drain no-op tasks, W = {solo['workers']} (tasks/s) | {_n(solo['drain'])} | "
        f"{_n(solo['drain_pika'])} | {_r(solo['drain_ratio'])} | (>= 0.5) |"
    )
    lines.append(
        f"| ... 10 ms tasks, W = {solo['workers']} (tasks/s; ratio to the ceiling {_n(st['ceiling'])}/s) | "
        f"{_n(solo['short'])} | | {_r(solo['short_ratio'])} | (>= 0.95) |"
    )
    lines.append(
        f"| ... memory (RSS) idle / busy (one process, no pool child) | {_mib(solo['idle_kib'])} / "
        f"{_mib(solo['busy_kib'])} | {_mib(mem['pika_idle_kib'])} / {_mib(solo['pika_busy_kib'])} | "
        f"{_r(solo['idle_kib'] / mem['pika_idle_kib'])} / {_r(solo['busy_kib'] / solo['pika_busy_kib'])} | (<= 1.5) |"
    )
    met = sum(1 for x in t.values() if x["met"])
    lines += ["", f"Targets met: {met} of {len(t)}. Run took {figures['elapsed_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
