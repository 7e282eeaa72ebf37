"""proj/compat.py: each private name checked before use; a missing one turns its feature off with one line."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest
from helpers import TIMEOUT, publish, take_raw
from kombu.asynchronous.timer import Timer

from proj import compat, selfcheck
from proj.harness.workers import WorkerProcess

TESTS = Path(__file__).resolve().parent


def test_every_internal_is_usable_with_the_installed_libraries():
    assert [(internal.key, problem) for internal, problem in selfcheck.self_check()] == [
        (internal.key, None) for internal in compat.INTERNALS
    ]


def test_purge_drops_cancelled_timers_and_keeps_the_rest_in_order():
    # Given a timer holding three live entries and two cancelled ones
    timer, fired = Timer(), []
    live = [timer.call_after(secs, fired.append, (secs,)) for secs in (30, 10, 20)]
    for secs in (5, 15):
        timer.call_after(secs, fired.append, (secs,)).cancel()
    assert len(timer) == 5 and all(not entry.canceled for entry in live)

    # When the cancelled ones are purged
    assert compat.purge_cancelled(timer) == 2

    # Then the live ones remain, due in the same order
    assert len(timer) == 3
    assert [item.entry.args[0] for item in timer.queue] == [10, 20, 30]
    assert compat.purge_cancelled(timer) == 0


def test_a_renamed_timer_heap_turns_the_purge_off_with_one_warning(monkeypatch, caplog):
    # Given a kombu whose Timer keeps its heap under another name
    monkeypatch.setattr(compat, "TIMER_HEAP", dataclasses.replace(compat.TIMER_HEAP, attr="_renamed"))
    monkeypatch.setattr(compat, "_warned", set())
    timer = Timer()
    timer.call_after(10, print).cancel()

    # When the purge runs twice
    with caplog.at_level(logging.WARNING, logger=compat.logger.name):
        assert compat.purge_cancelled(timer) == 0
        assert compat.purge_cancelled(timer) == 0

    # Then nothing is touched, and one line says which library, what is off and what is lost
    assert len(timer) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == compat.logger.name]
    assert len(lines) == 1, lines
    assert "kombu" in lines[0] and "is off" in lines[0] and compat.TIMER_HEAP.loses in lines[0]


@pytest.mark.broker
def test_a_worker_without_the_timer_heap_warns_once_and_still_runs_tasks(fresh_queue, tmp_path):
    # Given a worker whose kombu has no Timer._queue (the app module renames what compat looks for)
    worker = WorkerProcess(
        "renamed",
        fresh_queue.url,
        tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(TESTS / "compat_apps"), os.environ.get("PYTHONPATH", "")])},
    )
    worker.argv[worker.argv.index("-A") + 1] = "timer_renamed"
    try:
        worker.start().wait_ready(TIMEOUT)

        # When it is sent two tasks
        publish(fresh_queue.url, ["First.", "Second."])

        # Then it does them through Celery's own path
        worker.wait_for_line(" [x] Done", TIMEOUT, count=2)
        # And said once, at start, that the purge is off and what that costs
        lines = [line for line in worker.log().splitlines() if "proj.compat:" in line]
        assert len(lines) == 1, worker.log()
        assert "kombu" in lines[0] and "_queue_renamed_by_a_future_kombu" in lines[0]
    finally:
        worker.kill()


# -- Every internal: renamed, its feature is off with one warning, and the work is done Celery's way ----------

RENAMED_APPS = str(TESTS / "compat_apps")
#: Checked at worker start (the worker says so); the others at a producer's first publish.
WORKER_SIDE = (
    "delayed-delivery-step",
    "control-replies",
    "loop-thread",
    "read-buffer",
    "stuck-guard",
    "failover-mailbox",
)
PRODUCER_SIDE = ("bounded-confirms", "raw-frames", "fast-path", "nowait-reply-queue", "unconfirmed-sent-events")


@pytest.fixture
def fresh_compat(monkeypatch):
    """This process's checks and warnings forgotten for the test, and restored after it."""
    for name in ("_warned", "_checked"):
        monkeypatch.setattr(compat, name, set())
    monkeypatch.setattr(compat, "_off", {})


def test_every_internal_is_tested_on_one_side():
    assert sorted(WORKER_SIDE + PRODUCER_SIDE + ("timer-heap",)) == sorted(i.key for i in compat.INTERNALS)


@pytest.mark.parametrize("key", [internal.key for internal in compat.INTERNALS])
def test_a_renamed_name_is_found_missing_by_the_self_check(key, monkeypatch, fresh_compat, capsys):
    # Given a library that renamed every private name of this internal
    name = compat._NAMES[key]
    monkeypatch.setattr(compat, name, compat.renamed(getattr(compat, name)))

    # When the internals are checked
    problems = dict((internal.key, problem) for internal, problem in selfcheck.self_check())

    # Then this one is off, the others still usable, and `main` says so and exits 1
    assert problems.pop(key) is not None
    assert set(problems.values()) == {None}
    assert selfcheck.main() == 1
    off = [line for line in capsys.readouterr().out.splitlines() if "OFF" in line]
    assert len(off) == 1 and getattr(compat, name).loses in off[0]


def test_a_feature_checked_twice_warns_once(fresh_compat, caplog):
    with caplog.at_level(logging.WARNING, logger=compat.logger.name):
        assert not compat.usable(compat.FAST_PATH, lambda: "gone")
        assert not compat.usable(compat.FAST_PATH, lambda: None)
        compat.turned_off(compat.FAST_PATH, "failed again")
    lines = [r.getMessage() for r in caplog.records if r.name == compat.logger.name]
    assert len(lines) == 1 and "celery" in lines[0] and "gone" in lines[0] and compat.FAST_PATH.loses in lines[0]
    assert compat.off() == {"fast-path": "gone"}


def test_a_failing_guard_check_turns_the_guard_off_with_one_warning_and_says_so(fresh_compat, caplog):
    from proj import guard

    class Broken:
        @property
        def controller(self):
            raise RuntimeError("billiard changed")

    # Given a guard whose look at the pool fails
    stuck_guard = guard.Guard(Broken(), stuck_after=5)
    assert stuck_guard.report()["guard"] == "on"

    # When it checks twice
    with caplog.at_level(logging.WARNING, logger=compat.logger.name):
        stuck_guard.check()
        stuck_guard.check()

    # Then one line says the guard is off, and its report (proj health, inspect proj_stuck) says why
    lines = [r.getMessage() for r in caplog.records if r.name == compat.logger.name]
    assert len(lines) == 1 and "billiard changed" in lines[0], lines
    report = stuck_guard.report()
    assert report["guard"].startswith("off: ") and "billiard changed" in report["guard"]


def test_proj_health_reports_a_guard_that_is_off_and_stays_healthy():
    from proj.cli.health import verdict

    answers = {"w1@h": {"guard": "off: billiard changed", "held": []}, "w2@h": {"guard": "on", "held": []}}
    healthy, line = verdict(answers, [], 5, 30)
    assert healthy and "w1@h: guard off: billiard changed" in line and "w2@h: guard" not in line


@pytest.mark.broker
def test_a_failing_template_check_sends_every_delay_celerys_way_with_one_warning(
    fresh_queue, fresh_compat, monkeypatch, caplog
):
    # The measurement: with Template._check made to fail, the 2nd of three .delay() calls raised.
    from proj import frames
    from proj.celery import app
    from proj.tasks import work

    def fails(self, headers, body):
        raise RuntimeError("proj.frames: the task message template does not encode as amqp does")

    monkeypatch.setattr(frames.Template, "_check", fails)
    with (
        caplog.at_level(logging.WARNING, logger=compat.logger.name),
        app.connection_for_write(fresh_queue.url) as conn,
    ):
        producer = app.amqp.Producer(conn)
        # When three plain calls are made in a row (the first one sets the connection up)
        ids = [work.apply_async(args=[f"m{i}."], producer=producer, ignore_result=True).id for i in range(3)]

    # Then all three are queued, under the ids they returned, and one line says the fast path is off
    assert sorted(m.headers["id"] for m in take_raw(fresh_queue.url)) == sorted(ids)
    lines = [r.getMessage() for r in caplog.records if r.name == compat.logger.name]
    assert len(lines) == 1 and "fast path" in lines[0] and "template" in lines[0], lines
    assert compat.is_off(compat.FAST_PATH)


def _renamed_env(key: str) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([RENAMED_APPS, os.environ.get("PYTHONPATH", "")]),
        "PROJ_TEST_RENAMED": key,
    }


def _compat_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "proj.compat:" in line]


@pytest.mark.broker
@pytest.mark.parametrize("key", WORKER_SIDE)
def test_a_worker_without_an_internal_warns_once_and_runs_tasks(key, fresh_queue, tmp_path):
    # Given a worker whose libraries renamed this internal's private names
    internal = compat.renamed(getattr(compat, compat._NAMES[key]))
    worker = WorkerProcess(key, fresh_queue.url, tmp_path, env=_renamed_env(key))
    worker.argv[worker.argv.index("-A") + 1] = "renamed"
    try:
        worker.start().wait_ready(TIMEOUT)

        # When it is sent two tasks
        publish(fresh_queue.url, ["First.", "Second."])

        # Then it does them through Celery's own path
        worker.wait_for_line(" [x] Done", TIMEOUT, count=2)
        # And said once, at start, which feature is off and what that costs
        lines = _compat_lines(worker.log())
        assert len(lines) == 1, worker.log()
        assert internal.library in lines[0] and "is off" in lines[0] and internal.loses in lines[0], lines
        assert compat.RENAMED in lines[0], lines
        if key == "stuck-guard":
            # And proj health says the guard is off, healthy all the same
            from test_health import proj_health

            result = proj_health(fresh_queue.url, "--worker", worker.hostname)
            assert result.returncode == 0 and "guard off:" in result.stdout, result
    finally:
        worker.kill()


PRODUCER = """
import sys
import renamed  # noqa: F401 - the app, this internal's names renamed
from proj.tasks import send_many, work

results = [work.delay("x.") for _ in range(3)]
print("results", [r.get(timeout=60) for r in results])
print("bulk", len(send_many(["a.", "b."])))
"""


@pytest.mark.broker
@pytest.mark.parametrize("key", PRODUCER_SIDE)
def test_a_producer_without_an_internal_warns_once_and_its_tasks_are_done(key, fresh_queue, start_worker, tmp_path):
    import subprocess
    import sys

    # Given a worker, and a producer whose libraries renamed this internal's private names
    worker = start_worker("plain", fresh_queue.url)
    internal = compat.renamed(getattr(compat, compat._NAMES[key]))
    env = dict(os.environ, CELERY_BROKER_URL=fresh_queue.url, **_renamed_env(key))

    # When it sends three tasks with results, then two at once
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER], env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path
    )

    # Then the worker does all five, the results come back, and the producer said once what is off
    assert done.returncode == 0, done.stderr[-3000:]
    assert "results [1, 1, 1]" in done.stdout and "bulk 2" in done.stdout, done.stdout
    worker.wait_for_line(" [x] Done", TIMEOUT, count=5)
    lines = _compat_lines(done.stdout + done.stderr)
    assert len(lines) == 1, done.stderr[-3000:]
    assert internal.library in lines[0] and internal.loses in lines[0], lines


@pytest.mark.broker
def test_a_callers_own_producer_never_turns_the_fast_path_off(fresh_queue, capfd):
    # Given a caller's own producer on a channel where task_queue was never declared (as proj bench's loader)
    from kombu import Connection, Producer

    from proj.tasks import work

    assert not compat.is_off(compat.FAST_PATH)
    with Connection(fresh_queue.url) as conn:
        channel = conn.channel()
        channel.confirm_select()
        producer = Producer(channel, auto_declare=False)

        # When it sends more tasks than the fast path's "never ready" allowance
        for n in range(6):
            work.apply_async(args=[f"Task {n}."], producer=producer, ignore_result=True)

    # Then they all went Celery's way, and nothing says a library changed: the fast path stays on
    assert not compat.is_off(compat.FAST_PATH), compat.off()
    assert "proj.compat:" not in capfd.readouterr().err


def test_a_connection_of_another_transport_turns_nothing_off(fresh_compat):
    # Given a kombu connection of the in-memory transport (a test's embedded worker), not py-amqp's
    from kombu import Connection

    from proj import frames

    with Connection("memory://") as conn:
        conn.connect()

        # When the producer asks whether it can write frames to it
        # Then it cannot, and nothing says a library changed: frames stay on for amqp connections
        assert frames.usable(conn.connection) is False
    assert not compat.is_off(compat.RAW_FRAMES)
