"""Many tasks at once (``proj.tasks.send_many``, ``new-task --file``): pipelined on one channel, every message
confirmed by the real broker or reported by its position and id, none sent twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TIMEOUT, queue_depth, take_raw, wait_until, without_ids
from kombu import Connection

from proj import config
from proj.bulk import BulkPublishError
from proj.celery import app
from proj.tasks import send_many

NEW_TASK = Path(sys.executable).with_name("new-task")


def run_new_task(argv: list[str], broker_url: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [str(NEW_TASK), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def take_all(url: str) -> list[tuple[str, list]]:
    """(task id, args) of every message in task_queue, in queue order, removed from it."""
    import json

    taken = []
    with Connection(url) as conn:
        while (message := conn.default_channel.basic_get(config.QUEUE_NAME, no_ack=True)) is not None:
            taken.append((message.headers["id"], json.loads(message.body)[0]))
    return taken


def test_send_many_returns_when_every_message_is_confirmed_and_each_runs_once(
    fresh_queue, mgmt, recorder, start_worker
):
    # Given an empty task_queue, no worker yet, and the event stream Flower reads
    messages = [f"bulk {i}" + "." * (i % 2) for i in range(200)]

    # When 200 messages are sent at once
    ids = send_many(messages, fresh_queue.url)

    # Then it returned one id per message, and the broker holds every one of them, persistent
    assert len(set(ids)) == len(messages)
    assert queue_depth(fresh_queue.url) == len(messages)
    wait_until(
        lambda: (mgmt.queue(config.QUEUE_NAME) or {}).get("messages_persistent") == len(messages),
        TIMEOUT,
        "every message persistent",
    )
    # And every task has its task-sent event, as a .delay() would
    recorder.wait_for(lambda r: all(r.tasks.get(i) and r.tasks[i].sent for i in ids), TIMEOUT, "task-sent events")
    # with the fields Celery's send_task_message gives it (Flower shows the name and the arguments)
    sent = {e["uuid"]: e for e in recorder.events if e.get("type") == "task-sent"}
    for task_id, message in zip(ids, messages, strict=True):
        event = sent[task_id]
        assert (event["name"], event["args"], event["kwargs"]) == ("proj.tasks.work", repr([message]), "{}")
        assert (event["queue"], event["routing_key"]) == (config.QUEUE_NAME, config.QUEUE_NAME)
        assert event["root_id"] == task_id

    # When a worker runs them
    start_worker("bulk", fresh_queue.url)

    # Then each runs exactly once, with its own message
    recorder.wait_for(lambda r: all(r.tasks[i].succeeded for i in ids), TIMEOUT, "every task succeeded")
    for task_id, message in zip(ids, messages, strict=True):
        task = recorder.tasks[task_id]
        assert len(task.started) == 1 and len(task.succeeded) == 1
        assert task.message == message


def test_a_refused_message_is_reported_by_position_and_id_and_none_is_sent_twice(queue_of_three):
    # Given a task_queue that takes three messages and refuses more
    url = queue_of_three.url

    # When five are sent at once
    with pytest.raises(BulkPublishError) as raised:
        send_many([f"m{i}" for i in range(1, 6)], url)

    # Then the fourth and fifth are reported, by position and id, as refused by the broker
    error = raised.value
    assert [(f.position, f.task_id) for f in error.failures] == [(4, error.ids[3]), (5, error.ids[4])]
    assert all("basic.nack" in f.reason for f in error.failures)
    assert error.confirmed == error.ids[:3]
    # And the queue holds the first three, each once: nothing was published again
    assert take_all(url) == [(error.ids[i], [f"m{i + 1}"]) for i in range(3)]


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_new_task_file_sends_one_task_per_line_and_prints_sent_for_each(fresh_queue, tmp_path, source):
    # Given three messages, one per line (one with a quote, one empty line is a message too)
    lines = ["First message.", "It's the second..", ""]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "messages.txt"
    path.write_text(text)

    # When new-task reads them from a file or from standard input
    if source == "file":
        result = run_new_task(["--file", str(path)], fresh_queue.url)
    else:
        result = run_new_task(["--file", "-"], fresh_queue.url, stdin=text)

    # Then it prints the tutorial's line for each, and task_queue holds them in order
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f" [x] Sent {line!r}" for line in lines]
    assert [args for _, args in take_all(fresh_queue.url)] == [[line] for line in lines]


def test_new_task_file_names_each_refused_line_and_exits_2(queue_of_three, tmp_path):
    # Given a task_queue that takes three messages and refuses more, and a file of five
    path = tmp_path / "five.txt"
    path.write_text("".join(f"m{i}\n" for i in range(1, 6)))

    # When new-task sends the file
    result = run_new_task([f"--file={path}"], queue_of_three.url)

    # Then it exits 2, prints Sent for the three queued, and one line per refused message: position and id
    assert result.returncode == 2
    assert result.stdout.splitlines() == [" [x] Sent 'm1'", " [x] Sent 'm2'", " [x] Sent 'm3'"]
    errors = result.stderr.splitlines()
    assert len(errors) == 2, result.stderr
    queued = take_all(queue_of_three.url)
    assert [args for _, args in queued] == [["m1"], ["m2"], ["m3"]]
    for line, position in zip(errors, (4, 5), strict=True):
        assert line.startswith(f"new-task: not queued: message {position} (id ")
        assert "basic.nack" in line
    assert not {task_id for task_id, _ in queued} & {line.split("(id ")[1].split(")")[0] for line in errors}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        pytest.param(["--file", "/nonexistent/messages.txt"], "cannot read /nonexistent/messages.txt", id="missing"),
        pytest.param(["--file"], "usage: new-task --file FILE", id="no-file"),
        pytest.param(["--file", "a", "b"], "usage: new-task --file FILE", id="two-files"),
    ],
)
def test_new_task_file_with_bad_usage_says_so_in_one_line_and_sends_nothing(fresh_queue, mgmt, argv, says):
    result = run_new_task(argv, fresh_queue.url)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert mgmt.queue(config.QUEUE_NAME) is None  # not even declared


def celery_published(url: str, message: str) -> None:
    """One message sent by Celery's own path (create_task_message, send_task_message), as send_many once did."""
    from celery.utils import uuid

    from proj.tasks import TASK_NAME

    with app.connection_for_write(url) as conn:
        task = app.amqp.create_task_message(uuid(), TASK_NAME, [message], {}, ignore_result=True)
        app.amqp.send_task_message(app.amqp.Producer(conn), TASK_NAME, task, queue=config.QUEUE_NAME)


def test_send_many_puts_in_task_queue_the_very_message_celery_builds(fresh_queue):
    # Given messages that test the encoding: quotes, newlines, non-ASCII, empty, and one larger than a frame
    messages = ['It\'s "quoted".', "line\nbreak..", "é😀 ünïcode.", "", "big." * 100_000]

    for message in messages:
        # When Celery's own path sends the message, then send_many sends it
        celery_published(fresh_queue.url, message)
        (task_id,) = send_many([message], fresh_queue.url)

        # Then the broker holds the same message twice: same properties, headers and body but the ids
        by_celery, by_send_many = take_raw(fresh_queue.url)
        assert without_ids(by_send_many) == without_ids(by_celery)
        assert by_send_many.headers["id"] == by_send_many.headers["root_id"] == task_id
        assert by_send_many.properties["correlation_id"] == task_id
        assert by_send_many.properties["delivery_mode"] == 2


def test_send_many_to_a_task_queue_with_other_arguments_says_so_and_sends_nothing(fresh_queue):
    # Given a task_queue left non-durable by an earlier program
    from kombu import Exchange, Queue

    from proj.tasks import PublishError

    with Connection(fresh_queue.url) as conn:
        Queue(config.QUEUE_NAME, Exchange(""), routing_key=config.QUEUE_NAME, durable=False)(
            conn.default_channel
        ).declare()

    # When send_many publishes
    with pytest.raises(PublishError) as raised:
        send_many(["First message."], fresh_queue.url)

    # Then the error names the queue and the argument, and nothing was published
    assert "task_queue" in str(raised.value) and "durable" in str(raised.value)
    assert not isinstance(raised.value, BulkPublishError)
    assert queue_depth(fresh_queue.url) == 0


@pytest.fixture
def node_to_freeze(tmp_path):
    """A private node of this test's own, thawed and stopped at the end whatever happened."""
    from helpers import start_private_node

    node = start_private_node(tmp_path / "rabbitmq")
    try:
        yield node
    finally:
        node.thaw()
        node.stop()


def test_a_node_that_freezes_mid_batch_fails_it_in_bounded_time_naming_every_message(node_to_freeze, monkeypatch):
    # Given a short publish timeout, and a batch far larger than the socket buffers (about 100 MB)
    import threading
    import time

    from proj import bulk

    monkeypatch.setattr(config, "PUBLISH_TIMEOUT", 2.0)
    messages = [f"{i:04d}" + "x" * 500_000 for i in range(200)]
    outcome: dict = {}

    # When the node freezes (SIGSTOP: connections open, nothing answers) just before the first message is
    # written: the real node, frozen from the hook where send_many has its channel and starts encoding
    class FreezingTemplate(bulk.frames.Template):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            node_to_freeze.freeze()
            outcome["frozen_at"] = time.monotonic()

    monkeypatch.setattr(bulk.frames, "Template", FreezingTemplate)

    def send() -> None:
        try:
            outcome["ids"] = send_many(messages, node_to_freeze.url)
        except Exception as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(TIMEOUT)

    # Then send_many returns (the blocked write ends with the connection's TCP timeout, set from
    # broker_connection_timeout; not held in the close either) with every message named by position and id
    assert not sender.is_alive(), "send_many still blocked on the frozen node"
    error = outcome.get("error")
    assert isinstance(error, BulkPublishError), outcome
    assert error.confirmed == []
    assert [(f.position, f.task_id) for f in error.failures] == list(enumerate(error.ids, 1))
    assert time.monotonic() - outcome["frozen_at"] < TIMEOUT
