"""Redeclaring task_queue with other arguments: the tutorial's 'hello'-queue mistake, told clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pika
import pytest
from kombu import Connection, Exchange, Queue

from proj import config
from proj.tasks import work

NEW_TASK = Path(sys.executable).with_name("new-task")


def test_declaring_task_queue_non_durable_names_the_queue_and_the_argument(fresh_queue):
    # Given task_queue declared durable by the app
    with Connection(fresh_queue.url) as conn:
        work.apply_async(args=["Declared."], connection=conn, ignore_result=True)

    # When the tutorial's first worker.py declares it again without durable=True
    connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=fresh_queue.port))
    try:
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(queue=config.QUEUE_NAME, durable=False)
    finally:
        connection.close()

    # Then the broker refuses it, naming the queue and the conflicting argument
    assert refused.value.reply_code == 406
    assert "'durable' for queue 'task_queue'" in refused.value.reply_text


def test_producer_facing_a_non_durable_task_queue_says_so_in_one_line(fresh_queue):
    # Given a task_queue left non-durable by an earlier program
    with Connection(fresh_queue.url) as conn:
        Queue(config.QUEUE_NAME, Exchange(""), routing_key=config.QUEUE_NAME, durable=False)(
            conn.default_channel
        ).declare()

    # When new-task publishes
    env = {**os.environ, "CELERY_BROKER_URL": fresh_queue.url}
    out = subprocess.run([str(NEW_TASK), "First message."], env=env, capture_output=True, text=True, timeout=30)

    # Then it exits 2 with one line naming the queue and the argument, and nothing was published
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "task_queue" in line and "durable" in line
    with Connection(fresh_queue.url) as conn:
        assert conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True).message_count == 0
