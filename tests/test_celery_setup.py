"""The tutorial's guarantees proven through pytest-celery's ``celery_setup``, on containers of the local images.

pytest-celery's own mode, the way its documentation tests an app (its ``examples/django``: the app's image
runs ``celery -A proj worker``; its ``examples/hybrid_setup``: containers of a wider scope on a network of
their own, and a ``celery_worker_cluster`` of several worker nodes). Here:

- the broker is one RabbitMQ container of ``proj-local/rabbitmq:4.3`` for the module, its AMQP and
  management ports published (pytest-celery's ``rabbitmq_management`` example);
- the workers are two containers of ``proj-local/celery-worker:local`` (the app image, docker/celery-worker)
  running ``celery -A proj worker``: proj's app with every setting of proj.config. A pair lives for one test
  class, so the class decides its prefetch (``PROJ_PREFETCH_MULTIPLIER``);
- ``celery_setup.app`` is proj's configuration pointed at the container (``ProjTestSetup``), so a task sent
  through it is declared, routed and confirmed exactly as ``new-task`` sends it, and ``.get()`` works over
  RabbitMQ (``rpc://``): no result-backend container.

Every claim is read from what the broker and the workers did: the workers' container logs (the tutorial's
`` [x] `` lines), the broker's management API (consumers, channels, unacknowledged counts) and Celery's event
stream. pytest-celery's defaults pull ``rabbitmq:latest`` and build on ``python:3.10-slim``; no registry is
reachable here, so nothing is pulled or built: ``./dev.sh images`` builds the images first. The test process
reaches the containers at their addresses (pytest-docker-tools, seeing /.dockerenv, pairs ports for a test
process inside a container). Skips like tests/test_compose.py; fails under ``CI=true``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

import pytest
from celery import Celery
from helpers import UnackedSampler, consumers_on_task_queue, wait_until
from pytest_celery import (
    CeleryBrokerCluster,
    CeleryTestSetup,
    CeleryTestWorker,
    CeleryWorkerCluster,
    CeleryWorkerContainer,
    RabbitMQContainer,
    RabbitMQTestBroker,
)
from pytest_docker_tools import container, fxtr, network

from proj import config
from proj.console import READY_LINE
from proj.harness.compose import why_containers_cannot_run
from proj.harness.events import EventRecorder, TaskRecord
from proj.management import Management
from proj.tasks import TASK_NAME

BROKER_IMAGE = "proj-local/rabbitmq:4.3"
WORKER_IMAGE = "proj-local/celery-worker:local"
IMAGES = (BROKER_IMAGE, WORKER_IMAGE)
TIMEOUT = 120

#: Seconds of work per '.' in the worker containers: long enough for the broker's statistics (every 250 ms,
#: below) to see a worker's unacknowledged messages while it works on them.
SECONDS_PER_DOT = 0.5

#: How proj.tasks.work's console lines begin and how a redelivery's ends.
RECEIVED, REDELIVERED = " [x] Received ", " (redelivered)"

FIVE_MESSAGES = ["First message.", "Second message..", "Third message...", "Fourth message....", "Fifth message....."]


@pytest.fixture(autouse=True, scope="module")
def containers_can_run() -> None:
    reason = why_containers_cannot_run(IMAGES, compose=False)
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true, and the container tests cannot run: {reason}")
        pytest.skip(reason)


# -- the broker: one container for the module -------------------------------------------------------------


class LocalRabbitMQ(RabbitMQContainer):
    """The local RabbitMQ image, reached from the test process at the address pytest-docker-tools gives."""

    @property
    def host_url(self) -> str:
        host, port = self.get_addr("5672/tcp")
        return f"{self.prefix()}{host}:{port}/{self.vhost}"

    @property
    def management_url(self) -> str:
        host, port = self.get_addr("15672/tcp")
        return f"http://guest:guest@{host}:{port}/api/"


#: Channel statistics every 250 ms, kept in 1 s samples (RabbitMQ's defaults: 5 s and 5 s samples, so the
#: management API shows a channel's unacknowledged count up to 5 s late; measured here: 5.0 s, then 1.0 s).
#: Then it shows a worker's unacknowledged messages while the worker holds them.
FAST_STATISTICS = (
    "-rabbit collect_statistics_interval 250 "
    "-rabbitmq_management_agent sample_retention_policies [{global,[{605,1}]},{basic,[{605,1}]},{detailed,[{605,1}]}]"
)


@pytest.fixture(scope="module")
def rabbitmq_env() -> dict:
    # A fixture, not a literal: pytest-docker-tools would read the braces of a literal as fixture names.
    return {"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": FAST_STATISTICS}


# A network of the module's own (pytest-celery's default one lives for one test), named by pytest-docker-tools.
celery_setup_network = network(scope="module")

rabbitmq_container = container(
    image=BROKER_IMAGE,
    scope="module",
    ports={"5672/tcp": None, "15672/tcp": None},
    environment=fxtr("rabbitmq_env"),
    network="{celery_setup_network.name}",
    wrapper_class=LocalRabbitMQ,
    timeout=TIMEOUT,
)


@pytest.fixture
def celery_rabbitmq_broker(rabbitmq_container: LocalRabbitMQ) -> Iterator[RabbitMQTestBroker]:
    broker = RabbitMQTestBroker(rabbitmq_container)
    yield broker
    broker.teardown()


@pytest.fixture
def celery_broker_cluster(celery_rabbitmq_broker: RabbitMQTestBroker) -> Iterator[CeleryBrokerCluster]:
    cluster = CeleryBrokerCluster(celery_rabbitmq_broker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_backend_cluster():
    return None


@pytest.fixture(scope="module")
def mgmt(rabbitmq_container: LocalRabbitMQ) -> Management:
    return Management(rabbitmq_container.management_url)


# -- the setup's app: proj's configuration, on the container ----------------------------------------------


class ProjTestSetup(CeleryTestSetup):
    """pytest-celery's setup whose app is configured like proj's own (proj.config) on the setup's broker."""

    @classmethod
    def create_setup_app(cls, celery_setup_config: dict, celery_setup_app_name: str) -> Celery:
        url = celery_setup_config["broker_url"]
        settings = {name: getattr(config, name) for name in dir(config)}  # proj.config lists only Celery's
        # The read and write URLs too: Celery prefers CELERY_BROKER_URL to broker_url, and the session's
        # private node (tests/conftest.py) sets that variable for the tests that use it.
        settings.update(celery_setup_config, broker_read_url=url, broker_write_url=url)
        return super().create_setup_app(settings, celery_setup_app_name)


@pytest.fixture
def celery_setup_cls() -> type[CeleryTestSetup]:
    return ProjTestSetup


# -- the workers: two containers of the app image, for one test class -------------------------------------


class ProjWorkerContainer(CeleryWorkerContainer):
    """A worker container of the app image running ``celery -A proj worker``, as docker-compose.yml runs it."""

    @classmethod
    def command(cls, *args: str, **kwargs) -> list[str]:
        # No -Q: proj.config names the queue (task_queue) and declares it as the tutorial does.
        return ["celery", "-A", "proj", "worker", "-n", f"{cls.worker_name()}@%h", f"--loglevel={cls.log_level()}"]

    @classmethod
    def worker_name(cls) -> str:
        return "worker"

    @classmethod
    def worker_queue(cls) -> str:
        return config.QUEUE_NAME

    @property
    def ready_prompt(self) -> str:
        # The tutorial's worker.py line, which proj prints once the worker consumes.
        return READY_LINE


@pytest.fixture(scope="class")
def prefetch_multiplier() -> int:
    """The workers' PROJ_PREFETCH_MULTIPLIER: 1 is the tutorial's fair dispatch; a class may override it."""
    return 1


@pytest.fixture(scope="class")
def worker_env(rabbitmq_container: LocalRabbitMQ, prefetch_multiplier: int) -> dict:
    # pytest-celery's own environment for a worker of this broker (CELERY_BROKER_URL on the network), plus proj's.
    env = ProjWorkerContainer.initial_env({"celery_broker_cluster_config": {"urls": [rabbitmq_container.url]}})
    return {
        **env,
        "PROJ_PREFETCH_MULTIPLIER": str(prefetch_multiplier),
        "PROJ_SECONDS_PER_DOT": str(SECONDS_PER_DOT),
    }


def worker_container():
    return container(
        image=WORKER_IMAGE,
        scope="class",
        environment=fxtr("worker_env"),
        network="{celery_setup_network.name}",
        wrapper_class=ProjWorkerContainer,
        timeout=TIMEOUT,
        command=ProjWorkerContainer.command(),
    )


worker_container_a = worker_container()
worker_container_b = worker_container()


@pytest.fixture
def celery_worker_cluster(
    worker_container_a: ProjWorkerContainer, worker_container_b: ProjWorkerContainer, celery_setup_app: Celery
) -> Iterator[CeleryWorkerCluster]:
    cluster = CeleryWorkerCluster(
        CeleryTestWorker(worker_container_a, app=celery_setup_app),
        CeleryTestWorker(worker_container_b, app=celery_setup_app),
    )
    yield cluster
    cluster.teardown()


@pytest.fixture
def recorder(celery_setup: CeleryTestSetup) -> Iterator[EventRecorder]:
    """Celery's event stream of the setup's broker, from before the test sends anything."""
    rec = EventRecorder(celery_setup.broker.config()["host_url"], app=celery_setup.app).start()
    yield rec
    rec.stop()


@pytest.fixture
def setup(celery_setup: CeleryTestSetup, mgmt: Management) -> CeleryTestSetup:
    """``celery_setup`` once both workers consume task_queue, and task_queue holds nothing from before."""
    wait_until(lambda: len(consumers_on_task_queue(mgmt)) == 2, TIMEOUT, "both worker containers consume task_queue")
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "task_queue empty, nothing unacked")
    return celery_setup


# -- reading what the broker and the workers did -----------------------------------------------------------


def redeliveries(mgmt: Management) -> int:
    """How many deliveries of task_queue the broker flagged redelivered (its queue's message_stats)."""
    queue = mgmt.queue(config.QUEUE_NAME) or {}
    return int((queue.get("message_stats") or {}).get("redeliver", 0))


def send(setup: CeleryTestSetup, messages: list[str]) -> list:
    """Each message as proj's task through the setup's app: confirmed by the broker when this returns."""
    return [setup.app.signature(TASK_NAME, args=(m,)).delay() for m in messages]


def received(worker: CeleryTestWorker, redelivered: bool = False) -> list[str]:
    """The messages a worker container printed `` [x] Received 'message'`` for, in order; with ``redelivered``,
    those it printed `` [x] Received 'message' (redelivered)`` for."""
    out = []
    for line in worker.logs().splitlines():
        if not line.startswith(RECEIVED):
            continue
        text = line[len(RECEIVED) :]
        if text.endswith(REDELIVERED) == redelivered:
            out.append(ast.literal_eval(text.removesuffix(REDELIVERED)))  # proj.tasks.work prints repr(message)
    return out


def tasks_of(recorder: EventRecorder, results: list) -> list[TaskRecord]:
    ids = {r.id for r in results}
    return [t for t in recorder.snapshot() if t.uuid in ids]


def every_task(recorder: EventRecorder, results: list, seen) -> bool:
    """``seen(task)`` for every one of ``results``, each of them on the event stream already (not a vacuous
    ``all()`` over the tasks seen so far: task-sent events may still be in their producer's 50 ms batch)."""
    tasks = tasks_of(recorder, results)
    return len(tasks) == len({r.id for r in results}) and all(seen(t) for t in tasks)


def most_held_at_once(tasks: list[TaskRecord]) -> dict[str, int]:
    """From the event stream: per worker, the most tasks it had received and not yet finished at once."""
    steps: dict[str, list[tuple[float, int]]] = {}
    for t in tasks:
        host = t.received[0][0]
        steps.setdefault(host, []).extend([(t.received[0][1], +1), (t.succeeded[-1][1], -1)])
    held = {}
    for host, points in steps.items():
        level = peak = 0
        for _, step in sorted(points):  # a finish before a receive at the same instant
            level += step
            peak = max(peak, level)
        held[host] = peak
    return held


# -- the tests ---------------------------------------------------------------------------------------------


class TestRoundRobin:
    """The tutorial's first mode: RabbitMQ hands each message to the next consumer, whatever it is doing."""

    @pytest.fixture(scope="class")
    @classmethod
    def prefetch_multiplier(cls) -> int:
        return 0  # unlimited, as tests/test_dispatch.py's round-robin test runs its workers

    def test_round_robin_gives_one_worker_container_the_odd_messages_and_the_other_the_even(
        self, setup: CeleryTestSetup, mgmt: Management, recorder: EventRecorder
    ):
        # Given two worker containers consuming task_queue with unlimited prefetch
        # When the tutorial's five messages are sent through the setup's app
        with UnackedSampler(mgmt) as sampler:
            results = send(setup, FIVE_MESSAGES)
            dots = [r.get(timeout=TIMEOUT) for r in results]

        # Then every task ran and returned its dots
        assert dots == [m.count(".") for m in FIVE_MESSAGES]
        # And one container received first, third and fifth, the other second and fourth
        got = sorted((received(w) for w in setup.worker_cluster), key=len, reverse=True)
        assert got == [FIVE_MESSAGES[0::2], FIVE_MESSAGES[1::2]], got
        # And the event stream agrees: each task received once, by the container that ran it
        recorder.wait_for(lambda r: every_task(r, results, lambda t: t.succeeded), TIMEOUT, "five task-succeeded")
        tasks = tasks_of(recorder, results)
        assert all(len(t.received) == 1 and t.succeeded[0][0] == t.received[0][0] for t in tasks), tasks
        hosts = {w.hostname() for w in setup.worker_cluster}
        assert {t.received[0][0] for t in tasks} == hosts
        # And the broker dispatched without waiting for acks: no prefetch limit, a busy worker held several
        assert sampler.prefetch_counts == {0}, sampler.prefetch_counts
        assert max(sampler.peak_by_channel.values(), default=0) > 1, sampler.peak_by_channel


# Odd messages heavy, even light (tests/test_dispatch.py's workload): round-robin would give one worker
# every heavy message; prefetch 1 gives each message to whichever worker is free.
HEAVY_DOTS, LIGHT_DOTS, PAIRS = 4, 1, 4
WORKLOAD = [m for i in range(PAIRS) for m in (f"heavy {i}" + "." * HEAVY_DOTS, f"light {i}" + "." * LIGHT_DOTS)]

#: Long enough to be killed in the middle of (20 dots: 10 s at SECONDS_PER_DOT).
LONG_TASK = "Long task...................."


class TestFairDispatch:
    """The tutorial's prefetch_count=1: a worker is handed a message only once it has acked the one before."""

    def test_celery_setup_runs_projs_task_in_a_worker_container_of_the_app_image(self, setup: CeleryTestSetup):
        # Given pytest-celery's setup: the local RabbitMQ and two worker containers of proj's app image
        # When proj's task is sent through the setup's app
        result = send(setup, ["Hello from celery_setup..."])[0]

        # Then a worker container runs it, prints the tutorial's lines, and the result comes back over RabbitMQ
        assert result.get(timeout=TIMEOUT) == 3
        runners = [w for w in setup.worker_cluster if "Hello from celery_setup..." in received(w)]
        assert len(runners) == 1
        runners[0].assert_log_exists(f"Task {TASK_NAME}[{result.id}] succeeded", timeout=TIMEOUT)

    def test_fair_dispatch_never_hands_a_busy_worker_container_a_second_message(
        self, setup: CeleryTestSetup, mgmt: Management, recorder: EventRecorder
    ):
        # Given two worker containers with prefetch 1, and heavy and light messages alternating
        # When the workload runs
        with UnackedSampler(mgmt) as sampler:
            results = send(setup, WORKLOAD)
            for r in results:
                r.get(timeout=TIMEOUT)

        # Then the broker never had more than one unacknowledged message on a worker's channel
        assert len(sampler.peak_by_channel) == 2, sampler.peak_by_channel
        assert set(sampler.peak_by_channel.values()) == {1}, sampler.peak_by_channel
        assert sampler.prefetch_counts == {1}
        # And no container received a message while it still had one unfinished, and both worked
        recorder.wait_for(lambda r: every_task(r, results, lambda t: t.succeeded), TIMEOUT, "workload succeeded")
        held = most_held_at_once(tasks_of(recorder, results))
        assert held == {w.hostname(): 1 for w in setup.worker_cluster}, held
        # And each message was received once, in all by the two containers
        assert sorted(m for w in setup.worker_cluster for m in received(w) if m in WORKLOAD) == sorted(WORKLOAD)

    def test_message_of_killed_worker_container_is_redelivered_to_the_other_and_done_once(
        self, setup: CeleryTestSetup, mgmt: Management, recorder: EventRecorder
    ):
        # Given a long task running in one worker container
        redelivered_before = redeliveries(mgmt)
        result = send(setup, [LONG_TASK])[0]
        busy = wait_until(
            lambda: next((w for w in setup.worker_cluster if LONG_TASK in received(w)), None),
            TIMEOUT,
            "a worker container received the long task",
        )
        (other,) = [w for w in setup.worker_cluster if w is not busy]
        recorder.wait_for(
            lambda r: every_task(r, [result], lambda t: t.received and t.started),
            TIMEOUT,
            "task-received and task-started of the long task",
        )

        # When that container is killed (SIGKILL: no warm shutdown, no ack)
        busy.kill()

        # Then the broker redelivers the message to the other container, flagged redelivered, and it is done there
        assert result.get(timeout=TIMEOUT) == LONG_TASK.count(".")
        assert received(other, redelivered=True) == [LONG_TASK]
        assert LONG_TASK not in received(other)  # its only delivery there is the redelivered one
        # (the broker counts it: one redelivery on task_queue)
        wait_until(lambda: redeliveries(mgmt) == redelivered_before + 1, TIMEOUT, "the broker's redeliver count +1")
        # And done once: one task-succeeded, from the other container; the killed one never finished it
        recorder.wait_for(lambda r: tasks_of(r, [result])[0].succeeded, TIMEOUT, "task-succeeded of the long task")
        (task,) = tasks_of(recorder, [result])
        assert [host for host, _ in task.received] == [busy.hostname(), other.hostname()]
        assert [host for host, _ in task.redelivered] == [other.hostname()]
        assert [host for host, _ in task.succeeded] == [other.hostname()]
        assert f"Task {TASK_NAME}[{result.id}] succeeded" not in busy.logs()
        # And the broker holds nothing more of it: task_queue empty, nothing unacknowledged, nothing dead-lettered
        wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 0), TIMEOUT, "task_queue empty, nothing unacked")
        assert mgmt.counts(config.DEAD_QUEUE_NAME) == (0, 0)
