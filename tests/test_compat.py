"""proj/compat.py: each private name checked before use; a missing one turns its feature off with one line."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest
from helpers import TIMEOUT, publish
from kombu.asynchronous.timer import Timer

from proj import compat
from proj.harness.workers import WorkerProcess

TESTS = Path(__file__).resolve().parent


def test_every_internal_is_usable_with_the_installed_libraries():
    assert [(internal.key, problem) for internal, problem in compat.self_check()] == [
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
