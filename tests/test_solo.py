"""The solo pool (`celery -A proj worker -P solo`): the task runs in the worker's main process, and still
every ack reaches the broker as the task returns, so prefetch 1 hands out the next message at once."""

from __future__ import annotations

import os
import signal
import time

from helpers import TIMEOUT, publish, queue_depth, wait_until

from proj import config

#: No-op tasks drained by one solo worker. Before proj.consumer sent the ack at once, each ack waited
#: for the event loop's next timer (about 1 s, up to the 2 s heartbeat): N tasks took N seconds or more.
N = 40
#: A generous bound for N no-op tasks (with the fix: well under a second on an idle machine).
BOUND = 15.0


def test_solo_worker_acks_each_task_as_it_returns_and_drains_the_queue(fresh_queue, mgmt, start_worker):
    # Given one solo worker (acks late, prefetch 1) consuming an empty task_queue
    worker = start_worker("solo", fresh_queue.url, extra_args=("-P", "solo"))

    # When N no-op tasks are published
    began = time.monotonic()
    publish(fresh_queue.url, ["solo"] * N)

    # Then it runs all N well within the bound: each ack goes out as its task returns, so the broker
    # (holding back the next message until then) never waits for the worker's event loop to wake up
    wait_until(lambda: worker.log().count(" [x] Done") >= N, BOUND, f"{N} no-op tasks done by a solo worker")
    elapsed = time.monotonic() - began
    # And every message was acked, none left or redelivered
    wait_until(lambda: queue_depth(fresh_queue.url) == 0, TIMEOUT, "task_queue empty")
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "no message left unacked")
    assert worker.log().count(" [x] Done") == N, worker.log()
    assert "(redelivered)" not in worker.log()
    print(f"{N} no-op tasks on a solo worker: {elapsed:.2f} s")


def test_message_of_a_killed_solo_worker_is_redelivered_to_the_other(fresh_queue, mgmt, start_worker, recorder):
    # Given two solo workers, and a 3 s task running on one of them (in its main process)
    workers = [start_worker(name, fresh_queue.url, extra_args=("-P", "solo")) for name in ("s1", "s2")]
    (task_id,) = publish(fresh_queue.url, ["Long task" + "." * 30])
    # The worker's own " [x] Received" line, not its task-started event: a solo worker's events wait in its
    # event loop, which the running task blocks, so they arrive when the task has finished.
    runner = wait_until(
        lambda: next((w for w in workers if "Received 'Long task" in w.log()), None), TIMEOUT, "started"
    )
    (other,) = [w for w in workers if w is not runner]

    # When that worker is SIGKILLed mid-task (acks late: no ack was sent)
    os.kill(runner.pid, signal.SIGKILL)

    # Then the other solo worker gets it, flagged redelivered, and completes it; nothing is left in the queue
    recorder.wait_for(lambda r: r.tasks[task_id].succeeded, TIMEOUT, "redelivered task succeeded")
    task = recorder.tasks[task_id]
    assert [host for host, _ in task.succeeded] == [other.hostname]
    assert [host for host, _ in task.redelivered] == [other.hostname]
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "task_queue empty and nothing unacked")
