"""``proj chaos``: numbered tasks, random faults, then every task accounted for.

One real run (a private RabbitMQ node, three real workers, kills, shutdowns and a broker restart)
through the command itself, and the pure parts: the seeded schedule, and a checker that does fail
when a task is missing or ran twice for no reason.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from proj import config
from proj.chaos import ledger
from proj.chaos.checker import Fault, check
from proj.chaos.compose import ComposeChaos, ComposeSettings
from proj.chaos.schedule import CONTAINER_KINDS, KILL_CHILD, KINDS, RESTART_BROKER, fault_schedule, task_messages
from proj.harness.workers import REPO_ROOT

#: A seed whose 8 faults take in every kind, the broker restart once (a restart costs ~12 s).
SEED = 0
TASKS, FAULTS, WORKERS = 300, 8, 3
RUN_TIMEOUT = 240


def run_chaos(*args: str, timeout: float = RUN_TIMEOUT, env: dict | None = None) -> subprocess.CompletedProcess:
    """``proj chaos ARGS``; on a timeout it gets SIGTERM (it then stops what it started) before SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proj", "chaos", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"proj chaos did not finish within {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_chaos_run_with_kills_shutdowns_and_a_broker_restart_loses_no_task(tmp_path):
    # Given a schedule of 8 faults on 3 workers that includes a broker restart
    # (a pool child to kill only with the prefork pool: proj's threads pool, the default, runs tasks in threads)
    kinds = tuple(k for k in KINDS if k != KILL_CHILD or config.POOL == "prefork")
    schedule = fault_schedule(SEED, FAULTS, TASKS, WORKERS, kinds=kinds)
    assert RESTART_BROKER in {f.kind for f in schedule}

    # When proj chaos publishes 300 numbered tasks through those faults
    run_dir = tmp_path / "run"
    result = run_chaos(
        "--tasks", str(TASKS), "--faults", str(FAULTS), "--workers", str(WORKERS),
        "--seed", str(SEED), "--out", str(run_dir), "--json",
    )  # fmt: skip

    # Then it reports every task accounted for, and exits 0
    report = json.loads(result.stdout)
    explain = f"{json.dumps(report, indent=1)[:4000]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, explain
    assert report["published"] == TASKS and report["lost"] == 0 and report["unexpected"] == 0, explain
    assert report["duplicated_unexplained"] == 0, explain
    # And every fault of the schedule hit, the broker restart among them
    assert report["faults_total"] == FAULTS and report["faults"].get(RESTART_BROKER, 0) >= 1, explain
    # And task_queue ended with nothing ready and nothing unacknowledged
    assert report["queue"]["ready"] == 0 and report["queue"]["unacked"] == 0, explain
    # And the ledger the workers wrote agrees: 300 distinct tasks done, all of this run
    rows = ledger.rows(str(run_dir / "ledger.sqlite"))
    done = {r["task_id"] for r in rows if r["event"] == "done"}
    assert len(done) == TASKS and all(t.startswith(f"chaos-{report['run_id']}-") for t in done)
    assert (run_dir / "report.json").exists()


def test_the_same_seed_gives_the_same_fault_schedule_and_messages():
    # Given one seed, drawn twice
    first = fault_schedule(7, 50, 5000, 3)
    second = fault_schedule(7, 50, 5000, 3)

    # Then the faults are the same, in the same order, at the same points, on the same workers
    assert first == second
    assert task_messages(7, 100) == task_messages(7, 100)
    # And another seed draws another schedule
    assert fault_schedule(8, 50, 5000, 3) != first
    # And the schedule keeps within the run: every kind drawn, thresholds inside the tasks, sorted
    assert set(Counter(f.kind for f in first)) == set(KINDS)
    assert [f.after_done for f in first] == sorted(f.after_done for f in first)
    assert all(0 < f.after_done < 5000 and 0 <= f.worker < 3 for f in first)


def test_a_broker_restart_is_forced_into_any_schedule_that_may_have_one():
    # Given seeds whose uniform draw alone would leave out the broker restart
    schedules = [fault_schedule(seed, 2, 300, 3) for seed in range(50)]

    # Then each schedule has one; and none when broker restarts are not allowed (--broker-url)
    assert all(RESTART_BROKER in {f.kind for f in s} for s in schedules)
    no_restart = [k for k in KINDS if k != RESTART_BROKER]
    assert all(f.kind != RESTART_BROKER for f in fault_schedule(3, 20, 300, 3, kinds=tuple(no_restart)))


def test_the_compose_run_draws_every_container_kind_in_turn_from_the_same_schedule():
    # Given compose chaos runs of 10 node faults (nothing starts before run())
    def draw(seed):
        settings = ComposeSettings(tasks=600, faults=10, seed=seed, window=(0.10, 0.50))
        return ComposeChaos(settings, out=io.StringIO()).state.schedule

    first = draw(7)

    # Then the same seed gives the same faults, another seed others
    assert draw(7) == first and draw(8) != first
    # And each round of four takes in every container kind once, so no kind is hit twice as often as another
    kinds = [f.kind for f in first]
    assert sorted(kinds[:4]) == sorted(kinds[4:8]) == sorted(CONTAINER_KINDS)
    assert set(kinds[8:]) <= set(CONTAINER_KINDS) and len(set(kinds[8:])) == 2
    # And every fault fires within the window, at once, on one of the three nodes
    assert all(60 <= f.after_done <= 300 and f.delay == 0.0 and 0 <= f.worker < 3 for f in first)
    # And a kind that neither run knows is refused
    with pytest.raises(ValueError, match="unknown fault kinds"):
        fault_schedule(1, 3, 100, 3, ("crash", "flood"))


def row(task_id, event, pid, at, message=None):
    return {"task_id": task_id, "message": message or f"m {task_id}", "event": event, "redelivered": 0, "pid": pid,
            "at": at}  # fmt: skip


def done_once(task_id, pid, at):
    return [row(task_id, "start", pid, at), row(task_id, "done", pid, at + 0.01)]


def test_checker_reports_a_published_task_with_no_done_row_as_lost():
    # Given three confirmed tasks and a ledger in which the third started and never finished
    published = {t: f"m {t}" for t in ("t1", "t2", "t3")}
    rows = done_once("t1", 100, 1.0) + done_once("t2", 100, 2.0) + [row("t3", "start", 100, 3.0)]

    # When the checker counts them
    report = check(published, rows, queue={"ready": 0, "unacked": 0})

    # Then it reports one lost task, by id, and fails the run
    assert report.lost == 1 and report.lost_ids == ["t3"]
    assert report.completed == 2 and report.ok is False


def test_checker_counts_a_row_of_a_task_never_published_as_unexpected():
    published = {"t1": "m t1"}
    rows = done_once("t1", 100, 1.0) + done_once("stranger", 100, 2.0)

    report = check(published, rows, queue={"ready": 0, "unacked": 0})

    assert report.unexpected == 1 and report.unexpected_ids == ["stranger"] and report.ok is False


def test_checker_explains_a_second_run_after_the_kill_of_the_process_running_the_first():
    # Given a task whose process was SIGKILLed mid-task, and which then ran again elsewhere to the end,
    # and a task that ran twice while no fault was anywhere near it
    published = {"hit": "m hit", "twice": "m twice"}
    rows = (
        [row("hit", "start", 100, 10.0)]
        + done_once("hit", 200, 12.5)
        + done_once("twice", 200, 20.0)
        + done_once("twice", 300, 30.0)
    )
    kill = Fault("kill_worker", begin=10.5, end=10.5, pids=frozenset({100}), worker="w1#0")

    # When the checker counts them
    report = check(published, rows, [kill], queue={"ready": 0, "unacked": 0})

    # Then the killed task is no duplicate (it finished once) and its redelivery took 2 s
    assert report.lost == 0
    assert report.redelivery_latency["count"] == 1 and report.redelivery_latency["p50"] == 2.0
    # And the task that ran twice for no reason is an unexplained duplicate, which fails the run
    assert report.duplicated == 1 and report.duplicated_unexplained == 1
    assert report.unexplained[0]["task_id"] == "twice" and report.ok is False


def test_checker_explains_a_duplicate_whose_ack_was_cut_off_by_a_broker_restart():
    # Given a task finished just before the broker went down (its ack never arrived) and run again after
    published = {"t1": "m t1"}
    rows = done_once("t1", 100, 5.0) + done_once("t1", 100, 20.0)
    restart = Fault("restart_broker", begin=5.2, end=15.0)

    report = check(published, rows, [restart], queue={"ready": 0, "unacked": 0})

    assert report.duplicated == 1 and report.duplicated_explained == 1 and report.ok is True


def test_checker_explains_one_run_per_send_after_a_failed_one_and_no_more():
    # Given a task sent four more times after failed sends (a node cut off from its cluster keeps each copy,
    # unconfirmed, and hands them all on after the heal), run five times; and one sent again once, run three times
    published = {"cut": "m cut", "once": "m once"}
    rows = [r for at in (1.0, 2.0, 3.0, 4.0, 5.0) for r in done_once("cut", 100, at)]
    rows += [r for at in (6.0, 7.0, 8.0) for r in done_once("once", 100, at)]

    report = check(published, rows, republished={"cut": 4, "once": 1}, queue={"ready": 0, "unacked": 0})

    # Then each copy sent explains one run, and a run beyond them is unexplained
    assert report.duplicated == 2 and report.duplicated_explained == 1
    assert [u["task_id"] for u in report.unexplained] == ["once"] and report.ok is False


def test_checker_fails_a_run_that_leaves_messages_in_the_queue():
    published = {"t1": "m t1"}
    report = check(published, done_once("t1", 100, 1.0), queue={"ready": 0, "unacked": 1})
    assert report.leftover is True and report.ok is False


def test_checker_fails_a_run_in_which_a_worker_held_a_message_without_starting_it():
    # Given a run cut short by a worker that held t2 without starting it (the watch saw it)
    published = {"t1": "m t1", "t2": "m t2"}
    held = [{"worker": "w1#0", "hostname": "w1@host", "task_id": "t2", "seconds": 46.0}]

    report = check(published, done_once("t1", 100, 1.0), queue={"ready": 0, "unacked": 1}, held=held)

    # Then the run fails with that verdict, and t2 counts as held (it is on the broker), not as lost
    assert report.ok is False and report.held == held
    assert report.lost == 0 and report.completed == 1


def test_chaos_refuses_a_run_dir_that_already_holds_a_run(tmp_path):
    # Given a directory with the ledger of an earlier run
    (tmp_path / "ledger.sqlite").write_bytes(b"")

    # When proj chaos is pointed at it
    result = run_chaos("--out", str(tmp_path), timeout=60)

    # Then it says so in one line and exits non-zero, before starting anything
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"proj chaos: {tmp_path} already holds a chaos run (ledger.sqlite): pass an empty --out"
    ]


def test_chaos_reports_a_message_a_worker_holds_without_starting_as_its_own_verdict(tmp_path):
    # Given workers of the stuck test build (tests/stuck_build.py) whose pool swallows the first job
    # it is handed, with the guard off (PROJ_STUCK_AFTER=0), so nothing gives that message back
    run_dir = tmp_path / "run"
    env = {
        "PROJ_TEST_STUCK": "swallow-first-job",
        "PROJ_TEST_STUCK_MARKER": str(tmp_path / "fired"),  # shared: the fault fires once in the run
        "PYTHONPATH": str(REPO_ROOT / "tests"),
        "PROJ_STUCK_AFTER": "0",
        "PROJ_POOL": "prefork",  # the stuck build breaks the prefork pool
    }

    # When proj chaos runs them with a bound of 3 s
    result = run_chaos(
        "--tasks", "20", "--faults", "0", "--workers", "2", "--stuck-after", "3",
        "--worker-app", "stuck_build", "--out", str(run_dir), env=env, timeout=180,
    )  # fmt: skip

    # Then it ends with the held verdict instead of waiting for the drain, and exits 1
    report = json.loads((run_dir / "report.json").read_text())
    explain = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 1, explain
    (held,) = report["held"]
    assert report["ok"] is False and report["stuck_after"] == 3
    # naming the worker whose pool swallowed the job, and the task it holds
    worker = held["worker"].split("#")[0]
    assert "the pool swallowed a job" in (run_dir / "workers" / f"{worker}.log").read_text(), explain
    assert held["task_id"].startswith(f"chaos-{report['run_id']}-") and held["seconds"] > 3
    # and that task never started anywhere (the ledger has no row of it), yet it is held, not lost
    assert held["task_id"] not in {r["task_id"] for r in ledger.rows(str(run_dir / "ledger.sqlite"))}
    assert held["task_id"] not in report["lost_ids"]
    # in one line of the summary, with the worker and the task id
    lines = [line for line in result.stdout.splitlines() if line.startswith(" [!] held:")]
    assert len(lines) == 1 and held["worker"] in lines[0] and held["task_id"] in lines[0], explain
    assert "without starting it" in lines[0]
