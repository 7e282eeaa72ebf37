"""Real parts for the tests: a private RabbitMQ node on free ports, real worker processes, events.

The session's node is started with ``proj broker``'s own code (``proj.rabbit.node.Node``) in a
temporary data dir; it is never a broker the developer runs. Every process a test starts is
ended by PID (process group) on teardown, also when the test fails.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Iterator

import pytest
from helpers import SECONDS_PER_DOT, TIMEOUT, forget_producer_connections, mgmt_for, start_private_node, wait_until

from proj import config
from proj.celery import app
from proj.harness.events import EventRecorder
from proj.harness.workers import WorkerProcess
from proj.management import Management
from proj.rabbit.node import Node


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


@pytest.fixture
def mgmt(broker) -> Management:
    return mgmt_for(broker)


@pytest.fixture
def fresh_queue(broker, mgmt) -> Node:
    """A broker whose ``task_queue`` and ``task_queue.dead`` are gone: each test starts from empty queues."""
    mgmt.delete_queue(config.QUEUE_NAME)
    mgmt.delete_queue(config.DEAD_QUEUE_NAME)
    forget_producer_connections()
    return broker


@pytest.fixture
def queue_type(request) -> str:
    """task_queue's type for the workers a test starts: ``PROJ_QUEUE_TYPE`` (classic by default), or each
    of ``classic`` and ``quorum`` for a test parametrized with ``@pytest.mark.parametrize("queue_type", QUEUE_TYPES)``
    (the key test of each tutorial behaviour: both types are first class on every RabbitMQ proj supports)."""
    return getattr(request, "param", config.QUEUE_TYPE)


@pytest.fixture
def start_worker(tmp_path, queue_type) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``celery -A proj worker`` processes; all are SIGKILLed (by process group) at teardown.

    Each worker declares task_queue of the test's ``queue_type``, unless its ``env`` names another."""
    started: list[WorkerProcess] = []

    def start(name: str, broker_url: str, wait: bool = True, **options) -> WorkerProcess:
        options.setdefault("seconds_per_dot", SECONDS_PER_DOT)
        options["env"] = {"PROJ_QUEUE_TYPE": queue_type, **(options.get("env") or {})}
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


#: Modules that start clusters, containers or long fault runs: run last, so a quick failure elsewhere shows
#: first (pytest still runs everything; the order within each group is the file order).
SLOW_MODULES = (
    "test_chaos.py",
    "test_bench.py",
    "test_cluster.py",
    "test_celery_setup.py",
    "test_compose.py",
    "test_compose_cluster.py",
)


#: Fixtures that hand a test a running RabbitMQ node: a test using any of them is marked ``broker``.
BROKER_FIXTURES = frozenset({"broker", "fresh_queue", "mgmt", "recorder", "queue_of_three", "recorder_for"})

#: Markers of whole modules (pyproject.toml registers them): ``docker`` needs a Docker engine and the local
#: images, ``cluster`` starts a RabbitMQ cluster, ``slow`` runs a minute or more.
MODULE_MARKERS = {
    "test_chaos.py": ("broker", "slow"),
    "test_bench.py": ("broker", "slow"),
    "test_cluster.py": ("broker", "cluster", "slow"),
    "test_celery_setup.py": ("broker", "docker", "slow"),
    "test_compose.py": ("broker", "docker", "slow"),
    "test_compose_cluster.py": ("broker", "docker", "cluster", "slow"),
    "test_compose_health.py": ("broker", "docker"),
    "test_memory.py": ("broker", "slow"),
    "test_broker_cli.py": ("broker",),
    "test_durability.py": ("broker",),
    "test_lab.py": ("broker",),
    "test_stack.py": ("broker",),
}


def pytest_collection_modifyitems(session, config, items) -> None:
    """Mark every test by what it needs (``pytest -m "not broker"`` is the broker-free tier), slow ones last."""
    for item in items:
        for name in MODULE_MARKERS.get(item.path.name, ()):
            item.add_marker(name)
        fixtures = set(getattr(item, "fixturenames", ()))
        if BROKER_FIXTURES & fixtures or any("node" in name or "cluster" in name for name in fixtures):
            item.add_marker("broker")

    def slowness(item) -> int:
        name = item.path.name
        return SLOW_MODULES.index(name) + 1 if name in SLOW_MODULES else 0

    items.sort(key=slowness)  # stable: the file order within each group is kept


@pytest.fixture(autouse=True)
def _broker_free_tier_starts_no_broker(request, monkeypatch) -> None:
    """A test not marked ``broker`` that starts a RabbitMQ node fails, saying to mark it: the tier stays honest."""
    if request.node.get_closest_marker("broker") is None:

        def refuse(self, *args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a RabbitMQ node: mark it @pytest.mark.broker")

        monkeypatch.setattr(Node, "start", refuse)
        from proj.rabbit.cluster import Cluster

        monkeypatch.setattr(Cluster, "start", refuse)


LIMIT_POLICY = "test-limit-of-three"


@pytest.fixture
def queue_of_three(fresh_queue, mgmt):
    """task_queue that holds three messages and refuses (basic.nack) the rest: x-overflow reject-publish."""
    vhost = urllib.parse.quote(mgmt.vhost, safe="")
    mgmt.request(
        "PUT",
        f"policies/{vhost}/{LIMIT_POLICY}",
        {
            "pattern": f"^{config.QUEUE_NAME}$",
            "definition": {"max-length": 3, "overflow": "reject-publish"},
            "apply-to": "queues",
            "priority": 100,
        },
    )
    try:
        with app.connection_for_write(fresh_queue.url) as conn:
            config.task_queues[0].bind(conn.default_channel).declare()

        def limited() -> bool:
            policy = (mgmt.queue(config.QUEUE_NAME) or {}).get("effective_policy_definition") or {}
            return policy.get("max-length") == 3

        wait_until(limited, TIMEOUT, "the limit policy applied to task_queue")
        yield fresh_queue
    finally:
        mgmt.request("DELETE", f"policies/{vhost}/{LIMIT_POLICY}")
