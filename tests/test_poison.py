"""Poison tasks are bounded: a task that kills its worker every time is dead-lettered after
PROJ_MAX_DELIVERIES deliveries, on classic and quorum queues, while other tasks keep flowing.
Also: time limits, the consumer-timeout check at start, and queue-type conflicts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TIMEOUT, Poller, publish, queue_depth, wait_until

from proj import config
from proj.cli import dead
from proj.harness.workers import REPO_ROOT

MAX_DELIVERIES = 3  # smaller than the default 5, to keep the test short


class ChildKiller(Poller):
    """Kills the pool child running one task, every time that task starts (a task that crashes its worker)."""

    interval = 0.02

    def __init__(self, recorder, workers, task_id):
        self.recorder, self.workers, self.task_id = recorder, workers, task_id
        self.kills = 0
        super().__init__()

    def poll(self) -> None:
        task = self.recorder.tasks.get(self.task_id)
        if task is None or len(task.started) <= self.kills:
            return
        host = task.started[self.kills][0]
        for child in self.workers[host].children():
            os.kill(child, signal.SIGKILL)
        self.kills += 1


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_task_that_kills_its_worker_every_time_is_dead_lettered_after_max_deliveries(
    queue_type, fresh_queue, start_worker, recorder
):
    # Given two workers on a task_queue of this type, with a delivery limit
    env = {"PROJ_QUEUE_TYPE": queue_type, "PROJ_MAX_DELIVERIES": str(MAX_DELIVERIES)}
    workers = {w.hostname: w for w in (start_worker(n, fresh_queue.url, env=env) for n in ("w1", "w2"))}

    # When a poison task is sent (its every execution kills the process running it), with others
    (poison_id,) = publish(fresh_queue.url, ["Poison" + "." * 20], declare=[])
    with ChildKiller(recorder, workers, poison_id) as killer:
        publish(fresh_queue.url, [f"Healthy {i}." for i in range(6)], declare=[])

        # Then it is delivered MAX_DELIVERIES times, and then lands in task_queue.dead with the reason
        wait_until(lambda: queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 1, what="the poison dead-lettered")
    (letter,) = dead.list_letters(fresh_queue.url)
    assert letter.id == poison_id
    assert f"delivered {MAX_DELIVERIES} times" in letter.reason and "PROJ_MAX_DELIVERIES" in letter.reason
    assert killer.kills == MAX_DELIVERIES
    assert len(recorder.tasks[poison_id].started) == MAX_DELIVERIES
    # And the healthy tasks all completed meanwhile, and nothing is left in task_queue
    recorder.wait_for(lambda r: r.succeeded_count() == 6, TIMEOUT, "healthy tasks succeeded")
    assert not recorder.tasks[poison_id].succeeded
    wait_until(lambda: queue_depth(fresh_queue.url) == 0, what="task_queue empty")


def test_task_past_its_time_limit_fails_once_and_is_not_redelivered(fresh_queue, mgmt, start_worker, recorder):
    # Given a worker whose tasks may run 1 s
    worker = start_worker("w1", fresh_queue.url, env={"PROJ_TASK_TIME_LIMIT": "1"})

    # When a 3 s task is sent
    (task_id,) = publish(fresh_queue.url, ["Too long" + "." * 30])

    # Then it fails once, the worker saying why, and the message is gone
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].failed, TIMEOUT, "task-failed")
    task = recorder.tasks[task_id]
    assert task.failed  # Celery reports the timeout, then the killed pool process: one execution
    assert re.search(r"Hard time limit \(1(\.0)?s\) exceeded for proj.tasks.work", worker.log())
    wait_until(lambda: queue_depth(fresh_queue.url) == 0 and mgmt.counts(config.QUEUE_NAME)[1] == 0, what="acked")
    # And nothing came back: the next task runs, the long one never started again
    publish(fresh_queue.url, ["Next."])
    recorder.wait_for(lambda r: r.succeeded_count() == 1, TIMEOUT, "next task")
    assert len(task.received) == 1 and len(task.started) == 1 and not task.redelivered


def run_worker_briefly(url: str, env: dict) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-n", "refused@%h", "--without-mingle"]
    full_env = {**os.environ, "CELERY_BROKER_URL": url, **env}
    return subprocess.run(argv, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=60)


def test_worker_refuses_to_start_when_the_time_limit_is_not_below_the_consumer_timeout(broker):
    # When a worker is started with a time limit equal to RabbitMQ's default consumer timeout
    out = run_worker_briefly(broker.url, {"PROJ_TASK_TIME_LIMIT": "1800"})

    # Then it exits 1 with one line naming both settings
    assert out.returncode == 1
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("proj worker:")]
    assert "PROJ_TASK_TIME_LIMIT" in line and "PROJ_BROKER_CONSUMER_TIMEOUT" in line
    assert "Traceback" not in out.stderr


def test_worker_and_producer_stop_on_a_task_queue_of_another_type(fresh_queue, start_worker):
    # Given task_queue declared classic (as the seed tutorial does)
    publish(fresh_queue.url, ["Classic."])

    # When a worker and new-task configured for a quorum queue start
    worker = run_worker_briefly(fresh_queue.url, {"PROJ_QUEUE_TYPE": "quorum"})
    env = {**os.environ, "CELERY_BROKER_URL": fresh_queue.url, "PROJ_QUEUE_TYPE": "quorum"}
    producer = subprocess.run(
        [str(Path(sys.executable).with_name("new-task")), "Quorum."],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then each stops with one line naming the queue, the argument and the setting to change
    assert producer.returncode == 2, producer.stderr  # cannot run: proj/cli/exits.py
    for out in (worker, producer):
        assert out.returncode != 0, out.stderr
        lines = [line for line in out.stderr.splitlines() if "task_queue" in line]
        assert len(lines) == 1, out.stderr
        assert "'x-queue-type'" in lines[0] and "PROJ_QUEUE_TYPE" in lines[0]
        assert "Traceback" not in out.stderr
    # And the queue still holds its message, untouched
    assert queue_depth(fresh_queue.url) == 1
