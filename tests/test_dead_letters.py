"""Nothing is deleted: what a worker cannot run goes to task_queue.dead, with the reason.

And the tutorial's own pika producer is served: its plain-text messages run as proj.tasks.work.
"""

from __future__ import annotations

import json
import os
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import pika
import pytest
from helpers import TIMEOUT, publish, queue_depth, wait_until
from kombu import Connection

from proj import config, deadletter
from proj.cli import dead

REPO = Path(__file__).resolve().parent.parent
TUTORIAL_NEW_TASK = REPO / "examples" / "tutorial" / "new_task.py"


def pika_publish(node, body: bytes | str, **properties) -> None:
    """Publish as the tutorial does: pika, default exchange, routing key task_queue."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange="",
            routing_key=config.QUEUE_NAME,
            body=body,
            properties=pika.BasicProperties(delivery_mode=2, **properties),
        )
    finally:
        connection.close()


def settled(node, mgmt) -> bool:
    counts = mgmt.counts(config.QUEUE_NAME)
    return queue_depth(node.url) == 0 and counts is not None and counts[1] == 0


# What another producer might put on task_queue, and the reason the worker must give.
BAD_MESSAGES = {
    "non-utf8-bytes": (b"\xff\xfe\x00 not text", {}, "cannot decode the body (no content type)"),
    "text-plain": (b"Hello...", {"content_type": "text/plain"}, "cannot decode the body (text/plain)"),
    "json-without-task": (b'{"hello": "world"}', {"content_type": "application/json"}, "not a task message"),
    "pickle": (
        pickle.dumps([["Hello..."], {}, {}]),
        {"content_type": "application/x-python-serialize", "headers": {"task": "proj.tasks.work", "id": "p1"}},
        "invalid task message",
    ),
    "unregistered-task": (
        json.dumps([["x"], {}, {}]).encode(),
        {"content_type": "application/json", "content_encoding": "utf-8", "headers": {"task": "no.such", "id": "u1"}},
        "unregistered task 'no.such'",
    ),
}


# Every kind on the default classic task_queue; one on a quorum task_queue (the worker's path is the same).
@pytest.mark.parametrize(
    ("kind", "queue_type"), [(kind, "classic") for kind in BAD_MESSAGES] + [("unregistered-task", "quorum")]
)
def test_message_a_worker_cannot_run_is_dead_lettered_with_its_reason_not_deleted(
    kind, queue_type, fresh_queue, mgmt, start_worker, recorder
):
    # Given a worker on a task_queue of this type, and a message it cannot run
    body, properties, reason = BAD_MESSAGES[kind]
    worker = start_worker("w1", fresh_queue.url)
    worker.wait_for_line("Waiting for messages")
    with Connection(fresh_queue.url) as conn:  # the worker declared the dead-letter queue at start
        conn.default_channel.queue_declare(config.DEAD_QUEUE_NAME, passive=True)

    # When it arrives on task_queue
    pika_publish(fresh_queue, body, **properties)

    # Then it ends in task_queue.dead, byte for byte, with the reason in its headers
    wait_until(lambda: queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 1, what="one dead letter")
    (letter,) = dead.list_letters(fresh_queue.url)
    assert letter.body == body
    assert reason in letter.reason
    assert letter.content_type == properties.get("content_type", "")
    # And it was never executed, and task_queue holds nothing
    wait_until(lambda: settled(fresh_queue, mgmt), what="task_queue empty")
    assert recorder.worker_events("task-started") == []
    assert " [x] Received" not in worker.log()
    # And the worker goes on with the next task
    publish(fresh_queue.url, ["Next."], queue_type=queue_type)
    recorder.wait_for(lambda r: r.succeeded_count() == 1, TIMEOUT, "next task succeeded")
    assert mgmt.queue(config.QUEUE_NAME)["type"] == queue_type


def test_dead_letters_can_be_listed_requeued_and_purged(fresh_queue, mgmt, start_worker, recorder):
    # Given two dead letters: tutorial-style text that was sent as text/plain, and junk bytes
    start_worker("w1", fresh_queue.url)
    pika_publish(fresh_queue, b"Fixed later..", content_type="text/plain")
    pika_publish(fresh_queue, b"\xff junk")
    wait_until(lambda: queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 2, what="two dead letters")

    # When they are listed, the list leaves them where they are
    letters = {letter.body: letter for letter in dead.list_letters(fresh_queue.url)}
    assert set(letters) == {b"Fixed later..", b"\xff junk"}
    assert queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 2

    # When the text/plain one is requeued once its producer is fixed (here: the worker accepts it
    # as tutorial text once the content type is gone), it runs
    text = letters[b"Fixed later.."]
    with Connection(fresh_queue.url) as conn:  # the fix: drop the content type on the dead letter
        channel = conn.channel()
        message = channel.message_to_python(channel.basic_get(config.DEAD_QUEUE_NAME, no_ack=False))
        while message.body != b"Fixed later..":
            message.reject(requeue=True)
            message = channel.message_to_python(channel.basic_get(config.DEAD_QUEUE_NAME, no_ack=False))
        headers = dict(message.headers, **{deadletter.ORIGINAL_CONTENT_TYPE: ""})
        with deadletter.confirming(conn) as publisher:
            deadletter.publish_raw(publisher, message.body, config.DEAD_QUEUE_NAME, headers, {}, None, None)
        message.ack()
        channel.close()
    moved = dead.requeue({text.id}, fresh_queue.url)
    assert moved == [text.id]
    recorder.wait_for(lambda r: r.succeeded_count() == 1, TIMEOUT, "requeued message ran")
    assert recorder.snapshot()[0].message == "Fixed later.."

    # And the junk stays until purged
    assert [letter.body for letter in dead.list_letters(fresh_queue.url)] == [b"\xff junk"]
    out = subprocess.run(
        [str(Path(sys.executable).with_name("proj")), "dead", "purge", "--yes"],
        env={**os.environ, "CELERY_BROKER_URL": fresh_queue.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Purged 1 message" in out.stdout
    assert queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 0


def test_purge_asks_first_and_keeps_everything_when_the_answer_is_no(fresh_queue, mgmt, start_worker):
    start_worker("w1", fresh_queue.url)
    pika_publish(fresh_queue, b"\xff junk")
    wait_until(lambda: queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 1, what="a dead letter")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("proj")), "dead", "purge"],
        env={**os.environ, "CELERY_BROKER_URL": fresh_queue.url},
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 1


def run_tutorial_new_task(node, *words: str) -> subprocess.CompletedProcess:
    """Run the tutorial's new_task.py, unchanged, against a node on another port than 5672.

    The file connects to localhost's default port; only pika's default port is changed here.
    """
    code = (
        "import sys, runpy, pika.connection\n"
        f"pika.connection.Parameters.DEFAULT_PORT = {node.port}\n"
        f"sys.argv = [{str(TUTORIAL_NEW_TASK)!r}, *{list(words)!r}]\n"
        f"runpy.run_path({str(TUTORIAL_NEW_TASK)!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_tutorials_unchanged_new_task_py_gets_its_message_done(fresh_queue, mgmt, start_worker):
    # Given our worker, and the tutorial's own producer (pika, plain text, no content type)
    assert runpy  # the file is run as a script, unchanged
    worker = start_worker("w1", fresh_queue.url)

    # When new_task.py sends a message
    out = run_tutorial_new_task(fresh_queue, "First", "message.")

    # Then it printed the tutorial's line, and our worker ran it as proj.tasks.work
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[x] Sent 'First message.'"
    worker.wait_for_line(" [x] Done", TIMEOUT)
    assert " [x] Received 'First message.'" in worker.log()
    assert "proj.tasks.work" in worker.log() and "succeeded" in worker.log()
    wait_until(lambda: settled(fresh_queue, mgmt), what="acked")
    assert queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 0


def test_tutorial_text_is_acked_only_after_the_work_and_redelivered_if_its_worker_dies(
    fresh_queue, mgmt, start_worker, recorder
):
    # Given two workers, and a long plain-text message from the tutorial's producer
    workers = {w.hostname: w for w in (start_worker("w1", fresh_queue.url), start_worker("w2", fresh_queue.url))}
    # (8 s at the tests' 0.1 s per dot: long enough to still run after the broker's statistics show it)
    pika_publish(fresh_queue, "Long text" + "." * 80)

    # When it is running (one unacked message on the broker), its worker is SIGKILLed
    recorder.wait_for(lambda r: any(t.started for t in r.snapshot()), TIMEOUT, "task started")
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME)[1] == 1, what="one unacked message while it runs")
    (task,) = recorder.snapshot()
    runner = workers[task.started[0][0]]
    (other,) = [w for w in workers.values() if w is not runner]
    runner.kill()

    # Then the other worker runs it, flagged redelivered, and the queue is left empty
    recorder.wait_for(lambda r: any(t.succeeded for t in r.snapshot()), TIMEOUT, "task succeeded")
    (done,) = [t for t in recorder.snapshot() if t.succeeded]
    assert done.message == "Long text" + "." * 80
    assert [host for host, _ in done.succeeded] == [other.hostname]
    assert done.redelivered and done.redelivered[0][0] == other.hostname
    wait_until(lambda: settled(fresh_queue, mgmt), what="task_queue empty")


# -- What RabbitMQ itself dead-letters: the policy (issue 11, defect 1) ---------------------------


def pika_channel(node):
    connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))
    return connection, connection.channel()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_message_that_expires_or_is_rejected_in_task_queue_reaches_task_queue_dead(
    queue_type, fresh_queue, mgmt, start_worker
):
    # Given task_queue of this type, declared by a worker that set the dead-letter policy and then stopped
    env = {"PROJ_QUEUE_TYPE": queue_type, "PROJ_MANAGEMENT_URL": fresh_queue.management_url}
    worker = start_worker("w1", fresh_queue.url, env=env)
    worker.kill()
    assert mgmt.queue(config.QUEUE_NAME)["type"] == queue_type

    # When a consumer rejects a message without requeue (basic.reject, requeue=False)
    connection, channel = pika_channel(fresh_queue)
    try:
        channel.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=2)
        channel.basic_publish("", config.QUEUE_NAME, b"Rejected...", properties=persistent)
        method, _, body = channel.basic_get(config.QUEUE_NAME)
        assert body == b"Rejected..."
        channel.basic_reject(method.delivery_tag, requeue=False)
        # And another message outlives its per-message TTL in task_queue
        expiring = pika.BasicProperties(delivery_mode=2, expiration="100")
        channel.basic_publish("", config.QUEUE_NAME, b"Expired...", properties=expiring)
    finally:
        connection.close()

    # Then RabbitMQ moved both to task_queue.dead, each with its reason, instead of dropping them
    wait_until(lambda: queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 2, what="two dead letters")
    reasons = {letter.body: letter.reason for letter in dead.list_letters(fresh_queue.url)}
    assert reasons == {
        b"Rejected...": f"rejected by RabbitMQ (from {config.QUEUE_NAME})",
        b"Expired...": f"expired by RabbitMQ (from {config.QUEUE_NAME})",
    }
    # And the management API shows the policy of this queue type in effect on task_queue
    queue = wait_until(lambda: (q := mgmt.queue(config.QUEUE_NAME)).get("policy") and q, what="policy shown")
    assert queue["policy"] == f"proj-task-queue-{queue_type}"
    assert queue["effective_policy_definition"]["dead-letter-routing-key"] == config.DEAD_QUEUE_NAME
    assert queue_depth(fresh_queue.url) == 0


def test_worker_says_in_one_line_when_another_policy_keeps_the_dead_letter_policy_off_task_queue(
    fresh_queue, mgmt, start_worker
):
    # Given an operator's policy of higher priority matching task_queue (without a dead-letter exchange)
    mgmt.put_policy(
        "ops-limits", {"pattern": "^task_", "apply-to": "queues", "priority": 10, "definition": {"max-length": 100000}}
    )
    try:
        # When a worker starts
        worker = start_worker("w1", fresh_queue.url, env={"PROJ_MANAGEMENT_URL": fresh_queue.management_url})

        # Then it says, in one line, that task_queue is not dead-lettered by the broker, naming that policy
        text = "the dead-letter policy is not in effect on task_queue"
        worker.wait_for_line(text, TIMEOUT)
        (line,) = [line for line in worker.log().splitlines() if text in line]
        assert "policy 'ops-limits' applies to it instead" in line and config.DEAD_QUEUE_NAME in line
        # And it runs tasks all the same: proj's own dead-lettering does not depend on the policy
        assert worker.alive()
    finally:
        mgmt.delete_policy("ops-limits")


# -- Requeue while a worker runs (issue 11, defect 2) -------------------------------------------


def run_dead(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("proj")), "dead", *args],
        env={**os.environ, "CELERY_BROKER_URL": node.url},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


UNREGISTERED = (
    json.dumps([["x"], {}, {}]).encode(),
    {"content_type": "application/json", "content_encoding": "utf-8", "headers": {"task": "no.such", "id": "u1"}},
)
MOVED = "Moved a message to task_queue.dead"


def test_requeue_all_moves_each_dead_letter_once_while_a_worker_dead_letters_them_again(
    fresh_queue, mgmt, start_worker
):
    # Given a running worker, and four dead letters it still cannot run (their cause is not fixed)
    worker = start_worker("w1", fresh_queue.url)
    for i in range(4):
        pika_publish(fresh_queue, b"\xff junk %d" % i)
    wait_until(lambda: queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 4, what="four dead letters")

    # When they are all requeued, the worker dead-lettering each again as soon as it is back
    out = run_dead(fresh_queue, "requeue", "--all")

    # Then exactly the four that were there are requeued, once each, and that is the count reported
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"[x] Requeued 4 messages to {config.QUEUE_NAME}"
    wait_until(lambda: worker.log().count(MOVED) >= 8 and settled(fresh_queue, mgmt), what="dead-lettered again")
    assert queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 4
    assert worker.log().count(MOVED) == 8


def test_requeue_by_id_moves_that_dead_letter_once_while_a_worker_dead_letters_it_again(
    fresh_queue, mgmt, start_worker
):
    # Given a running worker, a dead letter with task id u1 (an unregistered task), and many more behind it
    worker = start_worker("w1", fresh_queue.url)
    body, properties = UNREGISTERED
    pika_publish(fresh_queue, body, **properties)
    wait_until(lambda: queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 1, what="u1 dead-lettered")
    connection, channel = pika_channel(fresh_queue)
    try:
        channel.confirm_delivery()
        for i in range(200):
            channel.basic_publish("", config.DEAD_QUEUE_NAME, b"old %d" % i, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()

    # When u1 is requeued, and the worker dead-letters it again at once (while the others are read)
    out = run_dead(fresh_queue, "requeue", "u1")

    # Then it was requeued once, and came back to task_queue.dead once
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"[x] Requeued 1 message to {config.QUEUE_NAME}"
    wait_until(lambda: worker.log().count(MOVED) >= 2 and settled(fresh_queue, mgmt), what="u1 dead-lettered again")
    assert worker.log().count(MOVED) == 2
    assert [letter.id for letter in dead.list_letters(fresh_queue.url)].count("u1") == 1
    assert queue_depth(fresh_queue.url, config.DEAD_QUEUE_NAME) == 201
