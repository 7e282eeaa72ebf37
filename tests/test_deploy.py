"""The deployment files, checked statically: docker-compose.yml, the Dockerfile and the Procfile agree.

No Docker engine runs where these tests run, so nothing here starts a container. The compose file
is read with PyYAML and the Procfile with honcho's own parser; ``docker compose config -q`` (a
static check too) runs only where a compose CLI is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from honcho.environ import parse_procfile

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
PROCFILE = REPO_ROOT / "Procfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

WORKERS = ("worker1", "worker2")
APP_SERVICES = (*WORKERS, "flower")
BROKER_URL_IN_COMPOSE = "amqp://guest:guest@rabbitmq:5672//"
MANAGEMENT_URL_IN_COMPOSE = "http://guest:guest@rabbitmq:15672/api/"
#: Long enough for a warm shutdown: one tutorial task is a few seconds of dots.
MIN_GRACE_SECONDS = 30
COMPOSE_CLI_TIMEOUT = 60


# -- reading the files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def procfile() -> dict[str, list[str]]:
    """Each process type's argv, read the way ``honcho start`` reads the Procfile."""
    processes = parse_procfile(PROCFILE.read_text()).processes
    return {name: shlex.split(command) for name, command in processes.items()}


def command_argv(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    return shlex.split(rest[0]) if kind == "CMD-SHELL" else rest


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def without_option(argv: list[str], option: str) -> tuple[list[str], list[str]]:
    """``argv`` without ``--option=VALUE`` / ``--option VALUE``, and the values taken out."""
    rest, values = [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == option:
            values.append(next(args))
        else:
            rest.append(arg)
    return rest, values


def duration_seconds(value: str | int) -> float:
    """A compose duration (``60s``, ``1m30s``, ``1h``) in seconds."""
    if isinstance(value, int):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def compose_cli() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose``, whichever is installed, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=COMPOSE_CLI_TIMEOUT)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run_compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI installed (neither the `docker compose` plugin nor `docker-compose`)")
    # An empty env file: a developer's .env must not change what the file alone says.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    run_env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    run_env.update(env)
    return subprocess.run(
        [*cli, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO_ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=COMPOSE_CLI_TIMEOUT,
    )


# -- the broker ----------------------------------------------------------------------------------


def test_compose_rabbitmq_image_is_pinned_to_a_4_x_minor_with_the_management_plugin(services):
    # Given the compose file's broker
    image = services["rabbitmq"]["image"]

    # Then it is one RabbitMQ 4 minor release (not `latest`), with the management API Flower reads
    assert re.fullmatch(r"rabbitmq:4\.\d+(\.\d+)?-management", image), image


def test_compose_rabbitmq_is_healthy_once_rabbitmq_diagnostics_ping_succeeds(services):
    # Given the broker's healthcheck
    argv = healthcheck_argv(services["rabbitmq"])

    # Then it is RabbitMQ's own liveness probe
    assert argv == ["rabbitmq-diagnostics", "-q", "ping"]


def test_compose_rabbitmq_keeps_durable_queues_in_a_named_volume_across_container_restarts(compose, services):
    # Given the broker service
    rabbitmq = services["rabbitmq"]

    # When its volumes are read
    mounts = {}
    for volume in rabbitmq.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        mounts[target] = source

    # Then /var/lib/rabbitmq is a named volume declared at the top level (not an anonymous one)
    assert "/var/lib/rabbitmq" in mounts, rabbitmq.get("volumes")
    assert mounts["/var/lib/rabbitmq"] in (compose.get("volumes") or {})
    # And the node name (rabbit@HOSTNAME) is fixed, so a recreated container finds its data
    assert rabbitmq.get("hostname")


def test_compose_publishes_amqp_management_and_flower_on_the_host_loopback_only(services):
    # Given every published port of every service
    published = {name: service.get("ports", []) for name, service in services.items()}

    # Then each is bound to 127.0.0.1
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the loopback"
    # And they are the ports the tutorial and the Procfile use
    assert sorted(published["rabbitmq"]) == ["127.0.0.1:15672:15672", "127.0.0.1:5672:5672"]
    assert published["flower"] == ["127.0.0.1:5555:5555"]


# -- the workers and Flower ----------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_workers_start_only_once_the_broker_is_healthy(services, name):
    # Given a worker (or Flower)
    depends_on = services[name]["depends_on"]

    # Then it waits for the broker's healthcheck, not merely for its container
    assert depends_on["rabbitmq"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_workers_and_flower_are_built_from_the_dockerfile(services, name):
    # Given a worker (or Flower)
    build = services[name]["build"]

    # When its build section is read
    context, dockerfile = (
        (build, "Dockerfile")
        if isinstance(build, str)
        else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
    )

    # Then it is the repository's Dockerfile
    assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_workers_and_flower_reach_the_broker_by_its_service_name(services, name):
    # Given a worker (or Flower)
    env = environment(services[name])

    # Then Celery's own variable points it at the rabbitmq service
    assert env["CELERY_BROKER_URL"] == BROKER_URL_IN_COMPOSE


@pytest.mark.parametrize("name", WORKERS)
def test_compose_worker_runs_the_procfile_worker_command(services, procfile, name):
    # Given the same worker in both files
    in_compose, in_procfile = command_argv(services[name]), procfile[name]

    # Then both run the same celery command
    assert in_compose == in_procfile


def test_compose_flower_runs_the_procfile_command_but_listens_on_all_container_interfaces(services, procfile):
    # Given Flower's command in both files
    in_compose, compose_address = without_option(command_argv(services["flower"]), "--address")
    in_procfile, procfile_address = without_option(procfile["flower"], "--address")

    # Then they differ only in the address: the host's loopback for honcho, every interface of
    # the container for compose (whose published port is on the host's loopback)
    assert in_compose == in_procfile
    assert procfile_address == ["127.0.0.1"]
    assert compose_address == ["0.0.0.0"]


def test_compose_flower_will_not_start_without_basic_auth_and_reads_the_management_api(services):
    # Given Flower's environment
    env = environment(services["flower"])

    # Then its password comes from the environment, with no default to fall back on
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", env["FLOWER_BASIC_AUTH"]), env["FLOWER_BASIC_AUTH"]
    # And it is told where RabbitMQ's management API is
    assert env["PROJ_MANAGEMENT_URL"] == MANAGEMENT_URL_IN_COMPOSE


@pytest.mark.parametrize("name", WORKERS)
def test_compose_workers_get_time_for_a_warm_shutdown(services, name):
    # Given a worker
    worker = services[name]

    # Then docker stop sends SIGTERM, Celery's warm shutdown, and waits before SIGKILL
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert duration_seconds(worker.get("stop_grace_period", "10s")) >= MIN_GRACE_SECONDS


def test_docker_compose_config_accepts_the_file(tmp_path):
    # Given a compose CLI and Flower's password in the environment
    # When it validates the file (statically: no engine is needed)
    result = run_compose_config(tmp_path, FLOWER_BASIC_AUTH="user:password")

    # Then it finds nothing wrong
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_the_file_without_flower_basic_auth(tmp_path):
    # Given a compose CLI and no FLOWER_BASIC_AUTH
    # When it validates the file
    result = run_compose_config(tmp_path)

    # Then it stops and says which variable to set
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


# -- the Procfile --------------------------------------------------------------------------------


def test_procfile_runs_the_private_broker_two_workers_and_flower(procfile):
    # Given the Procfile honcho reads
    # Then it has the broker, the tutorial's two workers and Flower
    assert list(procfile) == ["broker", "worker1", "worker2", "flower"]
    # And the broker is the private node in the foreground, its files in .rabbitmq
    broker = procfile["broker"]
    assert broker[:4] == ["proj", "broker", "start", "--foreground"]
    assert broker[broker.index("--data-dir") + 1] == ".rabbitmq"


@pytest.mark.parametrize("name", WORKERS)
def test_procfile_worker_is_one_named_celery_worker_with_the_configured_concurrency(procfile, name):
    # Given a worker of the Procfile
    argv = procfile[name]

    # Then it is a celery worker of proj, named after its process type, logging at INFO
    assert argv[:4] == ["celery", "-A", "proj", "worker"]
    assert argv[argv.index("-n") + 1] == f"{name}@%h"
    assert argv[argv.index("-l") + 1] == "INFO"
    # And it leaves the concurrency to proj.config (one process: one tutorial worker)
    assert not {"-c", "--concurrency"} & set(argv) and not any(a.startswith("--concurrency=") for a in argv)


# -- the image -----------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_on_python_3_11_and_runs_a_worker_as_a_non_root_user():
    # Given the Dockerfile's instructions
    instructions = dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in instructions:
        by_keyword.setdefault(keyword, []).append(args)

    # Then the image is based on Python 3.11
    assert re.fullmatch(r"python:3\.11([.-]\S*)?", by_keyword["FROM"][-1].split()[0]), by_keyword["FROM"]
    # And it installs the package itself (not only its requirements)
    assert any(re.search(r"\bpip install( [^ ]+)* \.(\s|$)", run) for run in by_keyword["RUN"]), by_keyword["RUN"]
    # And it runs as a user other than root
    assert "USER" in by_keyword and by_keyword["USER"][-1].split(":")[0] not in ("root", "0")
    # And its default command is a celery worker of proj
    cmd = json.loads(by_keyword["CMD"][-1])
    assert cmd[:4] == ["celery", "-A", "proj", "worker"]


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build_context():
    # Given the .dockerignore patterns
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}

    # Then git history, virtualenvs, the private node's data dir and .env files stay out
    assert {".git", ".venv", ".rabbitmq", ".env"} <= patterns
