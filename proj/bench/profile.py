"""``proj bench --profile DIR``: where a Celery worker's time goes per task, sampled with py-spy.

One ``celery -A proj worker -c 1`` (and, for comparison, one pika reference worker) drains
no-op tasks while ``py-spy record --subprocesses`` samples the worker's main process and its pool
child. Every sample is put in one bucket of the per-task path (the innermost step it is in) and
the buckets are printed per process, with the busy share of each process. The raw samples
(``*.raw``, collapsed stacks) and a speedscope file stay in DIR.

py-spy is not a dependency of proj: ``pip install py-spy`` to use this.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from proj.bench.fleet import CeleryFleet, PikaFleet
from proj.bench.run import SECONDS_PER_DOT, Bench, Plan, say

SAMPLE_RATE = 200

#: (bucket, markers): a sample goes to the first bucket one of whose markers is in one of its frames.
BUCKETS = [
    ("task body (proj.tasks.work)", ("work (proj/tasks.py", "callback (proj/bench/pika_worker.py")),
    ("events: build, publish, wait for confirm", ("EventDispatcher", "_flush_events", "send_event")),
    ("result backend", ("store_result", "celery/backends/")),
    ("ack", ("acknowledge", "Message.ack", "basic_ack", "call_soon_ack")),
    (
        "receive and decode the message",
        ("on_task_received", "task_message_handler", "_receive_callback", "_on_basic_deliver", "_deliver_frame"),
    ),
    ("pool IPC (pipes between main and child)", ("celery/concurrency/asynpool.py", "billiard/")),
    ("Celery's task tracer", ("celery/app/trace.py",)),
    ("AMQP frames and socket I/O", ("amqp/", "pika/adapters", "pika/connection", "pika/channel")),
    ("event loop (epoll, timers)", ("kombu/asynchronous/", "celery/worker/loops.py")),
]
OTHER = "other"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: `pip install py-spy` (into the same virtualenv) to profile")
    return found


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py``: lines differ, functions do not."""
    return re.sub(r":\d+\)$", "", frame)


def summarize(raw: Path, seconds: float, main_pid: int) -> list[dict]:
    """Per process: samples, busy share, and the share of its samples in each bucket."""
    per_process: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = [_frame_name(f) for f in stack.split(";")]
        # A pool child's stack is its parent's (it was forked there), then its own label, then its own frames.
        start = max(i for i, f in enumerate(frames) if f.startswith("process "))
        process, frames = frames[start], frames[start + 1 :]
        bucket = next((name for name, marks in BUCKETS if any(m in f for f in frames for m in marks)), OTHER)
        per_process[process][bucket] += int(count)
    out = []
    for process, buckets in sorted(per_process.items(), key=lambda item: not _is_pid(item[0], main_pid)):
        total = sum(buckets.values())
        out.append(
            {
                "role": "main" if _is_pid(process, main_pid) else "pool child",
                "samples": total,
                "busy": total / (SAMPLE_RATE * seconds),
                "buckets": {name: n / total for name, n in buckets.most_common()},
            }
        )
    return out


def _is_pid(process: str, pid: int) -> bool:
    """py-spy labels each process's stacks ``process PID:"command line"``."""
    return process.startswith(f"process {pid}:")


def profile_drain(bench: Bench, fleet, tasks: int, out: Path, label: str) -> dict:
    """Drain ``tasks`` no-op tasks on one worker of ``fleet`` under py-spy; return the summary."""
    bench.fill(fleet, ["bench"] * tasks)
    raw = out / f"{label}.raw"
    spy = subprocess.Popen(
        [py_spy(), "record", "--subprocesses", "--pid", str(fleet.workers[0].pid), "--rate", str(SAMPLE_RATE)]
        + ["--format", "raw", "--output", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        if spy.poll() is not None:
            raise RuntimeError(f"py-spy could not attach: {spy.stderr.read().decode().strip().splitlines()[-1:]}")
        fleet.resume(1)
        bench.probe.wait(fleet.queue, lambda ready, c: ready < tasks, 60, "first delivery", interval=0.001)
        t0 = time.perf_counter()
        bench.probe.wait(fleet.queue, lambda ready, c: ready == 0, 600, "queue drained")
        seconds = time.perf_counter() - t0
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
    bench.pause(fleet)
    return {
        "worker": label,
        "tasks_per_second": tasks / seconds,
        "seconds": seconds,
        "processes": summarize(raw, seconds, fleet.workers[0].pid),
    }


def run(plan: Plan, out: Path, work_dir: Path | None = None) -> dict:
    py_spy()
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(plan, work_dir)
    try:
        bench.start_broker()
        logs, url, mgmt = bench.dir / "workers", bench.node.url, bench.node.management_url
        fleets = {
            "celery": CeleryFleet("prof-celery", url, logs, 1, seconds_per_dot=SECONDS_PER_DOT, management_url=mgmt),
            "celery, events off": CeleryFleet(
                "prof-noevents",
                url,
                logs,
                1,
                seconds_per_dot=SECONDS_PER_DOT,
                management_url=mgmt,
                settings={"worker_send_task_events": False},
            ),
            "pika": PikaFleet("prof-pika", url, logs, 1, seconds_per_dot=SECONDS_PER_DOT),
        }
        bench.start_fleets(list(fleets.values()))
        profiles = []
        for label, fleet in fleets.items():
            say(f"profile: {plan.drain_tasks} no-op tasks on one {label} worker under py-spy")
            profiles.append(profile_drain(bench, fleet, plan.drain_tasks, out, label.replace(", ", "-")))
    finally:
        bench.close()
    return {"profiles": profiles, "out": str(out)}


def markdown(figures: dict) -> str:
    lines = [
        f"Where one worker's time goes while it drains no-op tasks (py-spy, {SAMPLE_RATE} samples/s; raw "
        f"samples in {figures['out']}). Busy = share of wall time the process was on CPU or in a blocking call.",
        "",
    ]
    for prof in figures["profiles"]:
        lines.append(f"**{prof['worker']}**: {prof['tasks_per_second']:,.0f} tasks/s under the profiler")
        lines.append("")
        lines.append("| process | busy | where its samples are |")
        lines.append("|---|---:|---|")
        for p in prof["processes"]:
            where = ", ".join(f"{name} {share:.0%}" for name, share in p["buckets"].items() if share >= 0.02)
            lines.append(f"| {p['role']} | {p['busy']:.0%} | {where} |")
        lines.append("")
    return "\n".join(lines)
