"""Confirmed publishes: a message the broker did not take is an error the caller sees, never a silent drop."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import queue_depth, take_raw
from kombu import Exchange, Queue

from proj import config
from proj.celery import app
from proj.harness.workers import REPO_ROOT
from proj.rabbit.node import free_port
from proj.tasks import PublishError, work

NEW_TASK = Path(sys.executable).with_name("new-task")


def limited_queue(mgmt) -> Queue:
    """A queue that holds one message and refuses more (x-overflow: reject-publish): the broker nacks."""
    mgmt.delete_queue("limited")
    return Queue(
        "limited",
        Exchange(""),
        routing_key="limited",
        durable=True,
        queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )


def test_message_refused_by_a_full_queue_raises_an_error_naming_the_queue(broker, mgmt, monkeypatch):
    # Given a full queue that refuses more, and a publish timeout of one second
    monkeypatch.setattr(config, "PUBLISH_TIMEOUT", 1.0)
    limited = limited_queue(mgmt)
    with app.connection_for_write(broker.url) as conn:
        work.apply_async(args=["First."], queue=limited, connection=conn, ignore_result=True)

        # When a second message is published to it
        # Then the broker's nack, lasting past the timeout, reaches the caller as an error naming the queue
        with pytest.raises(PublishError, match="refused the message for queue 'limited'"):
            work.apply_async(args=["Second."], queue=limited, connection=conn, ignore_result=True)
    assert queue_depth(broker.url, "limited") == 1
    mgmt.delete_queue("limited")


def test_nacked_message_is_sent_again_under_the_same_id_until_the_broker_takes_it(broker, mgmt):
    # Given a full queue that refuses more (basic.nack), like a quorum queue electing a leader
    limited = limited_queue(mgmt)
    with app.connection_for_write(broker.url) as conn:
        work.apply_async(args=["First."], queue=limited, connection=conn, ignore_result=True)

        # When a second message is published while a consumer takes the first one half a second later
        def make_room():
            from kombu import Connection

            with Connection(broker.url) as consumer_conn:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    message = limited(consumer_conn.default_channel).get(no_ack=True)
                    if message is not None:
                        taken.append(message.headers["id"])
                        return
                    time.sleep(0.05)

        taken: list[str] = []
        timer = threading.Timer(0.5, make_room)
        timer.start()
        try:
            result = work.apply_async(args=["Second."], queue=limited, connection=conn, ignore_result=True)
        finally:
            timer.join(15)

    # Then .apply_async() returned without an error once the broker took the message
    assert len(taken) == 1, "the first message was never taken off the queue"
    # And the queue holds the second message exactly once, under the id the caller got
    with app.connection_for_read(broker.url) as conn:
        second = limited(conn.default_channel).get(no_ack=True)
        assert second is not None and second.headers["id"] == result.id
        assert limited(conn.default_channel).get(no_ack=True) is None
    mgmt.delete_queue("limited")


def test_with_retry_false_a_nack_reaches_the_caller_at_once_for_it_to_send_again(broker, mgmt):
    # Given a full queue that refuses more, and the default publish timeout (10 s)
    limited = limited_queue(mgmt)
    with app.connection_for_write(broker.url) as conn:
        work.apply_async(args=["First."], queue=limited, connection=conn, ignore_result=True)

        # When a second message is published with retry=False (a caller that re-sends by itself)
        started = time.monotonic()
        with pytest.raises(PublishError, match="refused the message for queue 'limited'") as raised:
            work.apply_async(args=["Second."], queue=limited, connection=conn, ignore_result=True, retry=False)
        waited = time.monotonic() - started
    assert "sent 1 time(s)" in str(raised.value)

    # Then the first nack reached the caller: not re-sent until the timeout, which the caller counts on
    assert waited < config.PUBLISH_TIMEOUT / 2, f"PublishError after {waited:.1f} s"
    assert queue_depth(broker.url, "limited") == 1
    mgmt.delete_queue("limited")


def test_message_over_the_size_limit_is_refused_before_anything_is_published(fresh_queue, monkeypatch):
    # Given a 1 KiB limit
    monkeypatch.setattr(config, "MAX_MESSAGE_BYTES", 1024)

    # When a larger message is sent, Then ValueError says so, and the broker received nothing
    with pytest.raises(ValueError, match="over PROJ_MAX_MESSAGE_BYTES=1024"):
        work.delay("x" * 1025)
    work.delay("x" * 1024)  # the limit itself is allowed
    assert queue_depth(fresh_queue.url) == 1


def test_new_task_refuses_an_oversized_message_in_one_line(fresh_queue, mgmt):
    env = {**os.environ, "CELERY_BROKER_URL": fresh_queue.url, "PROJ_MAX_MESSAGE_BYTES": "10"}
    out = subprocess.run([str(NEW_TASK), "A message longer than ten bytes."], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("new-task: message refused:") and "PROJ_MAX_MESSAGE_BYTES=10" in line
    assert mgmt.queue(config.QUEUE_NAME) is None  # it never even connected


def delay_in_subprocess(url: str, publish_timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    code = (
        "from proj.tasks import PublishError, work\n"
        "try:\n"
        "    work.delay('Hello...')\n"
        "except PublishError as exc:\n"
        "    print('PublishError:', exc)\n"
        "    raise SystemExit(1)\n"
    )
    env = {**os.environ, "CELERY_BROKER_URL": url, "PROJ_PUBLISH_TIMEOUT": str(publish_timeout)}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    return out, time.monotonic() - started


def test_delay_with_the_broker_down_fails_within_the_publish_timeout():
    # Given no broker on the port
    url = f"amqp://guest:secret-pw@127.0.0.1:{free_port()}//"

    # When .delay() is called, Then it raises PublishError naming the broker, password hidden
    out, elapsed = delay_in_subprocess(url, publish_timeout=4)
    assert out.returncode == 1, out.stderr
    assert "PublishError: could not publish to amqp://guest:***@127.0.0.1:" in out.stdout
    assert "secret-pw" not in out.stdout + out.stderr
    # (the bound is the setting plus the interpreter's start-up, generous on a loaded machine)
    assert elapsed < 4 + 10


def test_delay_to_a_broker_that_never_answers_fails_within_the_publish_timeout():
    # Given something that accepts TCP connections on the port and never speaks AMQP
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        # When .delay() is called
        out, elapsed = delay_in_subprocess(f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}//", 4)
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()

    # Then it gives up with PublishError instead of hanging
    assert out.returncode == 1, out.stderr
    assert "PublishError: could not publish" in out.stdout
    assert elapsed < 4 + 10


BLOCKED_PRODUCER = """
import sys, time
from proj.tasks import PublishError, work
warm = work.delay("warm")  # connects, declares task_queue, selects confirms: the next .delay() takes the fast path
print("ready", warm.id, flush=True)
for line in sys.stdin:
    started = time.monotonic()
    try:
        # "fast": a plain .delay(); "celery": an option only Celery's own path sends
        sent = work.apply_async(["x"], **({"headers": {"h": 1}} if line.strip() == "celery" else {}))
        print("confirmed", f"{time.monotonic() - started:.2f}", sent.id, flush=True)
    except PublishError as exc:
        print("PublishError", f"{time.monotonic() - started:.2f}", exc, flush=True)
"""


def test_delay_to_a_node_that_blocks_publishers_fails_within_the_publish_timeout(fresh_queue):
    # Given a producer connected to a node that sends heartbeats every second (py-amqp restarted its
    # confirm timeout with every frame read, so such a node held a .delay() for as long as it liked)
    node = fresh_queue
    limit = node.rabbitmqctl("eval", "rabbit_disk_monitor:get_disk_free_limit().").stdout.strip()
    assert limit.isdigit(), limit
    env = {**os.environ, "CELERY_BROKER_URL": node.url, "PROJ_PUBLISH_TIMEOUT": "3", "PROJ_BROKER_HEARTBEAT": "2"}
    producer = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_PRODUCER],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, warm_id = producer.stdout.readline().split()
        assert ready == "ready"
        # When the node blocks publishers (a disk alarm: free disk below the limit)
        assert node.rabbitmqctl("set_disk_free_limit", "100000GB").returncode == 0
        answers = {}
        for path in ("fast", "celery"):
            producer.stdin.write(path + "\n")
            producer.stdin.flush()
            answers[path] = producer.stdout.readline().split(" ", 2)

        # Then each .delay() fails within the bound, with one line saying why
        for path, (verdict, seconds, *text) in answers.items():
            assert verdict == "PublishError", (path, verdict, text)
            assert 3 <= float(seconds) < 3 + 3, (path, seconds)
            assert "no publisher confirm from RabbitMQ within PROJ_PUBLISH_TIMEOUT" in text[0], text
            assert "alarm" in text[0]

        # And once the alarm clears, the same producer publishes again
        assert node.rabbitmqctl("set_disk_free_limit", limit).returncode == 0
        producer.stdin.write("fast\n")
        producer.stdin.flush()
        verdict, _, after_id = producer.stdout.readline().split()
        assert verdict == "confirmed"

        # And task_queue holds the confirmed messages once each, and each refused one at most once
        held = Counter(m.headers["id"] for m in take_raw(node.url))
        assert held[warm_id] == 1 and held[after_id] == 1, held
        refused = [re.search(r"its id: ([\w-]+)", text[0]).group(1) for _, _, *text in answers.values()]
        assert all(held[task_id] <= 1 for task_id in refused), (refused, held)
        assert set(held) <= {warm_id, after_id, *refused}, held
    finally:
        producer.kill()
        producer.wait()
        node.rabbitmqctl("set_disk_free_limit", limit)  # the session's node, for the tests after this one
