"""The figures of one run as a Markdown table, and the targets each one is held to."""

from __future__ import annotations

#: The one line of a table without the optional peer.
NO_DRAMATIQ = "dramatiq is not installed (pip install 'dramatiq[rabbitmq]'): its column is skipped"


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


def _processes(n: int) -> str:
    return "main + pool child" if n > 1 else "one process"


def option_rows(add, opt: dict, st: dict, mem: dict, peer: bool) -> None:
    """The rows of one option (proj/bench/options.py): drain, 10 ms tasks and memory, with dramatiq when it ran."""
    on_peer = peer and "drain_dramatiq" in opt

    def vs(value_key: str, ratio_key: str) -> tuple[str, str]:
        return (_n(opt[value_key]), _r(opt[ratio_key])) if on_peer else ("", "")

    add(
        f"Option `{opt['command']}`: drain no-op tasks, W = {opt['workers']} (tasks/s)",
        _n(opt["drain"]),
        _n(opt["drain_pika"]),
        _r(opt["drain_ratio"]),
        "(>= 0.5)",
        *vs("drain_dramatiq", "drain_ratio_dramatiq"),
    )
    add(
        f"... 10 ms tasks, W = {opt['workers']} (tasks/s; ratio to the ceiling {_n(st['ceiling'])}/s)",
        _n(opt["short"]),
        "",
        _r(opt["short_ratio"]),
        "(>= 0.95)",
        *vs("short_dramatiq", "short_ratio_dramatiq"),
    )
    add(
        "... memory (RSS) idle / busy (every process: "
        + ("main + pool child)" if opt.get("processes", 1) > 1 else "one)"),
        f"{_mib(opt['idle_kib'])} / {_mib(opt['busy_kib'])}",
        f"{_mib(mem['pika_idle_kib'])} / {_mib(opt['pika_busy_kib'])}",
        f"{_r(opt['idle_kib'] / mem['pika_idle_kib'])} / {_r(opt['busy_kib'] / opt['pika_busy_kib'])}",
        "(<= 1.5)",
        *(
            (
                f"{_mib(opt['dramatiq_idle_kib'])} / {_mib(opt['dramatiq_busy_kib'])}",
                f"{_r(opt['idle_kib'] / opt['dramatiq_idle_kib'])} / {_r(opt['busy_kib'] / opt['dramatiq_busy_kib'])}",
            )
            if on_peer
            else ()
        ),
    )


def markdown(figures: dict) -> str:
    m = figures["machine"]
    mode = "quick" if figures.get("quick") else "full"
    mem = figures["memory"]
    peer = "dramatiq_idle_kib" in mem  # the optional peer ran (dramatiq installed)
    lines = [
        f"`proj bench` ({mode}): {m['cores']} cores, RabbitMQ {m['rabbitmq']}, Celery {m['celery']} "
        f"(kombu {m['kombu']}), pika {m['pika']}"
        + (f", dramatiq {m['dramatiq']}" if peer and m.get("dramatiq") else "")
        + f", Python {m['python']}. "
        f"W = worker processes; every Celery worker is `celery -A proj worker -c 1` "
        f"({_processes(mem.get('celery_processes', 1))}: PROJ_POOL={m.get('pool', 'threads')}), every reference "
        "worker one pika `worker.py` process"
        + (
            ", every dramatiq worker `dramatiq --processes 1 --threads 1` (main process + one worker process; "
            "confirm_delivery, prefetch 1)"
            if peer
            else ""
        )
        + "; medians of alternated runs.",
        "",
    ]
    if peer:
        lines += [
            "| Figure | proj (Celery) | reference (pika) | ratio | peer (dramatiq) | proj / dramatiq | target |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
    else:
        lines += ["| Figure | proj (Celery) | reference (pika) | ratio | target |", "|---|---:|---:|---:|---|"]
    t = {x["name"]: x for x in targets(figures)}

    def target(name: str) -> str:
        x = t[name]
        return f"{x['target']}: {'met' if x['met'] else 'missed'}"

    def add(figure: str, celery: str, pika: str, ratio: str, goal: str = "", dramatiq: str = "", vs: str = "") -> None:
        cells = [figure, celery, pika, ratio, *((dramatiq, vs) if peer else ()), goal]
        lines.append("| " + " | ".join(cells) + " |")

    def vs_peer(row: dict, key: str = "dramatiq", fmt=_n) -> tuple[str, str]:
        if not peer or row.get(key) is None:
            return "", ""
        return fmt(row[key]), _r(row["ratio_dramatiq"])

    for row in figures["drain"]:
        goal = target("drain throughput vs pika at W = 2") if row["workers"] == 2 else ""
        add(
            f"Drain {row['tasks']:,} no-op tasks, W = {row['workers']} (tasks/s)",
            _n(row["celery"]),
            _n(row["pika"]),
            _r(row["ratio"]),
            goal,
            *vs_peer(row),
        )
    ev = figures["events"]
    add(
        f"Drain W = {ev['workers']} with events on / off (tasks/s)",
        f"{_n(ev['events_on'])} / {_n(ev['events_off'])}",
        "",
        _r(ev["ratio"]),
    )
    st = figures["short_tasks"]
    add(
        f"10 ms tasks, W = {st['workers']} (tasks/s; ratio to the ceiling {_n(st['ceiling'])}/s)",
        _n(st["celery"]),
        _n(st["pika"]),
        _r(st["ratio"]),
        target("short tasks vs ceiling W / 10 ms"),
        *vs_peer(st),
    )
    pub = figures["publish"]
    add(
        "Publish with confirms, one at a time (msgs/s): `.delay()` vs `basic_publish` vs dramatiq `send()`"
        if peer
        else "Publish with confirms, one at a time (msgs/s): `.delay()` vs `basic_publish`",
        _n(pub["celery"]),
        _n(pub["pika"]),
        _r(pub["ratio"]),
        target("publish with confirms vs pika"),
        *vs_peer(pub),
    )
    add(
        "... `.delay()` with `ignore_result=True` / also no task-sent event (msgs/s)",
        f"{_n(pub['celery_ignore_result'])} / {_n(pub['celery_no_sent_event'])}",
        "",
        f"{_r(pub['celery_ignore_result'] / pub['pika'])} / {_r(pub['celery_no_sent_event'] / pub['pika'])}",
    )
    add(
        "... confirms pipelined on one channel (the bench's queue filler, no task-sent events) (msgs/s)",
        _n(pub["celery_batch_confirms"]),
        "",
        "",
    )
    bulk = figures["bulk"]
    add(
        f"Bulk publish, `send_many` ({bulk['messages']:,} messages, all confirmed) vs `basic_publish` one at a "
        "time (msgs/s)",
        _n(bulk["bulk"]),
        _n(bulk["pika"]),
        _r(bulk["ratio"]),
        target("bulk publish vs pika one at a time"),
    )
    lat = figures["latency"]
    c, p = lat["celery"], lat["pika"]
    d_lat = lat.get("dramatiq") if peer else None

    def lat_peer(a: str, b: str) -> tuple[str, str]:
        if not d_lat:
            return "", ""
        return (
            f"{_ms(d_lat[a])} / {_ms(d_lat[b])}",
            f"{_r(lat[f'ratio_dramatiq_{a}'])} / {_r(lat[f'ratio_dramatiq_{b}'])}",
        )

    add(
        f"Latency at {_n(lat['rate'])} tasks/s, W = {lat['workers']}: enqueue->start p50 / p99",
        f"{_ms(c['start_p50'])} / {_ms(c['start_p99'])}",
        f"{_ms(p['start_p50'])} / {_ms(p['start_p99'])}",
        f"{_r(lat['ratio_start_p50'])} / {_r(lat['ratio_start_p99'])}",
        "",
        *lat_peer("start_p50", "start_p99"),
    )
    add(
        "... enqueue->done (acked) p50 / p99",
        f"{_ms(c['done_p50'])} / {_ms(c['done_p99'])}",
        f"{_ms(p['done_p50'])} / {_ms(p['done_p99'])}",
        f"{_r(lat['ratio_done_p50'])} / {_r(lat['ratio_done_p99'])}",
        "",
        *lat_peer("done_p50", "done_p99"),
    )
    d = figures["dispatch"]
    add(
        f"Dispatch, {d['tasks']} heavy/light tasks, W = {d['workers']}: makespan / lower bound "
        f"{d['lower_bound']:.2f} s, prefetch 1",
        f"{d['prefetch_1']:.2f} s",
        "",
        _r(d["prefetch_1_ratio"]),
        target("dispatch makespan / lower bound (prefetch 1)"),
        *((f"{d['dramatiq']:.2f} s", _r(d["ratio_dramatiq"])) if peer and "dramatiq" in d else ("", "")),
    )
    add("... unlimited prefetch", f"{d['unlimited']:.2f} s", "", _r(d["unlimited_ratio"]))
    rd = figures["redelivery"]
    dr = rd.get("dramatiq") if peer else None
    add(
        f"Redelivery, SIGKILL to task started elsewhere, p50 / p99 ({rd['kills']} kills)",
        f"{_ms(rd['p50'])} / {_ms(rd['p99'])}",
        "",
        "",
        target("redelivery p99 (s)"),
        *(
            (f"{_ms(dr['p50'])} / {_ms(dr['p99'])}", f"{_r(rd['ratio_dramatiq_p50'])} / {_r(rd['ratio_dramatiq_p99'])}")
            if dr
            else ("", "")
        ),
    )

    def mem_peer(key: str) -> tuple[str, str]:
        if not peer or key not in mem:
            return "", ""
        return _mib(mem[key]), _r(mem[key.replace("dramatiq", "celery")] / mem[key])

    add(
        f"Memory (RSS) of one idle worker, every process (Celery: {_processes(mem.get('celery_processes', 1))})",
        _mib(mem["celery_idle_kib"]),
        _mib(mem["pika_idle_kib"]),
        _r(mem["celery_idle_kib"] / mem["pika_idle_kib"]),
        "",
        *mem_peer("dramatiq_idle_kib"),
    )
    add(
        "... of one busy worker",
        _mib(mem["celery_busy_kib"]),
        _mib(mem["pika_busy_kib"]),
        _r(mem["celery_busy_kib"] / mem["pika_busy_kib"]),
        target("worker RSS vs pika (busy)"),
        *mem_peer("dramatiq_busy_kib"),
    )
    for key in ("solo", "prefork"):
        if key in figures:
            option_rows(add, figures[key], st, mem, peer)
    met = sum(1 for x in t.values() if x["met"])
    lines += ["", f"Targets met: {met} of {len(t)}. Run took {figures['elapsed_seconds']:.0f} s."]
    if not peer:
        lines.append(NO_DRAMATIQ + ".")
    return "\n".join(lines) + "\n"
