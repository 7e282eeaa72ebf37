"""The tutorial's ``new_task.py`` as the ``new-task`` console script, run as a real process against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TIMEOUT, queue_depth, wait_until
from kombu import Connection

from proj import config
from proj.management import hide_password
from proj.rabbit.node import free_port

NEW_TASK = Path(sys.executable).with_name("new-task")
#: A producer that cannot reach its broker must say so well within this many seconds.
GIVE_UP_WITHIN = 10


def run_producer(argv: list[str], broker_url: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{NEW_TASK.parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def take_task_message(url: str):
    """The next message in ``task_queue``, removed from it (no worker runs, so nothing else takes it)."""
    with Connection(url) as conn:
        message = conn.default_channel.basic_get(config.QUEUE_NAME, no_ack=True)
        assert message is not None, "task_queue is empty"
        return message


def task_args(message) -> list:
    """Celery protocol 2: the body is ``[args, kwargs, embed]``."""
    args, kwargs, _embed = json.loads(message.body)
    assert kwargs == {}
    return args


def test_new_task_prints_sent_and_leaves_one_persistent_work_message_in_task_queue(fresh_queue):
    # Given an empty task_queue and no worker

    # When the tutorial's first command runs
    result = run_producer([str(NEW_TASK), "First", "message."], fresh_queue.url)

    # Then it prints the tutorial's line and nothing else
    assert result.returncode == 0, result.stderr
    assert result.stdout == " [x] Sent 'First message.'\n"
    assert result.stderr == ""
    # And the broker holds exactly that one task, persistent
    assert queue_depth(fresh_queue.url) == 1
    message = take_task_message(fresh_queue.url)
    assert message.headers["task"] == "proj.tasks.work"
    assert task_args(message) == ["First message."]
    assert message.properties["delivery_mode"] == 2
    assert queue_depth(fresh_queue.url) == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param([str(NEW_TASK)], "Hello World!", id="no-arguments"),
        pytest.param([sys.executable, "-m", "proj.new_task", "a", "b"], "a b", id="python-m"),
    ],
)
def test_message_is_the_arguments_joined_by_spaces_or_hello_world(fresh_queue, argv, expected):
    # Given an empty task_queue

    # When the producer runs with these arguments
    result = run_producer(argv, fresh_queue.url)

    # Then it says what it sent, and that is the one message in the queue
    assert result.returncode == 0, result.stderr
    assert result.stdout == f" [x] Sent {expected!r}\n"
    assert queue_depth(fresh_queue.url) == 1
    assert task_args(take_task_message(fresh_queue.url)) == [expected]


def unreachable_broker_url(broker) -> str:
    return f"amqp://guest:down-s3cret@127.0.0.1:{free_port(avoid=(broker.port, broker.management_port))}//"


def wrong_password_url(broker) -> str:
    return f"amqp://guest:wrong-s3cret@127.0.0.1:{broker.port}//"


def unknown_vhost_url(broker) -> str:
    return f"amqp://{broker.user}:{broker.password}@127.0.0.1:{broker.port}/no-such-vhost"


@pytest.mark.parametrize(
    ("make_url", "what_failed"),
    [
        pytest.param(unreachable_broker_url, "connection refused", id="broker-down"),
        pytest.param(wrong_password_url, "login refused", id="wrong-password"),
        pytest.param(unknown_vhost_url, "vhost", id="unknown-vhost"),
    ],
)
def test_producer_that_cannot_publish_says_so_in_one_line_without_the_password(broker, make_url, what_failed):
    # Given a broker URL that cannot take the message
    url = make_url(broker)
    password = url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]

    # When the producer runs
    started = time.monotonic()
    result = run_producer([str(NEW_TASK), "Lost", "message."], url, timeout=GIVE_UP_WITHIN + 5)
    elapsed = time.monotonic() - started

    # Then it fails fast with one line naming the broker, password hidden, and what failed
    assert result.returncode == 2, result
    assert elapsed < GIVE_UP_WITHIN, f"took {elapsed:.1f} s"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert hide_password(url) in line and ":***@" in line
    assert f":{password}@" not in line
    if password != broker.user:
        assert password not in line
    assert what_failed in line
    assert "Traceback" not in result.stderr


def test_sent_message_is_received_and_done_by_a_real_worker(fresh_queue, mgmt, start_worker):
    # Given one worker on an empty task_queue
    worker = start_worker("w1", fresh_queue.url)

    # When the producer sends a three-dot message
    result = run_producer([str(NEW_TASK), "Hello..."], fresh_queue.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == " [x] Sent 'Hello...'\n"

    # Then the worker prints the tutorial's Received, and later Done
    worker.wait_for_line(" [x] Received 'Hello...'", TIMEOUT)
    worker.wait_for_line(" [x] Done", TIMEOUT)
    log = worker.log()
    assert log.index(" [x] Received 'Hello...'") < log.index(" [x] Done")
    # And the message is acked: neither ready nor unacknowledged in task_queue
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "task_queue empty after the ack")
