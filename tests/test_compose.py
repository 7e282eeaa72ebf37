"""The stack in containers, as users run it: docker-compose.yml with docker-compose.local.yml over it.

One compose project for the module (a unique project name, free host ports), brought up once with two
workers and torn down with ``down -v --remove-orphans`` also when a test fails. The images are the local
ones ``./dev.sh images`` builds (``./dev.sh test`` builds them first): the app from the project's own
Dockerfile, the broker Debian forky's RabbitMQ 4.3.6 (the release users run, not its official image;
see docs/containers.md).

What the broker and workers did is read from the broker (passive queue declares: exact counts, no
statistics delay), from Celery's event stream (the one Flower reads) and from the containers' logs and
states; every wait has a deadline. Where containers cannot run (no compose CLI, no engine, no images)
the module skips with the reason; under ``CI=true`` it fails instead.

Imports only ``proj.config`` and ``proj.tasks`` from the package.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from celery import Celery
from kombu import Connection

import proj.tasks  # noqa: F401  (registers proj.tasks.work on every app)
from proj import config
from proj.harness.compose import compose_cli, why_containers_cannot_run
from proj.rabbit.node import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = (REPO_ROOT / "docker-compose.yml", REPO_ROOT / "docker-compose.local.yml")
#: Seconds per '.' in the containers: the tutorial's five messages take well under a second each.
SECONDS_PER_DOT = 0.05
#: A task that runs for about five seconds: long enough to stop or kill its worker mid-task.
LONG_TASK = "A long task" + "." * 100
WORKERS = 2
TIMEOUT = 90
COMMAND_TIMEOUT = 180
TUTORIAL_MESSAGES = [
    "First message.",
    "Second message..",
    "Third message...",
    "Fourth message....",
    "Fifth message.....",
]


# -- can containers run here? ---------------------------------------------------------------------


# -- helpers --------------------------------------------------------------------------------------


def wait_until(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.2):
    """helpers.wait_until, with what is awaited first (as these modules read)."""
    return helpers.wait_until(predicate, timeout, what, interval)


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def logs(container: str, since: float) -> str:
    """A container's output since a time (Celery logs to stderr, the tutorial's lines go to stdout)."""
    result = subprocess.run(
        ["docker", "logs", "--since", str(int(since)), container], capture_output=True, text=True, timeout=60
    )
    return result.stdout + result.stderr


def message_of(event: dict) -> str | None:
    args = event.get("args")
    try:
        args = ast.literal_eval(args) if isinstance(args, str) else args
    except (ValueError, SyntaxError):
        return None
    return args[0] if isinstance(args, (list, tuple)) and args and isinstance(args[0], str) else None


class Events:
    """Celery's event stream from the stack's broker, recorded in a thread (it reconnects by itself)."""

    def __init__(self, app: Celery, url: str):
        self.app, self.url = app, url
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.receiver = None
        self.thread: threading.Thread | None = None
        self.stopped = False
        self.ready = threading.Event()

    def start(self) -> Events:
        """Subscribe, and return once the event queue is consumed (no event sent later is missed)."""
        self.stopped = False
        self.ready.clear()
        self.thread = threading.Thread(target=self._run, name="compose-events", daemon=True)
        self.thread.start()
        assert self.ready.wait(TIMEOUT), f"no event subscription to {self.url} within {TIMEOUT} s"
        return self

    def stop(self) -> None:
        self.stopped = True
        if self.receiver is not None:
            self.receiver.should_stop = True
        if self.thread is not None:
            self.thread.join(10)

    def resubscribe(self) -> None:
        """After a broker restart: a new subscription at once (the receiver's own retries back off to 30 s)."""
        self.stop()
        self.start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                with Connection(self.url, heartbeat=10) as conn:
                    self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on})
                    self.receiver.should_stop = self.stopped
                    context = self.receiver.consumer_context

                    @contextlib.contextmanager
                    def announced(**kwargs):
                        with context(**kwargs) as consuming:
                            self.ready.set()
                            yield consuming

                    self.receiver.consumer_context = announced
                    self.receiver.run(wakeup=False)
            except Exception:
                time.sleep(0.5)

    def _on(self, event: dict) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, uuid: str, kind: str) -> list[dict]:
        """The ``task-KIND`` events of one task, in order."""
        with self.lock:
            return [e for e in self.events if e.get("uuid") == uuid and e.get("type") == f"task-{kind}"]

    def hosts(self, uuid: str, kind: str) -> list[str]:
        return [e["hostname"] for e in self.of(uuid, kind)]

    def uuid_of(self, message: str) -> str | None:
        with self.lock:
            for e in self.events:
                if e.get("type") == "task-received" and message_of(e) == message:
                    return e["uuid"]
        return None


class Stack:
    """One compose project of docker-compose.yml + docker-compose.local.yml, on free host ports."""

    def __init__(self, workdir: Path):
        self.project = f"projtest{os.getpid()}{secrets.token_hex(3)}"
        self.user, self.password = "compose-test", secrets.token_urlsafe(16)
        self.flower_auth = ("flower", secrets.token_urlsafe(16))
        self.port = free_port()
        self.management_port = free_port((self.port,))
        self.flower_port = free_port((self.port, self.management_port))
        self.env_file = workdir / "compose.env"
        self.env_file.write_text(
            f"RABBITMQ_DEFAULT_USER={self.user}\n"
            f"RABBITMQ_DEFAULT_PASS={self.password}\n"
            f"RABBITMQ_ERLANG_COOKIE={secrets.token_urlsafe(24)}\n"
            f"FLOWER_BASIC_AUTH={':'.join(self.flower_auth)}\n"
        )
        # The variables the compose files read from the environment, as the README's command sets them.
        self.variables = {
            "PROJ_BROKER_PORT": str(self.port),
            "PROJ_MANAGEMENT_PORT": str(self.management_port),
            "PROJ_FLOWER_PORT": str(self.flower_port),
            "PROJ_SECONDS_PER_DOT": str(SECONDS_PER_DOT),
            # Unlimited prefetch, as tests/test_dispatch.py's round robin: the tutorial's first example.
            "PROJ_PREFETCH_MULTIPLIER": "0",
        }
        self.url = f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}//"
        self.cli = compose_cli()

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        files = [arg for file in COMPOSE_FILES for arg in ("-f", str(file))]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "FLOWER_", "COMPOSE_"))}
        env.update(self.variables)
        result = subprocess.run(
            [*self.cli, "-p", self.project, "--env-file", str(self.env_file), *files, *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if check:
            assert result.returncode == 0, f"compose {' '.join(args)}: {result.stderr}"
        return result

    def up(self) -> None:
        self.compose("up", "-d", "--scale", f"worker={WORKERS}")
        self.wait_healthy()
        self.wait_consumers(WORKERS)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "20", check=False)

    # -- containers ------------------------------------------------------------------------------

    def containers(self, service: str) -> list[str]:
        """The service's containers, running or not (by compose's labels: quicker than `compose ps -q`)."""
        labels = [f"label=com.docker.compose.{k}={v}" for k, v in (("project", self.project), ("service", service))]
        return sorted(docker("ps", "-aq", "--no-trunc", *(a for label in labels for a in ("--filter", label))).split())

    def inspect(self, container: str, template: str) -> str:
        return docker("inspect", "-f", template, container).strip()

    def worker_name(self, container: str) -> str:
        """The Celery name of a worker container: worker@%h, %h its host name."""
        return "worker@" + self.inspect(container, "{{.Config.Hostname}}")

    def container_of(self, worker_name: str) -> str:
        (container,) = [c for c in self.containers("worker") if self.worker_name(c) == worker_name]
        return container

    def running(self, container: str) -> bool:
        return self.inspect(container, "{{.State.Running}}") == "true"

    def health(self) -> str:
        (broker,) = self.containers("rabbitmq")
        return self.inspect(broker, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def wait_healthy(self) -> None:
        wait_until(lambda: self.health() == "healthy", "the broker container is healthy")

    # -- the broker, seen from the host ----------------------------------------------------------

    def task_queue(self) -> tuple[int, int]:
        """(ready messages, consumers) of task_queue: a passive declare, exact at once."""
        try:
            with Connection(self.url, connect_timeout=5) as conn:
                _, ready, consumers = conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True)
                return ready, consumers
        except Exception:
            return -1, -1

    def wait_consumers(self, n: int) -> None:
        wait_until(lambda: self.task_queue()[1] == n, f"{n} workers consume task_queue")

    def management(self, path: str):
        return http_json(f"http://127.0.0.1:{self.management_port}/api/{path}", (self.user, self.password))

    def ensure_whole(self) -> None:
        """Every container running and both workers consuming an empty task_queue, as after `up`."""
        if not all(self.running(c) for s in ("rabbitmq", "worker", "flower") for c in self.containers(s)):
            self.compose("up", "-d", "--scale", f"worker={WORKERS}")
        self.wait_healthy()
        wait_until(lambda: self.task_queue() == (0, WORKERS), f"{WORKERS} workers consume an empty task_queue")


def http_json(url: str, auth: tuple[str, str] | None = None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    try:
        http_json(url, auth)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    reason = why_containers_cannot_run()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true, and the container tests cannot run: {reason}")
        pytest.skip(reason)
    stack = Stack(tmp_path_factory.mktemp("compose"))
    # A SIGTERM to pytest (a CI job cancelled) becomes Ctrl+C, whose unwinding runs the teardown below.
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        try:
            stack.up()
        except AssertionError as exc:
            tail = stack.compose("logs", "--no-color", "--tail=40", check=False)
            raise AssertionError(f"{exc}\n-- the stack's last log lines --\n{tail.stdout}{tail.stderr}") from None
        yield stack
    finally:
        stack.down()
        signal.signal(signal.SIGTERM, previous)


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def app(stack) -> Iterator[Celery]:
    """A Celery app of proj's settings for this process's publishes and events, on the stack's broker."""
    app = Celery("proj-compose-test", set_as_current=False)
    app.config_from_object("proj.config")
    app.conf.broker_url = stack.url
    yield app
    app.close()


@pytest.fixture(scope="module")
def events(stack, app) -> Iterator[Events]:
    recorder = Events(app, stack.url).start()
    yield recorder
    recorder.stop()


@pytest.fixture
def whole(stack, events) -> Stack:
    stack.ensure_whole()
    return stack


def publish(app: Celery, url: str, messages: list[str]) -> list[str]:
    """Send each message as proj.tasks.work over one confirmed connection; the task ids."""
    work = app.tasks["proj.tasks.work"]
    with app.connection_for_write(url) as conn:
        return [work.apply_async(args=[m], connection=conn, ignore_result=True).id for m in messages]


# -- the tests ------------------------------------------------------------------------------------


def test_stack_comes_up_healthy_with_the_local_rabbitmq_and_two_workers_consuming(whole):
    # Given the stack after `up -d --scale worker=2`
    # Then the broker is healthy by its healthcheck (rabbitmq-diagnostics -q ping), and it is RabbitMQ 4.3
    # (Debian forky's), the minor release docker-compose.yml pins for users
    assert whole.health() == "healthy"
    assert whole.management("overview")["rabbitmq_version"].startswith("4.3.")
    # And the account from .env is an administrator there, not guest
    assert whole.management("whoami")["name"] == whole.user
    # And both worker containers consume task_queue
    assert len(whole.containers("worker")) == WORKERS
    assert whole.task_queue() == (0, WORKERS)


def test_delay_from_the_host_gets_its_task_done_by_a_worker_container(whole, events, monkeypatch):
    # Given CELERY_BROKER_URL pointing at the published port, as a user's shell on the host has it
    monkeypatch.setenv("CELERY_BROKER_URL", whole.url)
    host_app = Celery("proj-host", set_as_current=False)
    host_app.config_from_object("proj.config")
    try:
        # When a task is sent with .delay() and its result awaited (rpc:// over the same broker)
        result = host_app.tasks["proj.tasks.work"].delay("Hello from the host...")
        dots = result.get(timeout=TIMEOUT)
    finally:
        host_app.close()

    # Then it ran in one of the worker containers
    assert dots == 3
    workers = {whole.worker_name(c) for c in whole.containers("worker")}
    wait_until(lambda: events.hosts(result.id, "succeeded"), "the task-succeeded event")
    assert set(events.hosts(result.id, "succeeded")) <= workers


def test_new_task_inside_a_worker_container_gets_its_task_done(whole, events):
    # Given a message only this test sends
    message = f"new-task in a container {secrets.token_hex(4)}.."

    # When the tutorial's producer runs inside a worker container
    sent = whole.compose("exec", "-T", "--index=1", "worker", "new-task", *message.split())

    # Then it says it sent the message, and a worker container received and finished it
    assert f" [x] Sent {message!r}" in sent.stdout
    uuid = wait_until(lambda: events.uuid_of(message), f"a worker receives {message!r}")
    wait_until(lambda: events.hosts(uuid, "succeeded"), f"{message!r} succeeds")
    assert set(events.hosts(uuid, "succeeded")) <= {whole.worker_name(c) for c in whole.containers("worker")}


def test_round_robin_on_two_worker_containers_gives_one_the_odd_messages_and_the_other_the_even(whole, app, events):
    # Given two worker containers with unlimited prefetch, both consuming an empty task_queue
    # When the tutorial's five messages are sent in order
    ids = publish(app, whole.url, TUTORIAL_MESSAGES)

    # Then each is done once
    wait_until(lambda: all(events.hosts(i, "succeeded") for i in ids), "the five messages are done")
    received_by = [events.hosts(i, "received") for i in ids]
    assert all(len(hosts) == 1 for hosts in received_by), received_by
    # And the broker dealt them in turn: first, third, fifth to one worker, second and fourth to the other
    by_worker: dict[str, list[str]] = {}
    for message, (host,) in zip(TUTORIAL_MESSAGES, received_by, strict=True):
        by_worker.setdefault(host, []).append(message)
    assert sorted(by_worker.values()) == [TUTORIAL_MESSAGES[0::2], TUTORIAL_MESSAGES[1::2]], by_worker
    assert set(by_worker) == {whole.worker_name(c) for c in whole.containers("worker")}


def test_flower_refuses_without_credentials_and_lists_the_workers_and_their_tasks_with_them(whole, app, events):
    # Given a task done on the stack
    (uuid,) = publish(app, whole.url, ["For Flower."])
    wait_until(lambda: events.hosts(uuid, "succeeded"), "the task is done")
    api = f"http://127.0.0.1:{whole.flower_port}/api"

    # Then Flower's published port refuses its API without credentials
    assert http_status(f"{api}/workers") == 401
    assert http_status(f"{api}/tasks", ("flower", "wrong")) == 401

    # And with them it lists both worker containers
    names = {whole.worker_name(c) for c in whole.containers("worker")}
    wait_until(
        lambda: names <= set(http_json(f"{api}/workers?refresh=1", whole.flower_auth)),
        "Flower lists both workers",
    )
    # And the task, succeeded on the worker that ran it
    task = wait_until(
        lambda: (
            http_json(f"{api}/tasks", whole.flower_auth).get(uuid, {}).get("state") == "SUCCESS"
            and http_json(f"{api}/tasks", whole.flower_auth)[uuid]
        ),
        "Flower lists the task as succeeded",
    )
    assert task["worker"] == events.hosts(uuid, "succeeded")[0]


def test_compose_stop_during_a_running_task_is_a_warm_shutdown_that_finishes_and_acks_it(whole, app, events):
    # Given a long task running in a worker container
    (uuid,) = publish(app, whole.url, [LONG_TASK])
    (host,) = wait_until(lambda: events.hosts(uuid, "started"), "the long task starts")
    container = whole.container_of(host)

    # When the workers are stopped as compose stops them (SIGTERM through the init, then the grace period)
    stop_sent = time.time()
    whole.compose("stop", "worker")

    # Then the task finished on that worker after the stop was sent, once, and nowhere else
    assert wait_until(lambda: events.hosts(uuid, "succeeded"), "the task-succeeded event") == [host]
    assert events.of(uuid, "succeeded")[0]["timestamp"] > stop_sent
    assert events.hosts(uuid, "started") == [host]
    # And its worker went through Celery's warm shutdown and exited by itself (0, not SIGKILL's 137)
    assert not whole.running(container)
    assert whole.inspect(container, "{{.State.ExitCode}}") == "0"
    assert "Warm shutdown" in logs(container, stop_sent - 1)
    # And the message was acked: nothing went back to task_queue, and no worker consumes it
    assert whole.task_queue() == (0, 0)


def test_docker_kill_of_a_worker_container_mid_task_redelivers_the_task_to_the_other_worker_once(whole, app, events):
    # Given a long task running in one of two worker containers
    (uuid,) = publish(app, whole.url, [LONG_TASK])
    (killed,) = wait_until(lambda: events.hosts(uuid, "started"), "the long task starts")
    container = whole.container_of(killed)

    # When that container is killed (SIGKILL: no shutdown, no ack)
    docker("kill", container)

    # Then the broker redelivers the task, flagged redelivered, to the other worker, which finishes it
    (other,) = wait_until(lambda: events.hosts(uuid, "succeeded"), "the task is done after the kill")
    assert other != killed
    assert events.hosts(uuid, "started") == [killed, other]
    assert events.hosts(uuid, "redelivered") == [other]
    # And once everything runs again (the killed worker included) the task was done exactly once
    whole.ensure_whole()
    assert events.hosts(uuid, "succeeded") == [other]


def test_broker_container_recreated_on_its_volume_keeps_the_queued_persistent_tasks(whole, app, events):
    # Given no worker running and three tasks queued
    whole.compose("stop", "worker")
    wait_until(lambda: whole.task_queue()[1] == 0, "no worker consumes task_queue")
    ids = publish(app, whole.url, ["Kept one.", "Kept two..", "Kept three..."])
    assert whole.task_queue() == (3, 0)

    # When the broker container is stopped, removed, and created again on the same named volume
    (before,) = whole.containers("rabbitmq")
    whole.compose("stop", "rabbitmq")
    whole.compose("rm", "-f", "rabbitmq")
    whole.compose("up", "-d", "--no-deps", "rabbitmq")
    whole.wait_healthy()
    events.resubscribe()
    (after,) = whole.containers("rabbitmq")

    # Then the new broker has the three tasks (durable queue, persistent messages)
    assert after != before
    assert whole.task_queue() == (3, 0)
    # And the workers, started again, do them
    whole.compose("start", "worker")
    wait_until(lambda: all(events.hosts(i, "succeeded") for i in ids), "the kept tasks are done")
    whole.wait_consumers(WORKERS)


def test_worker_containers_started_before_the_broker_is_healthy_wait_for_it_and_then_consume(whole, app, events):
    # Given the broker and the workers stopped
    whole.compose("stop", "worker", "rabbitmq")
    workers = whole.containers("worker")
    (broker,) = whole.containers("rabbitmq")

    # When the worker containers start while the broker is down (docker start: no compose dependency)
    since = time.time() - 1
    docker("start", *workers)

    # Then each keeps trying to connect instead of exiting
    for container in workers:
        wait_until(
            lambda c=container: "Cannot connect to amqp://" in logs(c, since),
            f"worker {container[:12]} reports the broker unreachable",
        )
        assert whole.running(container)
    restarts = {c: whole.inspect(c, "{{.RestartCount}}") for c in workers}

    # And once the broker is started and healthy, they consume by themselves
    docker("start", broker)
    whole.wait_healthy()
    events.resubscribe()
    whole.wait_consumers(WORKERS)
    (uuid,) = publish(app, whole.url, ["After the broker."])
    wait_until(lambda: events.hosts(uuid, "succeeded"), "a task sent after the broker came up is done")
    # And no worker container was restarted meanwhile: they waited
    assert {c: whole.inspect(c, "{{.RestartCount}}") for c in workers} == restarts
