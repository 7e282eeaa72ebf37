"""The compose worker's healthcheck (`proj health`), on a worker container that gets stuck.

One compose project for the module: docker-compose.yml + docker-compose.local.yml, and an override of
the test's own that runs tests/stuck_build.py in the worker container instead of proj (tests/ mounted
read-only, ``celery -A stuck_build worker``, its pool swallowing the first message it is handed, and
PROJ_STUCK_AFTER=0 so the guard does not give that message back) and shortens the healthcheck's
intervals. The healthcheck's command is the compose file's own. Torn down with its volumes, also when
a test fails; skipped with the reason where containers cannot run (failed under ``CI=true``).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from kombu import Connection

import proj.tasks  # noqa: F401  (registers proj.tasks.work on every app)
from proj import config
from proj.harness.compose import ComposeError, ComposeProject, why_containers_cannot_run
from proj.management import Management
from proj.rabbit.node import free_port

TESTS = Path(__file__).resolve().parent
TIMEOUT = 90
#: The stuck-after bound `proj health` uses when the guard is off (PROJ_STUCK_AFTER=0): 30 s.
STUCK_AFTER = 30


def wait_until(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.5):
    """helpers.wait_until, with what is awaited first (as these modules read)."""
    return helpers.wait_until(predicate, timeout, what, interval)


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def stuck_stack(tmp_path_factory) -> Iterator[ComposeProject]:
    reason = why_containers_cannot_run()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true, and the container tests cannot run: {reason}")
        pytest.skip(reason)
    port = free_port()
    ports = (port, free_port(), free_port())
    project = ComposeProject(
        tmp_path_factory.mktemp("compose-health"),
        variables={
            "PROJ_BROKER_PORT": str(ports[0]),
            "PROJ_MANAGEMENT_PORT": str(ports[1]),
            "PROJ_FLOWER_PORT": str(ports[2]),
        },
        name_prefix="projhealth",
    )
    project.write_override(
        {
            "services": {
                "worker": {
                    "command": ["celery", "-A", "stuck_build", "worker", "-n", "worker@%h", "-l", "INFO"],
                    "volumes": [f"{TESTS}:/tests:ro"],
                    "environment": {
                        "PYTHONPATH": "/tests",
                        "PROJ_TEST_STUCK": "swallow-first-job",
                        "PROJ_TEST_STUCK_MARKER": "/tmp/stuck_build.fired",
                        "PROJ_STUCK_AFTER": "0",
                        "PROJ_POOL": "prefork",  # the stuck build breaks the prefork pool
                    },
                    # The compose file's command, checked more often so the test takes a minute, not three.
                    "healthcheck": {"interval": "3s", "timeout": "15s", "start_period": "5s", "retries": 2},
                }
            }
        }
    )
    project.url = f"amqp://{project.user}:{project.password}@127.0.0.1:{port}//"
    project.management = Management(f"http://{project.user}:{project.password}@127.0.0.1:{ports[1]}/api/")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        try:
            project.compose("up", "-d", "--no-build", "rabbitmq", "worker")
        except ComposeError as exc:
            raise AssertionError(f"{exc}\n-- the stack's last log lines --\n{project.tail()}") from None
        yield project
    finally:
        project.down()
        signal.signal(signal.SIGTERM, previous)


def health_log(project: ComposeProject, container: str) -> list[dict]:
    return json.loads(project.inspect(container, "{{json .State.Health.Log}}") or "[]")


def test_worker_container_holding_a_message_it_never_runs_turns_unhealthy(stuck_stack):
    # Given the stuck build's worker container, healthy by the compose file's healthcheck while it holds nothing
    worker = stuck_stack.container("worker")
    wait_until(lambda: stuck_stack.health(worker) == "healthy", "the stuck build's worker is healthy at first")

    # When it is handed a message that its pool swallows (sent from the host, confirmed)
    with Connection(stuck_stack.url, transport_options={"confirm_publish": True}) as conn:
        task_id = proj.tasks.work.apply_async(args=["Stuck."], connection=conn, ignore_result=True).id
    wait_until(lambda: "the pool swallowed a job" in stuck_stack.logs(worker), "the pool swallows the message")

    # Then docker says the container is unhealthy, once the message has waited past the bound
    wait_until(
        lambda: stuck_stack.health(worker) == "unhealthy",
        "docker inspect says the worker container is unhealthy",
        timeout=STUCK_AFTER + TIMEOUT,
    )
    # And the health check's own words name the task it holds without running it (exit 1: unhealthy)
    last = health_log(stuck_stack, worker)[-1]
    assert last["ExitCode"] == 1, last
    assert task_id in last["Output"] and "without running it" in last["Output"], last["Output"]
    # And nothing was lost: the message is still the worker's, unacknowledged (the broker's own counts)
    wait_until(
        lambda: stuck_stack.management.counts(config.QUEUE_NAME) == (0, 1), "task_queue: 0 ready, 1 unacknowledged"
    )
    assert stuck_stack.state(worker) == "running"
