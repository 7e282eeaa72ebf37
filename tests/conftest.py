"""Real parts for the tests: a private RabbitMQ node on free ports, real worker processes, events.

The session's node is started with ``proj broker``'s own code (``proj.broker.Node``) in a
temporary data dir; it is never a broker the developer runs. Every process a test starts is
ended by PID (process group) on teardown, also when the test fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from kombu import Connection

from proj import config
from proj.broker import Node, free_port
from proj.events import EventRecorder
from proj.management import Management
from proj.workers import WorkerProcess

#: Seconds per '.' in tests: the tutorial's second, shrunk so the suite runs in minutes.
SECONDS_PER_DOT = 0.1
TIMEOUT = 60


def start_private_node(data_dir) -> Node:
    port = free_port()
    node = Node(data_dir=data_dir, port=port, management_port=free_port(avoid=(port,)))
    return node.start()


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[Node]:
    """One RabbitMQ node for the session; tests that restart a broker use their own."""
    node = start_private_node(tmp_path_factory.mktemp("rabbitmq"))
    # The test process's own app (for .delay()/.get()) talks to this node: Celery reads
    # CELERY_BROKER_URL at connection time, over proj.config's default.
    previous = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = node.url
    try:
        yield node
    finally:
        if previous is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous
        node.stop()


def mgmt_for(node: Node) -> Management:
    return Management(node.management_url)


@pytest.fixture
def mgmt(broker) -> Management:
    return mgmt_for(broker)


def forget_producer_connections() -> None:
    """Close this process's pooled producer connections, as a new producer process would start.

    kombu remembers per connection which queues it declared; after a test deletes task_queue, a
    reused connection would publish to a queue that no longer exists without declaring it again.
    """
    from kombu import pools

    from proj.celery import app

    if app._pool is not None:
        app.pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    pools.reset()


@pytest.fixture
def fresh_queue(broker, mgmt) -> Node:
    """A broker whose ``task_queue`` and ``task_queue.dead`` are gone: each test starts from empty queues."""
    mgmt.delete_queue(config.QUEUE_NAME)
    mgmt.delete_queue(config.DEAD_QUEUE_NAME)
    forget_producer_connections()
    return broker


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``celery -A proj worker`` processes; all are SIGKILLed (by process group) at teardown."""
    started: list[WorkerProcess] = []

    def start(name: str, broker_url: str, wait: bool = True, **options) -> WorkerProcess:
        options.setdefault("seconds_per_dot", SECONDS_PER_DOT)
        worker = WorkerProcess(name, broker_url, tmp_path / "workers", **options).start()
        started.append(worker)
        if wait:
            worker.wait_ready(TIMEOUT)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def recorder_for() -> Iterator[Callable[[str], EventRecorder]]:
    """Record Celery's event stream of a broker; stopped at teardown."""
    recorders: list[EventRecorder] = []

    def start(url: str) -> EventRecorder:
        rec = EventRecorder(url).start()
        recorders.append(rec)
        return rec

    yield start
    for rec in recorders:
        rec.stop()


@pytest.fixture
def recorder(fresh_queue, recorder_for) -> EventRecorder:
    return recorder_for(fresh_queue.url)


def channel_of(consumer: dict) -> str | None:
    """The name of a consumer's channel, as the management API lists it (None while it is not known yet:
    the API gives an empty list until the channel's statistics arrive)."""
    details = consumer.get("channel_details")
    return details.get("name") if isinstance(details, dict) else None


def effective_prefetch(consumer: dict, channel: dict) -> int:
    """The prefetch limit a consumer works under: per consumer (RabbitMQ 4.x, quorum queues) or channel-wide
    (kombu's choice on 3.x), as the management API reports them; 0 is unlimited."""
    return consumer.get("prefetch_count") or channel.get("global_prefetch_count") or channel.get("prefetch_count") or 0


def publish(url: str, messages: list[str], **options) -> list[str]:
    """Send each message as ``proj.tasks.work`` through one confirmed connection; returns the task ids."""
    from proj.celery import app
    from proj.tasks import work

    with app.connection_for_write(url) as conn:
        return [work.apply_async(args=[m], connection=conn, ignore_result=True, **options).id for m in messages]


def queue_depth(url: str, name: str = config.QUEUE_NAME) -> int:
    """Ready messages in a queue, read with a passive declare (exact, no statistics delay)."""
    with Connection(url) as conn:
        return conn.default_channel.queue_declare(name, passive=True).message_count


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "", interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        time.sleep(interval)
