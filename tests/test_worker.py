"""`celery -A proj worker` as the tutorial's worker.py, checked on a real broker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import TIMEOUT, channel_of, effective_prefetch, publish, queue_depth, wait_until
from kombu import Connection

from proj import config
from proj.celery import app
from proj.console import READY_LINE
from proj.harness.workers import REPO_ROOT
from proj.tasks import work


def test_default_worker_is_one_process_holding_at_most_one_message(fresh_queue, mgmt, start_worker):
    # Given `celery -A proj worker` started with no -c and no prefetch option
    worker = start_worker("plain", fresh_queue.url, concurrency=None)

    # Then it is one process (proj's threads pool: the task runs in a thread of it), and the broker sees one
    # consumer with prefetch 1 that acks
    assert config.POOL == "threads" and worker.children() == []

    def consumer_prefetch():
        consumers = [c for c in mgmt.consumers() if c["queue"]["name"] == config.QUEUE_NAME]
        channels = {ch["name"]: ch for ch in mgmt.channels()}
        # Per-consumer QoS (RabbitMQ 4.x) or channel-wide QoS (kombu's choice on 3.x); the
        # channel's statistics can lag its creation by one collection interval.
        return [
            (c["ack_required"], effective_prefetch(c, channels[channel_of(c)]))
            for c in consumers
            if channel_of(c) in channels
        ]

    wait_until(lambda: consumer_prefetch() and consumer_prefetch()[0][1], what="the consumer's prefetch count")
    assert consumer_prefetch() == [(True, 1)]


def test_worker_speaks_the_tutorial_and_starts_without_deprecation_warnings(fresh_queue, start_worker):
    # Given a worker, When it starts and runs the tutorial's first message
    worker = start_worker("w1", fresh_queue.url)
    publish(fresh_queue.url, ["First message."])
    worker.wait_for_line(" [x] Done", TIMEOUT)

    # Then its output reads like worker.py's
    lines = worker.log().splitlines()
    tutorial = [line for line in lines if line.startswith(" [")]
    assert tutorial == [READY_LINE, " [x] Received 'First message.'", " [x] Done"]
    # And Celery warned about nothing deprecated or pending deprecation
    assert not [line for line in lines if "Deprecat" in line], worker.log()


def test_queue_is_durable_and_the_message_persistent_and_the_publish_confirmed(fresh_queue, mgmt):
    # When a task is sent with .delay() from this process
    work.delay("Persistent.")

    # Then task_queue is durable, bound to the default exchange as in the tutorial
    queue = mgmt.queue(config.QUEUE_NAME)
    assert queue["durable"] is True and queue["auto_delete"] is False and not queue["exclusive"]
    # And the message is persistent (delivery_mode 2)
    with Connection(fresh_queue.url) as conn:
        message = conn.default_channel.basic_get(config.QUEUE_NAME, no_ack=True)
    assert message.properties["delivery_mode"] == 2
    assert message.headers["task"] == "proj.tasks.work"
    assert json.loads(message.body)[0] == ["Persistent."]
    # And the producer's channel is in confirm mode (publisher confirms)
    channels = wait_until(lambda: [ch for ch in mgmt.channels() if ch.get("confirm")], what="a confirm-mode channel")
    assert channels


def test_delay_returns_a_result_that_can_be_fetched(fresh_queue, start_worker):
    # Given a worker
    start_worker("w1", fresh_queue.url)

    # When a task is sent with .delay()
    result = work.delay("Hello...")

    # Then its result comes back over RabbitMQ itself (rpc:// backend)
    assert result.get(timeout=TIMEOUT) == 3


def test_task_events_show_every_task_for_flower(fresh_queue, start_worker, recorder):
    # Given a worker, When a task is sent
    start_worker("w1", fresh_queue.url)
    (task_id,) = publish(fresh_queue.url, ["Seen.."])

    # Then the event stream has it sent, received, started and succeeded
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].succeeded, TIMEOUT, "task-succeeded")
    task = recorder.tasks[task_id]
    assert task.sent and task.received and task.started
    assert task.message == "Seen.."


def test_a_worker_sends_every_task_event_batched_in_few_messages(fresh_queue, start_worker):
    # Given a queue bound to the event exchange that keeps every task event message, and a worker
    from kombu import Exchange, Queue

    from proj.tasks import send_many

    events = Queue("test-task-events", Exchange("celeryev", type="topic"), routing_key="task.#", durable=False)
    with Connection(fresh_queue.url) as conn:
        events.bind(conn.default_channel).declare()
        conn.default_channel.queue_purge(events.name)
    start_worker("w1", fresh_queue.url)

    # When it runs 60 tasks
    ids = send_many([f"batched {i}" for i in range(60)], fresh_queue.url)

    # Then every task's received, started and succeeded events arrive, in far fewer messages than events
    kinds = ("task-received", "task-started", "task-succeeded")
    seen: dict[str, set[str]] = {}
    messages = 0

    def all_seen() -> bool:
        nonlocal messages
        with Connection(fresh_queue.url) as conn:
            while (message := conn.default_channel.basic_get(events.name, no_ack=True)) is not None:
                body = json.loads(message.body)
                messages += 1
                for event in body if isinstance(body, list) else [body]:
                    if event["type"] in kinds:
                        seen.setdefault(event["uuid"], set()).add(event["type"])
        return all(seen.get(i) == set(kinds) for i in ids)

    try:
        wait_until(all_seen, TIMEOUT, "received, started and succeeded of every task")
    finally:
        with Connection(fresh_queue.url) as conn:
            conn.default_channel.queue_delete(events.name)
    assert messages < 3 * len(ids) / 2, f"{3 * len(ids)} events came in {messages} messages"


def test_non_string_message_that_reaches_a_worker_fails_once_and_is_not_redelivered(
    fresh_queue, mgmt, start_worker, recorder
):
    # Given a worker, and a message with an int argument sent around the producer-side check
    worker = start_worker("w1", fresh_queue.url)
    with Connection(fresh_queue.url) as conn:
        task_id = app.send_task("proj.tasks.work", args=[5], connection=conn, ignore_result=True).id

    # Then the task fails once, with a clear message, and the message is gone (acked, not requeued)
    recorder.wait_for(lambda r: task_id in r.tasks and r.tasks[task_id].failed, TIMEOUT, "task-failed")
    task = recorder.tasks[task_id]
    assert len(task.failed) == 1 and len(task.received) == 1
    assert "takes the message as a str, got int" in task.failed[0][2]
    wait_until(
        lambda: queue_depth(fresh_queue.url) == 0 and mgmt.counts(config.QUEUE_NAME)[1] == 0,
        what="nothing ready or unacked",
    )
    # And the worker runs the next task normally
    publish(fresh_queue.url, ["Next."])
    recorder.wait_for(lambda r: r.succeeded_count() == 1, TIMEOUT, "next task succeeded")
    assert worker.alive()


def test_worker_imports_cleanly_with_warnings_as_errors():
    # The app and its config import with every warning turned into an error
    code = "import proj, proj.tasks, proj.signals; print(proj.app.conf.task_acks_late)"
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_delay_from_another_thread_reaches_task_queue(fresh_queue):
    # Given a thread other than the one that imported the app (a web server's pool, say)
    import threading

    sent = []
    thread = threading.Thread(target=lambda: sent.append(work.delay("From a thread.")))
    # When it sends a task
    thread.start()
    thread.join(TIMEOUT)
    # Then the task is in task_queue, not in a queue of Celery's fallback app that nobody consumes
    assert sent and queue_depth(fresh_queue.url) == 1


def test_proj_uses_no_deprecated_rabbitmq_feature(fresh_queue, start_worker, recorder):
    # Given a worker that ran a task whose result came back (rpc://), with its events recorded and
    # answering remote control (its pidbox queue): what a worker, a producer and Flower declare and consume
    start_worker("w1", fresh_queue.url)
    assert work.delay("Deprecated?.").get(timeout=TIMEOUT) == 1
    recorder.wait_for(lambda r: any(t.succeeded for t in r.tasks.values()), TIMEOUT, "task-succeeded")
    assert app.control.ping(timeout=5)

    # When the node is asked which deprecated features have been used (RabbitMQ 3.13 and later: global QoS,
    # transient non-exclusive queues, ...; 3.10 has no such list)
    if tuple(int(x) for x in fresh_queue.version.split(".")[:2]) < (3, 13):
        pytest.skip(f"RabbitMQ {fresh_queue.version} keeps no list of deprecated features")
    listed = fresh_queue.rabbitmqctl("list_deprecated_features", "--used", "--formatter", "json", "-q")

    # Then it names none: nothing proj does stops working when RabbitMQ denies them by default
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [], listed.stdout
