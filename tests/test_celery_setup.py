"""pytest-celery's ``celery_setup`` on the local images: a RabbitMQ container and a worker container
of proj's app image (docker/celery-worker: the app plus psutil), started by pytest-celery itself.

pytest-celery's defaults pull ``rabbitmq:latest`` and build a worker from ``python:3.10-slim``; here no
registry is reachable, so its image fixtures name the images ``./dev.sh images`` builds, and the result
backend is off (its default is Redis): the task's completion is read from the worker's log. The test
process reaches the broker at the container's address (pytest-docker-tools, seeing /.dockerenv, pairs
ports for a test process inside a container). Skips like tests/test_compose.py; fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from types import ModuleType

import celery_setup_tasks
import pytest
from pytest_celery import CeleryBrokerCluster, CeleryTestSetup, RabbitMQContainer, RabbitMQTestBroker
from pytest_docker_tools import container, fxtr

IMAGES = ("proj-local/rabbitmq:local", "proj-local/celery-worker:local")
TIMEOUT = 120


def why_containers_cannot_run() -> str | None:
    if not shutil.which("docker"):
        return "no docker CLI: ./dev.sh images installs docker.io"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker engine answers ({last}): ./dev.sh images starts one (needs root)"
    missing = [i for i in IMAGES if subprocess.run(["docker", "image", "inspect", i], capture_output=True).returncode]
    if missing:
        return (
            f"local images missing ({', '.join(missing)}): ./dev.sh images builds them (needs root and a Debian mirror)"
        )
    return None


@pytest.fixture(autouse=True, scope="module")
def containers_can_run() -> None:
    reason = why_containers_cannot_run()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true, and the container tests cannot run: {reason}")
        pytest.skip(reason)


class LocalRabbitMQ(RabbitMQContainer):
    """The local RabbitMQ image, reached from the test process at the address pytest-docker-tools gives."""

    @property
    def host_url(self) -> str:
        host, port = self.get_addr("5672/tcp")
        return f"{self.prefix()}{host}:{port}/{self.vhost}"

    @property
    def ready_prompt(self) -> str:
        return "Server startup complete"


@pytest.fixture
def default_rabbitmq_broker_cls() -> type[RabbitMQContainer]:
    return LocalRabbitMQ


# pytest-celery's own fixture with the wrapper class above (it names RabbitMQContainer outright).
default_rabbitmq_broker = container(
    image="{default_rabbitmq_broker_image}",
    ports=fxtr("default_rabbitmq_broker_ports"),
    environment=fxtr("default_rabbitmq_broker_env"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=LocalRabbitMQ,
    timeout=TIMEOUT,
)


@pytest.fixture
def default_rabbitmq_broker_image() -> str:
    return "proj-local/rabbitmq:local"


@pytest.fixture
def celery_broker_cluster(celery_rabbitmq_broker: RabbitMQTestBroker):
    cluster = CeleryBrokerCluster(celery_rabbitmq_broker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_backend_cluster():
    return None


@pytest.fixture
def celery_base_worker_image(docker_client):
    return docker_client.images.get("proj-local/celery-worker:local")


@pytest.fixture
def default_worker_tasks() -> set[ModuleType]:
    return {celery_setup_tasks}


@pytest.fixture
def default_worker_env(default_worker_env: dict) -> dict:
    return {**default_worker_env, "PROJ_SECONDS_PER_DOT": "0.05"}


def test_celery_setup_runs_projs_task_in_a_worker_container_of_the_app_image(celery_setup: CeleryTestSetup):
    # Given pytest-celery's setup: the local RabbitMQ and a worker container of proj's app image
    worker = celery_setup.worker

    # When proj's task is sent through the setup's app to the worker's queue
    result = celery_setup.app.signature(
        "proj.tasks.work", args=("Hello from celery_setup...",), queue=worker.worker_queue
    ).delay()

    # Then the worker in the container runs proj's task and it succeeds, returning the dots it slept for
    worker.assert_log_exists(" [x] Received 'Hello from celery_setup...'", timeout=TIMEOUT)
    worker.assert_log_exists(f"Task proj.tasks.work[{result.id}] succeeded", timeout=TIMEOUT)
    assert f"Task proj.tasks.work[{result.id}] succeeded" in worker.logs() and "3" in worker.logs()
