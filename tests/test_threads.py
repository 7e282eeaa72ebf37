"""``PROJ_POOL=threads`` (proj/threads.py): tasks in threads of the worker's own process, every guarantee of the
prefork pool proven on the broker: acks late, redelivery after a lost connection, the hard time limit (a hung task
fails once, the next one runs), heartbeats, remote control and task events while a task runs. A killed worker's
message: tests/test_acknowledgment.py, whose workers run the default pool (classic and quorum)."""

from __future__ import annotations

import re

from helpers import TIMEOUT, publish, queue_depth, wait_until

from proj import config
from proj.celery import app

THREADS = {"PROJ_POOL": "threads"}
#: No-op tasks drained by one worker.
N = 40


def test_threads_worker_is_one_process_and_acks_each_task_as_it_returns(fresh_queue, mgmt, start_worker):
    # Given one worker with the threads pool
    worker = start_worker("t1", fresh_queue.url, env=THREADS)
    assert worker.children() == [], "a threads worker forks no pool process"

    # When N no-op tasks are published
    publish(fresh_queue.url, ["threads"] * N)

    # Then it runs them all, each acked as it returns: nothing left, nothing redelivered
    wait_until(lambda: worker.log().count(" [x] Done") >= N, TIMEOUT, f"{N} tasks done")
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "task_queue empty, nothing unacked")
    assert worker.log().count(" [x] Done") == N
    assert "(redelivered)" not in worker.log()
    # And its remote-control answer names this pool
    stats = app.control.inspect(destination=[worker.hostname], timeout=5).stats() or {}
    assert stats[worker.hostname]["pool"]["implementation"] == "proj.threads:TaskThreads", stats


def test_running_task_is_seen_started_and_its_worker_answers_while_it_runs(fresh_queue, start_worker, recorder):
    # Given a threads worker whose heartbeat is 1 s (the broker closes a connection silent for 2 s or more)
    worker = start_worker("t1", fresh_queue.url, env={**THREADS, "PROJ_BROKER_HEARTBEAT": "1"})

    # When a 4 s task runs
    (task_id,) = publish(fresh_queue.url, ["Long task" + "." * 40])

    # Then its task-started event arrives while it runs (Flower shows it started)
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].started, TIMEOUT, "task-started")
    assert " [x] Done" not in worker.log(), "task-started came only after the task had finished"
    # And the worker answers remote control while it runs, naming the running task
    active = app.control.inspect(destination=[worker.hostname], timeout=5).active() or {}
    assert [t["id"] for t in active.get(worker.hostname, [])] == [task_id], active
    assert " [x] Done" not in worker.log(), "the worker answered only after the task had finished"
    # And the task completes on its first delivery: heartbeats went on, the connection was never lost
    recorder.wait_for(lambda r: r.tasks[task_id].succeeded, TIMEOUT, "task-succeeded")
    assert not recorder.tasks[task_id].redelivered
    assert "Connection to broker lost" not in worker.log() and "missed heartbeats" not in worker.log()


def test_task_past_its_time_limit_fails_once_and_the_next_task_runs(fresh_queue, mgmt, start_worker, recorder):
    # Given a threads worker whose tasks may run 1 s
    worker = start_worker("t1", fresh_queue.url, env={**THREADS, "PROJ_TASK_TIME_LIMIT": "1"})

    # When a 3 s task is sent, then a short one
    (task_id,) = publish(fresh_queue.url, ["Too long" + "." * 30])
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].failed, TIMEOUT, "task-failed")
    (next_id,) = publish(fresh_queue.url, ["Next."])

    # Then the long one failed once, the worker saying why, and its message is gone
    assert re.search(r"Hard time limit \(1(\.0)?s\) exceeded for proj.tasks.work", worker.log())
    # And the next one runs in the slot's new thread, on the same worker
    recorder.wait_for(lambda r: next_id in r.tasks and r.tasks[next_id].succeeded, TIMEOUT, "next task")
    wait_until(lambda: queue_depth(fresh_queue.url) == 0 and mgmt.counts(config.QUEUE_NAME)[1] == 0, what="acked")
    task = recorder.tasks[task_id]
    assert len(task.received) == 1 and len(task.started) == 1 and len(task.failed) == 1
    assert not task.succeeded and not task.redelivered
    # And the interrupted thread, once its sleep returned, stopped there: no " [x] Done", no success of it
    wait_until(lambda: "given up by the pool" in worker.log(), TIMEOUT, "the interrupted thread's end")
    assert f"task {task_id}, given up by the pool, interrupted in thread" in worker.log()
    assert worker.log().count(" [x] Done") == 1 and not recorder.tasks[task_id].succeeded
    assert worker.alive()


def test_a_task_that_cannot_be_interrupted_ends_its_worker_after_the_grace(fresh_queue, mgmt, start_worker, recorder):
    # Given a threads worker whose tasks may run 1 s, and whose interrupted threads get 1 s to stop
    env = {**THREADS, "PROJ_TASK_TIME_LIMIT": "1", "PROJ_ABANDON_GRACE": "1"}
    worker = start_worker("t1", fresh_queue.url, env=env)

    # When a 6 s task runs (a sleep: an interruption lands only when it returns)
    (task_id,) = publish(fresh_queue.url, ["Stuck" + "." * 60])

    # Then it fails once, its message acked, and the worker ends itself with a warm shutdown
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].failed, TIMEOUT, "task-failed")
    assert worker.wait_exit(TIMEOUT) == 0
    assert "still runs in thread" in worker.log()
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "nothing left, nothing unacked")
    assert len(recorder.tasks[task_id].started) == 1 and not recorder.tasks[task_id].redelivered


def test_revoke_with_terminate_interrupts_the_running_task_and_the_worker_goes_on(
    fresh_queue, mgmt, start_worker, recorder
):
    # Given a threads worker running a 3 s task
    worker = start_worker("t1", fresh_queue.url, env=THREADS)
    (task_id,) = publish(fresh_queue.url, ["Revoke me" + "." * 30])
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].started, TIMEOUT, "task-started")

    # When it is revoked with terminate (`celery -A proj control revoke --terminate ID`)
    app.control.revoke(task_id, terminate=True)

    # Then the worker reports it revoked, its message is acked, and it never completes
    wait_until(
        lambda: any(e.get("type") == "task-revoked" and e.get("uuid") == task_id for e in list(recorder.events)),
        TIMEOUT,
        "task-revoked",
    )
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "nothing left, nothing unacked")
    # And the next task runs on the same worker while the interrupted thread still sleeps
    (next_id,) = publish(fresh_queue.url, ["Next."])
    recorder.wait_for(lambda r: next_id in r.tasks and r.tasks[next_id].succeeded, TIMEOUT, "next task")
    assert not recorder.tasks[task_id].succeeded and not recorder.tasks[task_id].failed
    assert worker.alive() and worker.log().count(" [x] Done") == 1


def test_a_task_cancelled_by_a_lost_connection_is_interrupted_and_runs_once_more_from_the_queue(
    fresh_queue, mgmt, start_worker
):
    # Given a threads worker running a 2 s task
    worker = start_worker("t1", fresh_queue.url, env=THREADS)
    (task_id,) = publish(fresh_queue.url, ["Cut off" + "." * 20])
    worker.wait_for_line(" [x] Received 'Cut off", TIMEOUT)

    # When the broker closes every connection (an operator, a node restart): acks late, the message goes back
    assert fresh_queue.rabbitmqctl("close_all_connections", "closed by the test").returncode == 0

    # Then Celery cancels the running task and the pool interrupts its thread, which never reports it done
    wait_until(lambda: f"task {task_id}, given up by the pool," in worker.log(), TIMEOUT, "the old thread's end")
    assert f"task {task_id}, given up by the pool, interrupted" in worker.log()
    # And the worker, reconnected, runs the message again, flagged redelivered, and acks it: done once
    wait_until(lambda: worker.log().count(" [x] Done") >= 1, TIMEOUT, "the redelivered task done")
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "nothing left, nothing unacked")
    assert "(redelivered)" in worker.log() and worker.log().count(" [x] Done") == 1
