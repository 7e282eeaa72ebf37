"""Poison tasks are bounded: a task that kills its worker every time is dead-lettered after
PROJ_MAX_DELIVERIES deliveries, on classic and quorum queues, while other tasks keep flowing; and a message
past a quorum task_queue's own delivery-limit (the broker's backstop) is dead-lettered by RabbitMQ, never dropped.
Also: time limits, the consumer-timeout check at start, and queue-type conflicts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from helpers import PREFORK, TIMEOUT, Poller, publish, queue_depth, wait_until

from proj import config, deadletter, queues
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
    # Prefork workers: the killer ends the pool child running the task, and the worker lives on to count
    env = {"PROJ_QUEUE_TYPE": queue_type, "PROJ_MAX_DELIVERIES": str(MAX_DELIVERIES), **PREFORK}
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
    # And the letter carries the count it was stopped at: proj's header on a classic queue; on a quorum one
    # the broker's (a pool process killed is Celery's basic.reject, which every version counts), read back
    # here on 4.3 only: 3.10 overwrites x-delivery-count with task_queue.dead's own count (0) as it hands it out
    if queue_type == "classic":
        assert letter.headers[deadletter.DELIVERIES] == MAX_DELIVERIES, letter.headers
    elif fresh_queue.version.startswith("4.3"):
        assert letter.headers["x-delivery-count"] == MAX_DELIVERIES, letter.headers
        assert letter.headers["x-acquired-count"] == MAX_DELIVERIES, letter.headers  # 4.3's count of hand-outs
    # And the healthy tasks all completed meanwhile, and nothing is left in task_queue
    recorder.wait_for(lambda r: r.succeeded_count() == 6, TIMEOUT, "healthy tasks succeeded")
    assert not recorder.tasks[poison_id].succeeded
    wait_until(lambda: queue_depth(fresh_queue.url) == 0, what="task_queue empty")


def reject_until_dead_lettered(node) -> list[dict]:
    """Take task_queue's message and basic.reject it with requeue, as a consumer with no count of its own
    would, until the broker takes it away; returns its headers at each delivery."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))
    seen: list[dict] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        channel = connection.channel()
        while queue_depth(node.url, config.DEAD_QUEUE_NAME) == 0:
            assert time.monotonic() < deadline and len(seen) <= 2 * MAX_DELIVERIES, f"still returned after {seen}"
            method, properties, _ = channel.basic_get(config.QUEUE_NAME)
            if method is not None:
                seen.append(dict(properties.headers or {}))
                channel.basic_reject(method.delivery_tag, requeue=True)
    finally:
        connection.close()
    return seen


def test_message_past_a_quorum_task_queues_delivery_limit_is_dead_lettered_by_rabbitmq_and_can_run_again(
    fresh_queue, mgmt, start_worker, recorder
):
    # Given a quorum task_queue declared by a worker that set proj's dead-letter policies, then was killed
    url = fresh_queue.url
    env = {
        "PROJ_QUEUE_TYPE": "quorum",
        "PROJ_MAX_DELIVERIES": str(MAX_DELIVERIES),
        "PROJ_MANAGEMENT_URL": fresh_queue.management_url,
    }
    start_worker("w1", url, env=env).kill()
    # And the quorum policy in effect on it: the dead-letter keys and the broker's delivery-limit
    listed = json.loads(fresh_queue.rabbitmqctl("list_policies", "--formatter", "json").stdout)
    assert {p["name"] for p in listed} == set(queues.POLICY_NAMES), listed
    # (the node is the module's: an earlier test's worker set the same policy with the default limit, and the API
    # shows a policy's new definition on the queue with its next statistics)
    expected = {**queues.DEAD_LETTERING, "delivery-limit": MAX_DELIVERIES}
    wait_until(
        lambda: (
            (q := mgmt.queue(config.QUEUE_NAME)).get("policy") == queues.QUORUM_POLICY_NAME
            and q.get("effective_policy_definition") == expected
        ),
        what=f"the quorum policy shown on task_queue with {expected}",
    )

    # When a consumer that is not proj (it keeps no count) returns the task every time it gets it
    (task_id,) = publish(url, ["Returned..."], queue_type="quorum")
    seen = reject_until_dead_lettered(fresh_queue)

    # Then the broker handed it out MAX_DELIVERIES + 1 times, counting every return (a first delivery has
    # x-delivery-count 0 on 3.10; 4.3 leaves it out)
    assert [h.get("x-delivery-count", 0) for h in seen] == list(range(MAX_DELIVERIES + 1)), seen
    if fresh_queue.version.startswith("4.3"):
        assert [h.get("x-acquired-count") for h in seen] == [None, *range(1, MAX_DELIVERIES + 1)], seen
    # And it is in task_queue.dead with the broker's reason, not dropped, and task_queue is empty
    (letter,) = dead.list_letters(url)
    assert letter.id == task_id
    assert letter.reason == f"delivery_limit by RabbitMQ (from {config.QUEUE_NAME})"
    assert letter.headers["x-first-death-reason"] == "delivery_limit"
    assert queue_depth(url) == 0

    # When it is put back (`proj dead requeue`) and a worker starts
    assert dead.requeue({task_id}, url) == [task_id]
    start_worker("w2", url, env=env)

    # Then it runs once and succeeds: the counters it carried did not count it out again
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].succeeded, TIMEOUT, "requeued task succeeded")
    assert len(recorder.tasks[task_id].started) == 1
    assert queue_depth(url, config.DEAD_QUEUE_NAME) == 0


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_task_past_its_time_limit_fails_once_and_is_not_redelivered(pool, fresh_queue, mgmt, start_worker, recorder):
    # Given a worker (of the default threads pool, or prefork) whose tasks may run 1 s
    worker = start_worker("w1", fresh_queue.url, env={"PROJ_TASK_TIME_LIMIT": "1", "PROJ_POOL": pool})

    # When a 3 s task is sent
    (task_id,) = publish(fresh_queue.url, ["Too long" + "." * 30])

    # Then it fails once, the worker saying why, and the message is gone
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].failed, TIMEOUT, "task-failed")
    task = recorder.tasks[task_id]
    assert task.failed  # prefork: Celery reports the timeout, then the killed pool process: one execution
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
