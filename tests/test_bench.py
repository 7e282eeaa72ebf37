"""``proj bench`` end to end: every section runs on a real private broker with real workers, every figure
is there and sane, and the ratios are those of the figures it prints. No timing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TIMEOUT, channel_of, effective_prefetch, wait_until
from kombu import Connection

from proj import config
from proj.bench import pika_worker
from proj.bench.fleet import dramatiq_available
from proj.bench.load import pika_channel, pika_publish
from proj.harness.workers import REPO_ROOT
from proj.rabbit.node import Node

#: The quick run at a fifth of its size: every section, fewer tasks (about a minute on 2 cores).
BENCH_ARGS = ("bench", "--quick", "--json", "--scale", "0.2")
BENCH_TIMEOUT = 600


def run_proj(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proj", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def processes_using(url: str) -> list[int]:
    """PIDs of processes whose environment names ``url`` (every worker the bench starts has it)."""
    needle = f"CELERY_BROKER_URL={url}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return [pid for pid in found if pid != os.getpid()]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``proj bench --quick --json`` run for the tests below; ended by SIGTERM (its own clean-up) if it hangs."""
    out, work = tmp_path_factory.mktemp("bench-out"), tmp_path_factory.mktemp("bench-work")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proj", *BENCH_ARGS, "--out", str(out), "--work-dir", str(work)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=BENCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops its workers and its broker on SIGTERM
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        Node.from_data_dir(work / "rabbitmq").stop()
    assert proc.returncode == 0, f"proj bench failed ({proc.returncode}):\n{stderr[-5000:]}"
    return {"stdout": stdout, "stderr": stderr, "out": out, "work": work}


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def test_quick_bench_prints_the_same_figures_as_json_and_writes_them_out(quick_run):
    # When `proj bench --quick --json --out DIR` has run
    figures = json.loads(quick_run["stdout"])

    # Then stdout is the JSON, also written to DIR, next to the Markdown table
    assert json.loads((quick_run["out"] / "bench.json").read_text()) == figures
    table = (quick_run["out"] / "bench.md").read_text()
    assert "| Figure | proj (Celery) | reference (pika) | ratio | " in table
    # And the table names the machine it was measured on
    m = figures["machine"]
    assert m["cores"] >= 1 and all(m[k] for k in ("rabbitmq", "celery", "python", "pika"))
    assert f"{m['cores']} cores, RabbitMQ {m['rabbitmq']}, Celery {m['celery']}" in table
    assert f"Python {m['python']}" in table


def test_every_section_has_positive_figures_whose_ratios_are_their_quotients(quick_run):
    figures = json.loads(quick_run["stdout"])
    reps = figures["plan"]["reps"]

    # Drain: W = 1, 2, 4, Celery and pika alternated, the median of each contender's runs
    assert [row["workers"] for row in figures["drain"]] == [1, 2, 4]
    for row in figures["drain"]:
        assert row["celery"] > 0 and row["pika"] > 0 and row["tasks"] > 0
        assert close(row["ratio"], row["celery"] / row["pika"])
        assert len(row["runs"]["celery"]) == len(row["runs"]["pika"]) == reps
        assert close(row["celery"], statistics.median(row["runs"]["celery"]))

    # Events: the W = 2 Celery drain with events on, against the same workers with them off
    events = figures["events"]
    w2 = next(row for row in figures["drain"] if row["workers"] == 2)
    assert events["events_on"] == w2["celery"] and events["events_off"] > 0
    assert close(events["ratio"], events["events_on"] / events["events_off"])

    # Short tasks: 10 ms each, against the ceiling W / 10 ms
    short = figures["short_tasks"]
    assert close(short["ceiling"], short["workers"] / short["task_seconds"])
    assert short["celery"] > 0 and short["pika"] > 0
    assert close(short["ratio"], short["celery"] / short["ceiling"])

    # Publish: .delay() against pika's basic_publish, both confirmed, plus the variants
    pub = figures["publish"]
    for key in ("celery", "pika", "celery_ignore_result", "celery_no_sent_event", "celery_batch_confirms"):
        assert pub[key] > 0, key
    assert close(pub["ratio"], pub["celery"] / pub["pika"])

    # Latency: both contenders at the same offered load, percentiles in order
    lat = figures["latency"]
    assert lat["rate"] > 0
    for kind in ("celery", "pika"):
        c = lat[kind]
        assert c["samples"] > 0 and c["offered_rate"] > 0
        assert 0 < c["start_p50"] <= c["start_p99"], c
        assert 0 < c["done_p50"] <= c["done_p99"], c
        assert c["start_p50"] <= c["done_p50"], c
    for key in ("start_p50", "start_p99", "done_p50", "done_p99"):
        assert close(lat[f"ratio_{key}"], lat["celery"][key] / lat["pika"][key])

    # Dispatch: makespans over the lower bound, which no schedule can beat
    d = figures["dispatch"]
    for name in ("prefetch_1", "unlimited"):
        assert d[name] >= 0.95 * d["lower_bound"] > 0, d
        assert close(d[f"{name}_ratio"], d[name] / d["lower_bound"])

    # Redelivery: one delay per SIGKILL, p50 <= p99 <= max
    red = figures["redelivery"]
    assert red["kills"] == len(red["samples"]) == figures["plan"]["kills"] >= 3
    assert 0 < red["p50"] <= red["p99"] <= red["max"]

    # Memory: an idle and a busy worker of each kind, Celery's being a main process and a pool child
    mem = figures["memory"]
    assert mem["celery_processes"] == (1 if config.POOL == "threads" else 2)
    for key in ("celery_idle_kib", "celery_busy_kib", "pika_idle_kib", "pika_busy_kib"):
        assert mem[key] > 0, key

    # Bulk publish: send_many against pika's one-at-a-time confirmed publishes, alternated
    bulk = figures["bulk"]
    assert bulk["bulk"] > 0 and bulk["pika"] > 0 and len(bulk["runs"]["bulk"]) == reps
    assert close(bulk["ratio"], bulk["bulk"] / bulk["pika"])

    # The options (solo, prefork: Celery's default pool), each drain against pika's (and dramatiq's, in the same
    # rotation) and its 10 ms tasks against the ceiling
    for key in ("solo", "prefork"):
        opt = figures[key]
        assert opt["drain"] > 0 and opt["drain_pika"] > 0 and opt["short"] > 0, key
        assert close(opt["drain_ratio"], opt["drain"] / opt["drain_pika"])
        assert close(opt["short_ratio"], opt["short"] / short["ceiling"])
        assert opt["idle_kib"] > 0 and opt["busy_kib"] > 0
        if "dramatiq" in figures["machine"] and figures["machine"]["dramatiq"]:
            assert close(opt["drain_ratio_dramatiq"], opt["drain"] / opt["drain_dramatiq"])
            assert opt["dramatiq_idle_kib"] > 0 and opt["dramatiq_busy_kib"] > 0

    # And each target is judged on the figure it names
    judged = {t["name"]: t for t in figures["targets"]}
    assert len(judged) == 7
    assert judged["bulk publish vs pika one at a time"]["value"] == bulk["ratio"]
    assert close(judged["worker RSS vs pika (busy)"]["value"], mem["celery_busy_kib"] / mem["pika_busy_kib"])
    assert judged["drain throughput vs pika at W = 2"]["value"] == w2["ratio"]
    assert judged["redelivery p99 (s)"]["value"] == red["p99"]
    for t in judged.values():
        op, bound = t["target"].split()
        met = {">=": t["value"] >= float(bound), "<=": t["value"] <= float(bound), "<": t["value"] < float(bound)}[op]
        assert t["met"] is met, t


def table_rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| Figure") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def number(cell: str) -> float:
    return float(re.match(r"[\d,.]+", cell).group(0).replace(",", ""))


def test_the_printed_ratios_are_those_of_the_printed_figures(quick_run):
    # Given the Markdown table as printed (rounded figures)
    rows = table_rows((quick_run["out"] / "bench.md").read_text())

    # Then every drain row's ratio is its Celery figure over its pika figure, to the rounding shown
    drain = {k: v for k, v in rows.items() if k.startswith("Drain") and "W = " in k and "events" not in k}
    assert len(drain) == 3, rows.keys()
    for name, (celery, pika, ratio, *_rest) in drain.items():
        assert abs(number(celery) / number(pika) - number(ratio)) <= 0.006 + 0.01 * number(ratio), name
    # And the short tasks' ratio is the figure over the ceiling named in the row
    (name, cells) = next((k, v) for k, v in rows.items() if k.startswith("10 ms tasks"))
    ceiling = number(re.search(r"ceiling ([\d,]+)", name).group(1))
    assert abs(number(cells[0]) / ceiling - number(cells[2])) <= 0.006 + 0.01 * number(cells[2])
    # And the dispatch ratio is the makespan over the lower bound named in the row
    (name, cells) = next((k, v) for k, v in rows.items() if k.startswith("Dispatch"))
    bound = number(re.search(r"lower bound ([\d.]+) s", name).group(1))
    assert abs(number(cells[0]) / bound - number(cells[2])) <= 0.01 + 0.01 * number(cells[2])


@pytest.mark.skipif(not dramatiq_available(), reason="dramatiq is not installed (the bench skips its column)")
def test_the_dramatiq_peer_has_its_figures_and_ratios_in_every_section_it_runs(quick_run):
    figures = json.loads(quick_run["stdout"])
    reps = figures["plan"]["reps"]
    assert figures["machine"]["dramatiq"]

    # Drain: dramatiq alternated with the others at W = 1, 2, 4, with proj / dramatiq and dramatiq / pika
    for row in figures["drain"]:
        assert row["dramatiq"] > 0 and len(row["runs"]["dramatiq"]) == reps
        assert close(row["dramatiq"], statistics.median(row["runs"]["dramatiq"]))
        assert close(row["ratio_dramatiq"], row["celery"] / row["dramatiq"])
        assert close(row["dramatiq_ratio_pika"], row["dramatiq"] / row["pika"])

    # 10 ms tasks, publish one at a time, dispatch
    short = figures["short_tasks"]
    assert short["dramatiq"] > 0 and close(short["dramatiq_ratio"], short["dramatiq"] / short["ceiling"])
    pub = figures["publish"]
    assert pub["dramatiq"] > 0 and close(pub["ratio_dramatiq"], pub["celery"] / pub["dramatiq"])
    d = figures["dispatch"]
    assert d["dramatiq"] >= 0.95 * d["lower_bound"] and close(d["ratio_dramatiq"], d["prefetch_1"] / d["dramatiq"])

    # Latency: percentiles in order, at the same offered load
    lat = figures["latency"]["dramatiq"]
    assert lat["samples"] > 0 and 0 < lat["start_p50"] <= lat["start_p99"] and lat["start_p50"] <= lat["done_p50"]

    # Redelivery: one delay per kill, alternated with proj's
    red = figures["redelivery"]["dramatiq"]
    assert red["kills"] == len(red["samples"]) == figures["plan"]["kills"]
    assert 0 < red["p50"] <= red["p99"] <= red["max"]

    # Memory: every process of one worker (dramatiq's main process and its worker process), idle and busy
    mem = figures["memory"]
    assert mem["dramatiq_processes"] == 2 and mem["dramatiq_idle_kib"] > 0 and mem["dramatiq_busy_kib"] > 0

    # And the table has its column
    table = (quick_run["out"] / "bench.md").read_text()
    assert "| peer (dramatiq) | proj / dramatiq |" in table and "dramatiq is not installed" not in table


def test_the_bench_leaves_no_worker_or_broker_running(quick_run):
    # Given the broker the bench ran on (its data dir was kept with --work-dir)
    node = Node.from_data_dir(quick_run["work"] / "rabbitmq")

    # Then that node is stopped, and no process is left that talked to it
    assert not node.status()["running"]
    assert processes_using(node.url) == []


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("bench", "--scale", "0"), "--scale"),
        (("bench", "--variants", "--profile", "somewhere"), "pick one"),
        (("bench", "--variants", "--cluster", "3"), "pick one"),
        (("bench", "--cluster", "2"), "--cluster"),
    ],
    ids=["scale-zero", "variants-and-profile", "variants-and-cluster", "cluster-of-two"],
)
def test_bad_options_fail_with_one_line_and_no_traceback(args, says):
    # When proj bench gets options it cannot use
    result = run_proj(*args)

    # Then it exits non-zero, says what is wrong, and shows no traceback
    assert result.returncode != 0
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_out_folder_that_cannot_be_written_fails_before_any_broker_starts(tmp_path):
    # Given --out naming a file, not a folder
    blocker = tmp_path / "taken"
    blocker.write_text("")

    # When proj bench is asked to write there
    result = run_proj("bench", "--quick", "--out", str(blocker / "results"))

    # Then it says so in one line and exits 2
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot write to --out" in result.stderr


# -- the reference -------------------------------------------------------------------------------


@pytest.fixture
def reference_worker(broker, tmp_path):
    """One tutorial worker.py (proj.bench.pika_worker) on the session's broker; SIGKILLed at teardown."""
    queue = "task_queue_reference_test"
    log = tmp_path / "pika.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proj.bench.pika_worker", "--url", broker.url, "--queue", queue]
            + ["--seconds-per-dot", "0.01"],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        wait_until(lambda: pika_worker.READY_LINE in log.read_text() or proc.poll() is not None, what="ready")
        assert proc.poll() is None, log.read_text()
        yield {"queue": queue, "log": log, "proc": proc}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_reference_worker_has_the_tutorials_guarantees(broker, mgmt, reference_worker):
    queue = reference_worker["queue"]

    # Then its queue is durable, and it consumes with acks and prefetch 1
    def consumer():
        found = [c for c in mgmt.consumers() if c["queue"]["name"] == queue]
        channels = {ch["name"]: ch for ch in mgmt.channels()}
        return [
            (c["ack_required"], effective_prefetch(c, channels[channel_of(c)]))
            for c in found
            if channel_of(c) in channels
        ]

    wait_until(lambda: consumer() and consumer()[0][1], what="the reference's consumer and its prefetch")
    assert consumer() == [(True, 1)]
    assert mgmt.queue(queue)["durable"] is True

    # When the tutorial's producer (with confirms) sends a message
    connection, channel = pika_channel(broker.url, queue)
    try:
        pika_publish(channel, queue, "Hello..", "1")
    finally:
        connection.close()

    # Then the worker prints the tutorial's lines and the message is acked, not left unacknowledged
    wait_until(lambda: " [x] Done" in reference_worker["log"].read_text(), TIMEOUT, "the reference's [x] Done")
    assert " [x] Received Hello.." in reference_worker["log"].read_text()
    with Connection(broker.url) as conn:
        wait_until(lambda: conn.default_channel.queue_declare(queue, passive=True).message_count == 0)
    wait_until(lambda: mgmt.counts(queue) == (0, 0), what="nothing ready and nothing unacknowledged")
