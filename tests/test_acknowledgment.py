"""Message acknowledgment: a message leaves the queue only after the work; a dead worker's message moves on.

Two real workers share ``task_queue``. A long task starts on one of them; then that worker is
killed (the worker; with the prefork pool, its pool child alone) or shut down (warm, cold), and the
event stream and the broker say where the message went.
"""

from __future__ import annotations

import os
import signal

import pytest
from helpers import PREFORK, QUEUE_TYPES, TIMEOUT, publish, queue_depth, wait_until

from proj import config

LONG_TASK = "Long task" + "." * 30  # 3 s at the tests' 0.1 s per dot


@pytest.fixture
def two_workers(fresh_queue, start_worker):
    workers = [start_worker(name, fresh_queue.url, wait=False) for name in ("w1", "w2")]
    for w in workers:
        w.wait_ready(TIMEOUT)
    return {w.hostname: w for w in workers}


@pytest.fixture
def two_prefork_workers(fresh_queue, start_worker):
    """Two workers of the prefork pool (PROJ_POOL=prefork): each runs its task in a pool child."""
    workers = [start_worker(name, fresh_queue.url, wait=False, env=PREFORK) for name in ("w1", "w2")]
    for w in workers:
        w.wait_ready(TIMEOUT)
    return {w.hostname: w for w in workers}


def start_long_task(url, recorder, workers, queue_type=None):
    """Publish LONG_TASK and return (task record, the worker running it, the other worker)."""
    (task_id,) = publish(url, [LONG_TASK], queue_type=queue_type)
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].started, TIMEOUT, "long task started")
    runner = workers[recorder.tasks[task_id].started[0][0]]
    (other,) = [w for w in workers.values() if w is not runner]
    return task_id, runner, other


def queue_is_settled(mgmt, url) -> bool:
    """Nothing ready and nothing unacknowledged in task_queue, as the broker counts them."""
    counts = mgmt.counts(config.QUEUE_NAME)
    return queue_depth(url) == 0 and counts is not None and counts[1] == 0


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_message_of_killed_worker_is_redelivered_to_the_other_worker(
    queue_type, fresh_queue, mgmt, two_workers, recorder
):
    # Given a long task running on one of two workers, on a task_queue of this type
    task_id, runner, other = start_long_task(fresh_queue.url, recorder, two_workers, queue_type)

    # When that worker's main process is SIGKILLed mid-task (its connection drops, no ack sent)
    os.kill(runner.pid, signal.SIGKILL)

    # Then the other worker receives it flagged redelivered and completes it
    recorder.wait_for(lambda r: r.tasks[task_id].succeeded, TIMEOUT, "redelivered task succeeded")
    task = recorder.tasks[task_id]
    assert [host for host, _ in task.succeeded] == [other.hostname]
    assert [host for host, _ in task.redelivered] == [other.hostname]
    assert task.result == "30"
    # And the broker holds nothing for it any more
    wait_until(lambda: queue_is_settled(mgmt, fresh_queue.url), what="task_queue empty and nothing unacked")


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_message_of_killed_pool_child_is_redelivered(queue_type, fresh_queue, mgmt, two_prefork_workers, recorder):
    # Given a long task running in the pool child of one of two prefork workers, on a task_queue of this type
    task_id, runner, _ = start_long_task(fresh_queue.url, recorder, two_prefork_workers, queue_type)
    (child,) = runner.children()

    # When only the pool child is SIGKILLed (the main process lives on)
    os.kill(child, signal.SIGKILL)

    # Then the message is rejected back to the queue (task_reject_on_worker_lost), not acked:
    # it is delivered again, flagged redelivered, and completed exactly once
    recorder.wait_for(lambda r: r.tasks[task_id].succeeded, TIMEOUT, "redelivered task succeeded")
    task = recorder.tasks[task_id]
    assert len(task.received) == 2
    assert len(task.redelivered) == 1 and len(task.succeeded) == 1
    assert runner.alive()
    wait_until(lambda: queue_is_settled(mgmt, fresh_queue.url), what="task_queue empty and nothing unacked")


# Ctrl+C and SIGTERM (docker stop, honcho) both mean warm shutdown. Celery exits with status 1
# (EX_FAILURE) after Ctrl+C and 0 after SIGTERM.
@pytest.mark.parametrize(
    ("signum", "exit_status"), [(signal.SIGINT, 1), (signal.SIGTERM, 0)], ids=["ctrl-c", "sigterm"]
)
def test_warm_shutdown_finishes_the_running_task_and_acks_it_once(
    fresh_queue, mgmt, two_workers, recorder, signum, exit_status
):
    # Given a long task running on one of two workers
    task_id, runner, other = start_long_task(fresh_queue.url, recorder, two_workers)

    # When that worker gets one Ctrl+C or SIGTERM (warm shutdown)
    runner.signal(signum)

    # Then it finishes the task, acks it and exits by itself
    assert runner.wait_exit(TIMEOUT) == exit_status
    task = recorder.tasks[task_id]
    recorder.wait_for(lambda r: r.tasks[task_id].succeeded, TIMEOUT, "task succeeded")
    assert [host for host, _ in task.succeeded] == [runner.hostname]
    assert " [x] Done" in runner.log()
    # And the message is gone: never redelivered, nothing left for the other worker
    wait_until(lambda: queue_is_settled(mgmt, fresh_queue.url), what="task_queue empty and nothing unacked")
    assert task.redelivered == [] and len(task.received) == 1
    assert LONG_TASK not in other.log()


def test_cold_shutdown_puts_the_running_task_back_for_another_worker(fresh_queue, mgmt, two_workers, recorder):
    # Given a long task running on one of two workers
    task_id, runner, other = start_long_task(fresh_queue.url, recorder, two_workers)

    # When that worker gets SIGQUIT (cold shutdown: the task is abandoned, not finished)
    runner.signal(signal.SIGQUIT)
    runner.wait_exit(TIMEOUT)

    # Then the other worker receives it flagged redelivered and completes it
    recorder.wait_for(lambda r: r.tasks[task_id].succeeded, TIMEOUT, "redelivered task succeeded")
    task = recorder.tasks[task_id]
    assert [host for host, _ in task.succeeded] == [other.hostname]
    assert [host for host, _ in task.redelivered] == [other.hostname]
    assert f" [x] Received {LONG_TASK!r} (redelivered)" in other.log()
    wait_until(lambda: queue_is_settled(mgmt, fresh_queue.url), what="task_queue empty and nothing unacked")
