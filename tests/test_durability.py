"""Message durability: a durable queue and persistent messages survive a broker restart.

These tests restart a broker, so they use a node of their own rather than the session's.
"""

from __future__ import annotations

import pytest
from amqp.exceptions import NotFound
from helpers import QUEUE_TYPES, TIMEOUT, mgmt_for, publish, queue_depth, start_private_node, wait_until
from kombu import Connection, Exchange, Producer, Queue

from proj import config

N_TASKS = 5


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    node = start_private_node(tmp_path_factory.mktemp("rabbitmq-durability"))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def node(own_broker):
    """The module's node, running, with no task_queue (of either type) left by an earlier test."""
    if not own_broker.is_running():
        own_broker.start()
    mgmt = mgmt_for(own_broker)
    mgmt.delete_queue(config.QUEUE_NAME)
    mgmt.delete_queue(config.DEAD_QUEUE_NAME)
    return own_broker


def queue_exists(url: str, name: str) -> bool:
    with Connection(url) as conn:
        try:
            conn.default_channel.queue_declare(name, passive=True)
        except NotFound:
            return False
    return True


def consumers(url: str) -> int:
    with Connection(url) as conn:
        return conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True).consumer_count


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_tasks_enqueued_with_no_worker_survive_a_broker_restart_and_then_complete(
    queue_type, node, start_worker, recorder_for
):
    # Given N tasks in a task_queue of this type and no worker running
    publish(node.url, [f"Survivor {i}.." for i in range(N_TASKS)], queue_type=queue_type)
    assert queue_depth(node.url) == N_TASKS

    # When the broker restarts
    node.restart()

    # Then all N are still in task_queue (a quorum queue answers once its Raft member has recovered them:
    # the count only rises to N, nothing publishes meanwhile)
    wait_until(lambda: queue_depth(node.url) == N_TASKS, what=f"{N_TASKS} messages in task_queue after the restart")
    assert mgmt_for(node).queue(config.QUEUE_NAME)["type"] == queue_type
    # And they complete once a worker starts
    recorder = recorder_for(node.url)
    start_worker("w1", node.url)
    recorder.wait_for(lambda r: r.succeeded_count() == N_TASKS, TIMEOUT, f"{N_TASKS} tasks succeeded")
    assert sorted(t.message for t in recorder.snapshot()) == [f"Survivor {i}.." for i in range(N_TASKS)]
    wait_until(lambda: queue_depth(node.url) == 0, what="task_queue drained")


def test_transient_messages_and_a_non_durable_queue_do_not_survive_a_restart(node):
    # Given the tutorial's first mistakes: a non-durable 'hello' queue, and a durable queue holding
    # a transient message (delivery_mode 1)
    hello = Queue("hello", Exchange(""), routing_key="hello", durable=False)
    durable = Queue("transient_messages", Exchange(""), routing_key="transient_messages", durable=True)
    with Connection(node.url) as conn:
        producer = Producer(conn.default_channel)
        producer.publish("Hello World!", routing_key="hello", declare=[hello], delivery_mode=2)
        producer.publish("Hello World!", routing_key="transient_messages", declare=[durable], delivery_mode=1)
    assert queue_depth(node.url, "hello") == 1 and queue_depth(node.url, "transient_messages") == 1

    # When the broker restarts
    node.restart()

    # Then the non-durable queue is gone, and the durable queue survived without its transient message
    assert not queue_exists(node.url, "hello")
    assert queue_depth(node.url, "transient_messages") == 0


def test_running_worker_reconnects_by_itself_after_a_broker_restart(node, start_worker, recorder_for):
    # Given a worker consuming from task_queue
    worker = start_worker("w1", node.url)
    wait_until(lambda: consumers(node.url) == 1, what="the worker consumes")

    # When the broker restarts under it
    node.restart()

    # Then the worker consumes again without being touched, and runs new tasks
    wait_until(lambda: consumers(node.url) == 1, timeout=TIMEOUT, what="the worker consumes again", interval=0.5)
    recorder = recorder_for(node.url)
    publish(node.url, ["After restart..."])
    recorder.wait_for(lambda r: r.succeeded_count() == 1, TIMEOUT, "task after restart succeeded")
    assert worker.alive()


def test_worker_started_before_the_broker_connects_once_it_is_up(node, start_worker, recorder_for):
    # Given no broker running
    node.stop()

    # When a worker starts, then the broker
    worker = start_worker("w1", node.url, wait=False)
    worker.wait_for_line("Cannot connect to amqp://", TIMEOUT)
    node.start()

    # Then the worker connects by itself and runs tasks
    worker.wait_ready(TIMEOUT)
    recorder = recorder_for(node.url)
    publish(node.url, ["Late broker."])
    recorder.wait_for(lambda r: r.succeeded_count() == 1, TIMEOUT, "task succeeded")
