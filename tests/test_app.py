"""Fast in-process tests of the task and the configuration.

They use the ``celery_app`` fixture that pytest-celery's plugin registers and Celery's embedded
test worker (``celery_worker`` from ``celery.contrib.pytest``: pytest-celery's own needs Docker),
on Celery's in-memory transport. Every claim about the broker is proven elsewhere, on RabbitMQ.
"""

from __future__ import annotations

import ast
from types import SimpleNamespace

import pytest
from celery import Celery
from celery.contrib.pytest import celery_worker  # noqa: F401  (the embedded worker, no Docker)

from proj import config, majority
from proj.celery import app as proj_app
from proj.producer import NODES_TRIED, nodes_tried
from proj.rabbit import netsplit
from proj.tasks import work

#: The project's settings, exactly as proj.config states them.
SETTINGS = {k: v for k, v in vars(config).items() if k.islower() and not k.startswith("_")}


@pytest.fixture(scope="session")
def celery_config():
    # The project's settings on the in-memory transport.
    return {**SETTINGS, "broker_url": "memory://", "result_backend": "cache+memory://", "broker_transport_options": {}}


@pytest.fixture(scope="session")
def celery_includes():
    return ["proj.tasks"]


@pytest.fixture(autouse=True)
def in_memory(monkeypatch):
    # Fast dots, and no real broker: CELERY_BROKER_URL (set while a session broker runs) would
    # override the in-memory transport.
    monkeypatch.setattr(config, "SECONDS_PER_DOT", 0.01)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)


def test_work_returns_the_number_of_dots(celery_app, celery_worker):  # noqa: F811
    # Given the embedded worker, When the tutorial's message is sent, Then its dots come back
    assert work.delay("Hello...").get(timeout=10) == 3
    assert work.delay("Hello World!").get(timeout=10) == 0


def test_work_sleeps_one_unit_per_dot(monkeypatch):
    # Given the time unit, When the task runs in-process, Then it sleeps dots x unit
    slept = []
    monkeypatch.setattr("proj.tasks.time.sleep", slept.append)
    assert work.run("Fifth message.....") == 5
    assert slept == [5 * 0.01]


def test_work_prints_the_tutorial_lines(capfd):
    # When the task runs, Then it speaks like worker.py
    work.run("First message.")
    assert capfd.readouterr().out.splitlines() == [" [x] Received 'First message.'", " [x] Done"]


@pytest.mark.parametrize("bad", [5, None, b"Hello...", ["a."], {"m": "."}])
def test_non_string_message_is_refused_at_the_producer_before_publishing(bad, monkeypatch):
    # Given a producer that would record any publish
    published = []
    monkeypatch.setattr(proj_app, "send_task", lambda *a, **kw: published.append(a))

    # When .delay() or .apply_async() is called with something that is not a str
    # Then a clear TypeError is raised, and nothing was published
    with pytest.raises(TypeError, match="takes the message as a str"):
        work.delay(bad)
    with pytest.raises(TypeError, match="takes the message as a str"):
        work.apply_async(args=[bad])
    with pytest.raises(TypeError, match="takes the message as a str"):
        work.apply_async(kwargs={"message": bad})
    assert published == []


def test_non_string_message_fails_in_the_task_itself():
    with pytest.raises(TypeError, match="got int"):
        work.run(5)


# Each setting that implements a tutorial behaviour, as the app actually sees it.
EXPECTED = {
    "task_acks_late": True,  # acknowledgment after the work
    "task_reject_on_worker_lost": True,  # a killed pool child's message is requeued, not acked
    "worker_prefetch_multiplier": 1,  # fair dispatch: prefetch_count=1
    "worker_concurrency": 1,  # one `celery -A proj worker` is one worker.py
    "task_default_delivery_mode": "persistent",  # delivery_mode=2
    "broker_transport_options": {"confirm_publish": True},  # publisher confirms
    "worker_cancel_long_running_tasks_on_connection_loss": True,
    "broker_connection_retry_on_startup": True,
    "accept_content": ["json"],
    "task_serializer": "json",
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "result_backend": "proj.results:RPCBackend+rpc://",  # rpc://, the reply queue declared without a round trip
    "task_default_queue": "task_queue",
    "worker_consumer": "proj.consumer:Consumer",  # tutorial text runs, nothing is deleted
    "task_time_limit": 1500,  # below RabbitMQ's 30-minute consumer_timeout
}


@pytest.mark.parametrize(("name", "value"), EXPECTED.items(), ids=list(EXPECTED))
def test_setting_holds_in_the_app(name, value):
    assert proj_app.conf[name] == value


def test_task_queue_is_durable_on_the_default_exchange():
    (queue,) = proj_app.conf.task_queues
    assert (queue.name, queue.durable, queue.auto_delete, queue.exclusive) == ("task_queue", True, False, False)
    assert (queue.exchange.name, queue.routing_key) == ("", "task_queue")


def test_every_setting_has_a_comment_naming_its_reason():
    # Each setting in proj/config.py (or each run of settings that go together) sits under a comment.
    source = open(config.__file__).read()
    lines = source.splitlines()
    settings = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.islower() for t in node.targets)
    ]
    setting_lines = {n for node in settings for n in range(node.lineno, node.end_lineno + 1)}
    for node in settings:
        above = node.lineno - 1
        while above in setting_lines:
            above -= 1
        assert lines[above - 1].startswith("#"), f"proj/config.py:{node.lineno} has no comment above it"


# -- a cluster: what a worker and a producer do with a failover list (proj/majority.py, proj/producer.py) ----

FAILOVER = "amqp://u:p@n1:5672//;amqp://u:p@n2:5672//;amqp://u:p@n3:5672//"


def test_a_worker_leaving_a_cut_off_node_puts_the_majoritys_node_first_for_every_new_connection():
    app = Celery("failover", broker=FAILOVER, set_as_current=False)
    assert majority.broker_urls(app) == FAILOVER.split(";")
    majority.put_first(app, "amqp://u:p@n2:5672//")
    order = ["amqp://u:p@n2:5672//", "amqp://u:p@n3:5672//", "amqp://u:p@n1:5672//"]
    assert app.conf.broker_read_url == app.conf.broker_write_url == ";".join(order)
    assert majority.broker_urls(app) == majority.broker_urls(app, write=True) == order


def test_a_delay_tries_up_to_three_nodes_of_a_failover_list_and_one_otherwise():
    cluster = Celery("cluster", broker=FAILOVER + ";amqp://u:p@n4:5672//", set_as_current=False)
    single = Celery("single", broker="amqp://u:p@n1:5672//", set_as_current=False)
    assert nodes_tried(cluster, {}) == NODES_TRIED == 3
    assert nodes_tried(single, {}) == 1
    # a caller that re-sends by itself, or names its own connection or producer, gets one node
    assert nodes_tried(cluster, {"retry": False}) == 1
    assert nodes_tried(cluster, {"connection": object()}) == 1


def test_a_partition_drops_both_directions_of_every_distribution_connection_of_the_node_and_no_other():
    nodes = [
        SimpleNamespace(dist_source=netsplit.source_address(5000 + i), dist_port=25000 + i, node_name=f"n{i}")
        for i in range(3)
    ]
    cluster = SimpleNamespace(port=5000, size=3, nodes=nodes, node=lambda n: nodes[n - 1])
    rules = netsplit._rules(cluster, 1)
    # node 1 to each peer and each peer to node 1, both directions: 2 peers x 2 openers x 2 directions
    assert len(rules) == 8
    text = [" ".join(r) for r in rules]
    assert all(r.endswith("-m comment --comment proj-netsplit-5000 -j DROP") for r in text)
    assert f"-s {nodes[0].dist_source} -p tcp --dport 25001" in " | ".join(text)
    assert f"-s {nodes[2].dist_source} -p tcp --dport 25000" in " | ".join(text)
    # nodes 2 and 3 still talk to each other
    assert not any(nodes[1].dist_source in r and "--dport 25002" in r for r in text)
    assert netsplit.source_address(5000) == "127.1.19.136"
