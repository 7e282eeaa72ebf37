"""The deployment files, checked statically: docker-compose.yml, the Dockerfile, the Procfile, the Makefile,
.env.example and the README agree.

No Docker engine runs where these tests run, so nothing here starts a container. The compose file is
checked by a real compose implementation (``docker compose config`` or Debian's ``docker-compose``
1.29, which ./dev.sh test installs: it interpolates ``.env`` and validates the file without an engine)
and against the Compose specification's JSON schema that the compose package ships. The Procfile is
read with honcho's own parser and its ``${VAR:-default}`` expanded as sh would; ``make -n`` says what
``make up`` runs.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from honcho.environ import parse_procfile

from proj.management import management_url_from_broker

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
LOCAL_COMPOSE_FILE = REPO_ROOT / "docker-compose.local.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
PROCFILE = REPO_ROOT / "Procfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
MAKEFILE = REPO_ROOT / "Makefile"
README = REPO_ROOT / "README.md"

PROCFILE_WORKERS = ("worker1", "worker2")
APP_SERVICES = ("worker", "flower")
#: Variables the compose file needs from .env, without defaults.
REQUIRED_VARIABLES = ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS", "FLOWER_BASIC_AUTH", "RABBITMQ_ERLANG_COOKIE")
#: Distinctive values, to see where compose puts them.
TEST_ENV = {
    "RABBITMQ_DEFAULT_USER": "deploy-user",
    "RABBITMQ_DEFAULT_PASS": "Dep1oy-pw",
    "FLOWER_BASIC_AUTH": "fl:pw",
    "RABBITMQ_ERLANG_COOKIE": "deploy-cookie-0123456789",
}
#: The cluster profile's nodes and the services that use them.
CLUSTER_NODES = ("rabbitmq1", "rabbitmq2", "rabbitmq3")
CLUSTER_APP_SERVICES = ("cluster-worker", "cluster-flower")
#: Long enough for a warm shutdown: one tutorial task is a few seconds of dots.
MIN_GRACE_SECONDS = 30
RESTART_POLICIES = ("always", "unless-stopped", "on-failure")
COMPOSE_CLI_TIMEOUT = 60
#: The host ports each service publishes: (variable that moves it, the tutorial's default, container port).
HOST_PORTS = {
    "rabbitmq": [("PROJ_BROKER_PORT", 5672, 5672), ("PROJ_MANAGEMENT_PORT", 15672, 15672)],
    "flower": [("PROJ_FLOWER_PORT", 5555, 5555)],
}
#: What docker-compose.local.yml may add to a service besides its image: the workers' pace and prefetch.
LOCAL_APP_VARIABLES = {"PROJ_SECONDS_PER_DOT": "1.0", "PROJ_PREFETCH_MULTIPLIER": "1"}
#: Where Debian's (and PyPI's) docker-compose 1.29 keeps the Compose specification's JSON schema.
COMPOSE_SCHEMA_CANDIDATES = ("/usr/lib/python3/dist-packages/compose/config/compose_spec.json",)


# -- reading the files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def expand(command: str, env: dict[str, str]) -> str:
    """``${NAME:-default}`` as sh expands it: the variable when set and non-empty, else the default."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), command)


def procfile_processes(env: dict[str, str] | None = None) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Each process type's (environment it sets, argv), as ``honcho start`` would run it with ``env``."""
    processes = parse_procfile(PROCFILE.read_text()).processes
    result = {}
    for name, command in processes.items():
        argv = shlex.split(expand(command, env or {}))
        if argv[:1] == ["exec"]:
            argv = argv[1:]
        assignments: dict[str, str] = {}
        if argv[:1] == ["env"]:
            argv = argv[1:]
            while argv and re.fullmatch(r"\w+=.*", argv[0]):
                key, value = argv.pop(0).split("=", 1)
                assignments[key] = value
        result[name] = (assignments, argv)
    return result


@pytest.fixture(scope="module")
def procfile() -> dict[str, list[str]]:
    return {name: argv for name, (_, argv) in procfile_processes().items()}


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


def option_value(argv: list[str], *options: str) -> list[str]:
    """The values of ``--option=VALUE`` / ``--option VALUE`` / ``-o VALUE`` in ``argv``."""
    values = []
    for i, arg in enumerate(argv):
        for option in options:
            if arg.startswith(option + "=") and option.startswith("--"):
                values.append(arg.split("=", 1)[1])
            elif arg == option and i + 1 < len(argv):
                values.append(argv[i + 1])
    return values


def without_options(argv: list[str], *options: str) -> list[str]:
    """``argv`` without those options and their values."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in options:
            skip = True
            continue
        if any(arg.startswith(option + "=") for option in options if option.startswith("--")):
            continue
        rest.append(arg)
    return rest


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


def env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# -- the compose CLI -----------------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose``, whichever is installed, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=COMPOSE_CLI_TIMEOUT)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run_compose(
    tmp_path: Path,
    *args: str,
    env_file: dict[str, str] | Path | None = None,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
    **env: str,
):
    """``compose --env-file FILE -f docker-compose.yml ARGS``: FILE stands in for .env (a developer's .env
    must not change what the test sees), and none of the caller's own variables leak in (nor the ports
    the compose files read from the environment)."""
    cli = compose_cli()
    if cli is None:
        pytest.skip(
            "no compose CLI installed (neither `docker compose` nor `docker-compose`): ./dev.sh test installs it"
        )
    if isinstance(env_file, Path):
        path = env_file
    else:
        path = tmp_path / "compose.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in (env_file or {}).items()))
    ignored = {*REQUIRED_VARIABLES, *LOCAL_APP_VARIABLES, *(v for ports in HOST_PORTS.values() for v, _, _ in ports)}
    run_env = {k: v for k, v in os.environ.items() if k not in ignored}
    run_env.update(env)
    file_args = [arg for file in files for arg in ("-f", str(file))]
    return subprocess.run(
        [*cli, "--env-file", str(path), *file_args, *args],
        cwd=REPO_ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=COMPOSE_CLI_TIMEOUT,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """The compose file as the compose CLI resolves it with TEST_ENV as .env."""
    result = run_compose(tmp_path_factory.mktemp("compose"), "config", env_file=TEST_ENV)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


# -- the broker ----------------------------------------------------------------------------------


def test_compose_rabbitmq_image_is_pinned_to_4_3_the_tested_minor_with_the_management_plugin(services):
    # Given the compose file's broker
    image = services["rabbitmq"]["image"]

    # Then it is RabbitMQ 4.3, the minor release proj is tested on (not `latest`), with the management
    # API Flower reads
    assert image == "rabbitmq:4.3-management", image


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


def test_compose_rabbitmq_account_comes_from_env_and_is_not_guest(services, resolved):
    # Given the broker's environment as written and as compose resolves it with a test .env
    written, env = environment(services["rabbitmq"]), environment(resolved["services"]["rabbitmq"])

    # Then user and password are required variables with no default
    for name in ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"):
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", written[name]), written[name]
    # And the account RabbitMQ creates (instead of guest) is the one in .env
    assert (env["RABBITMQ_DEFAULT_USER"], env["RABBITMQ_DEFAULT_PASS"]) == (
        TEST_ENV["RABBITMQ_DEFAULT_USER"],
        TEST_ENV["RABBITMQ_DEFAULT_PASS"],
    )


def test_compose_file_never_mentions_the_guest_account():
    # Given the compose file's text
    text = COMPOSE_FILE.read_text()

    # Then no URL or variable uses RabbitMQ's guest account (it cannot log in across the network)
    assert not re.search(r"guest(:|@)", text)


def test_compose_publishes_amqp_management_and_flower_on_the_host_loopback_only(services):
    # Given every published port of every service
    published = {name: service.get("ports", []) for name, service in services.items()}

    # Then each is bound to 127.0.0.1
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the loopback"
    # And they are the ports the tutorial and the Procfile use, moved by the Procfile's own variables
    for name, ports in HOST_PORTS.items():
        assert sorted(published[name]) == sorted(
            f"127.0.0.1:${{{variable}:-{default}}}:{target}" for variable, default, target in ports
        ), published[name]


def port_triples(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port, in either form compose prints."""
    triples = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            triples.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            host_ip, published, target = str(port).split("/")[0].rsplit(":", 2)
            triples.append((host_ip, int(published), int(target)))
    return sorted(triples)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"PROJ_BROKER_PORT": "5673", "PROJ_MANAGEMENT_PORT": "15673", "PROJ_FLOWER_PORT": "5556"}],
    ids=["defaults", "ports-from-env"],
)
def test_compose_host_ports_are_the_tutorials_unless_the_procfiles_port_variables_move_them(tmp_path, overrides):
    # Given the compose file as the compose CLI resolves it, with or without the port variables set
    result = run_compose(tmp_path, "config", env_file=TEST_ENV, **overrides)
    assert result.returncode == 0, result.stderr
    resolved_services = yaml.safe_load(result.stdout)["services"]

    # Then each published port is the variable's, else the tutorial's, on the host's loopback
    for name, ports in HOST_PORTS.items():
        expected = sorted(
            ("127.0.0.1", int(overrides.get(variable, default)), target) for variable, default, target in ports
        )
        assert port_triples(resolved_services[name]) == expected, name


# -- the cluster profile --------------------------------------------------------------------------


def volume_mounts(service: dict) -> dict[str, str]:
    """Mount target -> volume name (or host path) of a service's ``volumes``."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        mounts[target] = source
    return mounts


def published_host_ports(service: dict) -> list[str]:
    return [str(port).rsplit(":", 1)[0] for port in service.get("ports", [])]


def test_compose_cluster_profile_adds_services_and_leaves_the_default_stack_as_it_was(services):
    # Given the compose services, with and without a profile
    default = {name for name, service in services.items() if not service.get("profiles")}
    cluster = {name for name, service in services.items() if "cluster" in (service.get("profiles") or [])}

    # Then `docker compose up` still runs the single broker, its workers and Flower, and nothing else
    assert default == {"rabbitmq", *APP_SERVICES}
    # And the cluster profile is three nodes, the one-shot gate, and the workers and Flower pointed at them
    assert cluster == {*CLUSTER_NODES, "cluster-ready", *CLUSTER_APP_SERVICES}
    # And no two services publish the same host port, so both stacks can run side by side
    ports = [port for service in services.values() for port in published_host_ports(service)]
    assert len(ports) == len(set(ports)), ports


def test_compose_cluster_nodes_run_the_single_brokers_image_each_with_its_name_volume_and_health_check(
    compose, services
):
    # Given the cluster's nodes
    nodes = [services[name] for name in CLUSTER_NODES]

    # Then each runs the single broker's image, is healthy once it answers ping, and restarts by itself
    for node in nodes:
        assert node["image"] == services["rabbitmq"]["image"]
        assert healthcheck_argv(node) == healthcheck_argv(services["rabbitmq"])
        assert node.get("restart") in RESTART_POLICIES
        assert duration_seconds(node.get("stop_grace_period", "10s")) >= MIN_GRACE_SECONDS
    # And each has a fixed host name (its node name, rabbit@HOSTNAME) and a named volume of its own
    assert [node["hostname"] for node in nodes] == list(CLUSTER_NODES)
    sources = [volume_mounts(node)["/var/lib/rabbitmq"] for node in nodes]
    assert len(set(sources)) == len(nodes) and set(sources) <= set(compose["volumes"])


def test_compose_cluster_nodes_share_the_cookie_from_env_and_list_each_other_for_peer_discovery(services, resolved):
    # Given each node's environment as written and as compose resolves it
    for name in CLUSTER_NODES:
        written, env = environment(services[name]), environment(resolved["services"][name])

        # Then the Erlang cookie is a required .env variable, the same on every node
        assert re.fullmatch(r"\$\{RABBITMQ_ERLANG_COOKIE:\?[^}]+\}", written["RABBITMQ_ERLANG_COOKIE"])
        assert env["RABBITMQ_ERLANG_COOKIE"] == TEST_ENV["RABBITMQ_ERLANG_COOKIE"]
        # And the account is the single broker's, from .env
        assert (env["RABBITMQ_DEFAULT_USER"], env["RABBITMQ_DEFAULT_PASS"]) == (
            TEST_ENV["RABBITMQ_DEFAULT_USER"],
            TEST_ENV["RABBITMQ_DEFAULT_PASS"],
        )
        # And classic config peer discovery lists every node (rabbit@HOSTNAME), so they join at first start
        args = env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()
        (listed,) = [args[i + 2] for i in range(len(args) - 2) if args[i : i + 2] == ["-rabbit", "cluster_nodes"]]
        match = re.fullmatch(r"\{\[([\w@,]+)\],disc\}", listed)
        assert match, listed
        assert match.group(1).split(",") == [f"rabbit@{services[n]['hostname']}" for n in CLUSTER_NODES]
        # And the consumer timeout is the single broker's
        single = environment(resolved["services"]["rabbitmq"])["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
        assert single in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]


@pytest.mark.parametrize("name", CLUSTER_APP_SERVICES)
def test_compose_cluster_workers_and_flower_know_every_node_and_use_quorum_queues(services, resolved, name):
    # Given a cluster worker (or Flower) as written and as resolved
    service, env = services[name], environment(resolved["services"][name])

    # Then Celery's failover list names every node, with the account from .env
    user, password = TEST_ENV["RABBITMQ_DEFAULT_USER"], TEST_ENV["RABBITMQ_DEFAULT_PASS"]
    assert env["CELERY_BROKER_URL"].split(";") == [f"amqp://{user}:{password}@{n}:5672//" for n in CLUSTER_NODES]
    # And task_queue is a quorum queue, replicated on the nodes
    assert env["PROJ_QUEUE_TYPE"] == "quorum"
    # And it starts once the three nodes have joined (cluster-ready exited 0), from the same image and
    # command as its single-broker twin
    assert {n: d["condition"] for n, d in service["depends_on"].items()} == {
        "cluster-ready": "service_completed_successfully"
    }
    twin = services[name.removeprefix("cluster-")]
    assert service["build"] == twin["build"] and command_argv(service) == command_argv(twin)
    # And it has its twin's variables, plus the queue type and (for a worker) the management URL list
    cluster_only = {"PROJ_QUEUE_TYPE", "PROJ_MANAGEMENT_URL"}
    assert set(env) - cluster_only == set(environment(resolved["services"][twin_name(name)])) - cluster_only
    # And its management API list names every node's, in the broker list's order, with the same account
    broker_urls = env["CELERY_BROKER_URL"].split(";")
    assert env["PROJ_MANAGEMENT_URL"].split(";") == [management_url_from_broker(url) for url in broker_urls]


def test_compose_cluster_ready_waits_for_three_running_nodes_once_they_are_healthy(services, resolved):
    # Given the cluster's one-shot gate as written and as resolved
    service, env = services["cluster-ready"], environment(resolved["services"]["cluster-ready"])

    # Then it starts once every node answers its healthcheck, from the nodes' image (their own CLI)
    assert {n: d["condition"] for n, d in service["depends_on"].items()} == dict.fromkeys(
        CLUSTER_NODES, "service_healthy"
    )
    assert service["image"] == services["rabbitmq1"]["image"]
    # And it runs once (never restarted), with the cluster's cookie, and exits 0 only once rabbitmq1
    # counts the three nodes running (a node answers `ping` before it has joined the others)
    assert service["restart"] == "no"
    assert env["RABBITMQ_ERLANG_COOKIE"] == TEST_ENV["RABBITMQ_ERLANG_COOKIE"]
    script = " ".join(service["entrypoint"])
    assert "rabbitmqctl -q -n rabbit@rabbitmq1 await_startup" in script, script
    assert script.endswith("exec rabbitmqctl -q -n rabbit@rabbitmq1 await_online_nodes 3 --timeout 300"), script
    # And it publishes nothing
    assert not service.get("ports")


def twin_name(name: str) -> str:
    return name.removeprefix("cluster-")


def test_compose_cluster_flower_reads_the_first_management_api_that_answers_behind_basic_auth(resolved):
    # Given the cluster's Flower as resolved
    env = environment(resolved["services"]["cluster-flower"])

    # Then its management API list is every node's, as its broker list implies, so Flower's Broker page
    # still shows task_queue with rabbitmq1 down; and it needs a login
    assert env["PROJ_MANAGEMENT_URL"] == ";".join(
        management_url_from_broker(url) for url in env["CELERY_BROKER_URL"].split(";")
    )
    assert env["FLOWER_BASIC_AUTH"] == TEST_ENV["FLOWER_BASIC_AUTH"]


def test_compose_cluster_nodes_run_rabbitmq_4_3_and_give_up_a_silent_node_within_15_s_ticks(resolved):
    # Given each node's image and Erlang arguments as resolved
    for name in CLUSTER_NODES:
        service = resolved["services"][name]
        args = environment(service)["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()
        pairs = {(args[i], args[i + 1]): args[i + 2] for i in range(len(args) - 2) if args[i].startswith("-")}

        # Then the node is RabbitMQ 4.3, whose metadata store (Khepri) has no partition handling: the
        # setting, ignored by 4.3, is not there to suggest that a minority node pauses
        assert service["image"] == "rabbitmq:4.3-management"
        assert ("-rabbit", "cluster_partition_handling") not in pairs
        # And a node that stops answering is given up after 11-19 s, not Erlang's 45-75 s
        assert pairs[("-kernel", "net_ticktime")] == "15"


@pytest.mark.parametrize("name", ["worker", "cluster-worker"])
def test_compose_workers_are_healthy_only_while_proj_health_says_so_for_their_own_name(services, name):
    # Given a worker's healthcheck
    check = services[name]["healthcheck"]

    # Then it is `proj health` for this container's worker (worker@%h: %h is the container's host name),
    # run by a shell so that $(hostname) is expanded ($$ in the file: compose leaves one $)
    assert check["test"] == ["CMD-SHELL", "proj health --worker worker@$$(hostname) --timeout 5"]
    assert option_value(command_argv(services[name]), "-n") == ["worker@%h"]
    # And it gives the command time to answer, and a starting worker time to connect
    assert duration_seconds(check["timeout"]) > 5
    assert duration_seconds(check["start_period"]) >= 30 and check["retries"] >= 3


# -- the workers and Flower ----------------------------------------------------------------------


def test_compose_worker_is_one_service_that_scales(services):
    # Given the compose services
    # Then there is one worker service (scaled with --scale worker=N), not a fixed worker1/worker2
    assert "worker" in services and not {"worker1", "worker2"} & set(services)
    worker = services["worker"]
    # And nothing in it would clash between replicas: no container name, no published host port
    assert "container_name" not in worker and not worker.get("ports")
    # And each replica has its own Celery name: the container's host name
    assert option_value(command_argv(worker), "-n", "--hostname") == ["worker@%h"]


@pytest.mark.parametrize("name", [*APP_SERVICES, "rabbitmq"])
def test_compose_services_restart_by_themselves(services, name):
    # Given a service
    # Then it comes back after a crash or a reboot of the engine
    assert services[name].get("restart") in RESTART_POLICIES


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_workers_and_flower_start_only_once_the_broker_is_healthy(services, name):
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
def test_compose_workers_and_flower_reach_the_broker_by_its_service_name_with_the_env_account(resolved, name):
    # Given a worker (or Flower) as compose resolves it
    env = environment(resolved["services"][name])

    # Then Celery's own variable points it at the rabbitmq service, with the account from .env
    user, password = TEST_ENV["RABBITMQ_DEFAULT_USER"], TEST_ENV["RABBITMQ_DEFAULT_PASS"]
    assert env["CELERY_BROKER_URL"] == f"amqp://{user}:{password}@rabbitmq:5672//"


def test_compose_flower_needs_basic_auth_and_reads_the_management_api_the_broker_url_implies(services, resolved):
    # Given Flower's environment as written and as resolved
    written, env = environment(services["flower"]), environment(resolved["services"]["flower"])

    # Then its password comes from .env, with no default to fall back on
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", written["FLOWER_BASIC_AUTH"]), written["FLOWER_BASIC_AUTH"]
    assert env["FLOWER_BASIC_AUTH"] == TEST_ENV["FLOWER_BASIC_AUTH"]
    # And its management API is the one derived from its broker URL (same host, account, port 15672)
    assert env["PROJ_MANAGEMENT_URL"] == management_url_from_broker(env["CELERY_BROKER_URL"])


def test_compose_workers_get_time_for_a_warm_shutdown_signalled_to_celerys_main_process_only(services):
    # Given the worker
    worker = services["worker"]

    # Then docker stop sends SIGTERM, Celery's warm shutdown, and waits before SIGKILL
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert duration_seconds(worker.get("stop_grace_period", "10s")) >= MIN_GRACE_SECONDS
    # And PID 1 is an init that signals Celery's main process, not its pool process running the task
    assert worker.get("init") is True


# -- the compose file, validated -----------------------------------------------------------------


def test_compose_config_accepts_the_file_with_the_committed_env_example(tmp_path):
    # Given .env.example copied to .env, as the README says
    # When a real compose implementation validates the file (statically: no engine is needed)
    result = run_compose(tmp_path, "config", "-q", env_file=ENV_EXAMPLE)

    # Then it finds nothing wrong
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", REQUIRED_VARIABLES)
def test_compose_config_refuses_the_file_when_env_lacks_a_credential_and_names_it(tmp_path, missing):
    # Given a .env without one of the credentials
    env = {k: v for k, v in TEST_ENV.items() if k != missing}

    # When compose validates the file
    result = run_compose(tmp_path, "config", "-q", env_file=env)

    # Then it stops and says which variable to set
    assert result.returncode != 0
    assert missing in result.stderr


def compose_schema() -> dict:
    for candidate in COMPOSE_SCHEMA_CANDIDATES:
        if Path(candidate).exists():
            return json.loads(Path(candidate).read_text())
    pytest.skip(
        "the Compose specification's schema is not installed (Debian's docker-compose ships it): "
        "./dev.sh test installs docker-compose"
    )


def test_compose_file_as_written_and_as_resolved_is_valid_against_the_compose_specification_schema(compose, resolved):
    import jsonschema

    # Given the Compose specification's JSON schema
    schema = compose_schema()
    # Its $schema names draft 2019-09 by an address jsonschema does not know: say it outright.
    validator = jsonschema.Draft201909Validator(schema)

    # Then both the file as written and compose's resolved form are valid
    for name, document in (("written", compose), ("resolved", resolved)):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


# -- compose and the Procfile agree --------------------------------------------------------------


@pytest.mark.parametrize("name", PROCFILE_WORKERS)
def test_compose_worker_runs_the_procfile_worker_command_but_for_its_name(services, procfile, name):
    # Given the worker in both files
    in_compose, in_procfile = command_argv(services["worker"]), procfile[name]

    # Then both run the same celery command; only the worker's name differs
    assert without_options(in_compose, "-n") == without_options(in_procfile, "-n")
    assert option_value(in_procfile, "-n") == [f"{name}@%h"]


def test_compose_flower_runs_the_procfile_command_but_listens_on_all_container_interfaces(services, procfile):
    # Given Flower's command in both files (the Procfile with its default ports)
    in_compose, in_procfile = command_argv(services["flower"]), procfile["flower"]

    # Then they differ only in the address: the host's loopback for honcho, every interface of
    # the container for compose (whose published port is on the host's loopback)
    assert without_options(in_compose, "--address") == without_options(in_procfile, "--address")
    assert option_value(in_procfile, "--address") == ["127.0.0.1"]
    assert option_value(in_compose, "--address") == ["0.0.0.0"]


@pytest.mark.parametrize(("compose_name", "procfile_name"), [("worker", "worker1"), ("flower", "flower")])
def test_compose_and_procfile_give_workers_and_flower_the_same_variables(services, compose_name, procfile_name):
    # Given the variables each file sets for the process
    in_compose = set(environment(services[compose_name]))
    in_procfile = set(procfile_processes()[procfile_name][0])

    # Then they are the same, but for Flower's password (in .env for the Procfile, optional on the loopback)
    assert in_compose - {"FLOWER_BASIC_AUTH"} == in_procfile


def test_dockerfile_default_command_is_the_compose_worker_command(services):
    # Given the image's CMD
    cmd = json.loads(dict(dockerfile_instructions()).get("CMD", "[]"))

    # Then a bare `docker run` runs the same worker as compose
    assert cmd == command_argv(services["worker"])


# -- the Procfile --------------------------------------------------------------------------------


def test_procfile_runs_the_private_broker_two_workers_and_flower(procfile):
    # Given the Procfile honcho reads
    # Then it has the broker, the tutorial's two workers and Flower
    assert list(procfile) == ["broker", "worker1", "worker2", "flower"]
    # And the broker is the private node in the foreground, its files in .rabbitmq by default
    broker = procfile["broker"]
    assert broker[:4] == ["proj", "broker", "start", "--foreground"]
    assert option_value(broker, "--data-dir") == [".rabbitmq"]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"PROJ_BROKER_PORT": "5673", "PROJ_MANAGEMENT_PORT": "15673", "PROJ_FLOWER_PORT": "5556"}],
    ids=["defaults", "ports-from-env"],
)
def test_procfile_workers_and_flower_always_use_the_node_the_procfile_starts(overrides):
    # Given the Procfile expanded with the default ports, or with ports from .env
    processes = procfile_processes(overrides)
    _, broker = processes["broker"]
    port = int(option_value(broker, "--port")[0])
    management_port = int(option_value(broker, "--management-port")[0])

    # Then the node's ports are the variables' (or the tutorial's defaults)
    assert port == int(overrides.get("PROJ_BROKER_PORT", 5672))
    assert management_port == int(overrides.get("PROJ_MANAGEMENT_PORT", 15672))
    # And both workers and Flower use that node, whatever CELERY_BROKER_URL the shell had
    for name in (*PROCFILE_WORKERS, "flower"):
        env, argv = processes[name]
        assert env["CELERY_BROKER_URL"] == f"amqp://guest:guest@127.0.0.1:{port}//", name
        assert argv[:3] == ["celery", "-A", "proj"]
    # And Flower reads that node's management API, and listens on the loopback on its port
    flower_env, flower = processes["flower"]
    assert flower_env["PROJ_MANAGEMENT_URL"] == f"http://guest:guest@127.0.0.1:{management_port}/api/"
    assert option_value(flower, "--port") == [overrides.get("PROJ_FLOWER_PORT", "5555")]


@pytest.mark.parametrize("name", PROCFILE_WORKERS)
def test_procfile_worker_is_one_named_celery_worker_with_the_configured_concurrency(procfile, name):
    # Given a worker of the Procfile
    argv = procfile[name]

    # Then it is a celery worker of proj, named after its process type, logging at INFO
    assert argv[:4] == ["celery", "-A", "proj", "worker"]
    assert option_value(argv, "-n") == [f"{name}@%h"]
    assert option_value(argv, "-l") == ["INFO"]
    # And it leaves the concurrency to proj.config (one process: one tutorial worker)
    assert not {"-c", "--concurrency"} & set(argv) and not any(a.startswith("--concurrency=") for a in argv)


def test_make_up_runs_the_procfile_with_the_env_file():
    # Given the Makefile, with this test's virtualenv
    venv = Path(sys.executable).parent.parent

    # When make says what `make up` would run (-n: print, do not run)
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO_ROOT), "up", f"PROJ_VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=COMPOSE_CLI_TIMEOUT,
    )

    # Then it is the Procfile runner (honcho start, stopping in order), reading .env
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if not line.startswith("make")]
    assert commands == ['exec python -m proj.harness.stack --env ".env"'], result.stdout


@pytest.mark.parametrize("target", ["demo", "test"])
def test_make_demo_and_test_are_dev_sh(target):
    # When make says what the target would run
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO_ROOT), target], capture_output=True, text=True, timeout=COMPOSE_CLI_TIMEOUT
    )

    # Then it is ./dev.sh's own command
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if not line.startswith("make")] == [f"./dev.sh {target}"]


# -- .env.example and the README -----------------------------------------------------------------


def test_env_example_names_every_variable_compose_requires_with_placeholder_values():
    # Given .env.example
    values = env_file_values(ENV_EXAMPLE)

    # Then it has every credential compose requires, each an obvious placeholder to change
    assert set(REQUIRED_VARIABLES) <= set(values)
    assert "change-me" in values["RABBITMQ_DEFAULT_PASS"] and "change-me" in values["FLOWER_BASIC_AUTH"]
    # And the cluster's Erlang cookie too, long enough for Erlang (20 characters at least)
    assert "change-me" in values["RABBITMQ_ERLANG_COOKIE"] and len(values["RABBITMQ_ERLANG_COOKIE"]) >= 20
    assert values["RABBITMQ_DEFAULT_USER"] != "guest"


def test_readme_compose_image_is_the_compose_files():
    # Given every rabbitmq image the README names
    named = set(re.findall(r"rabbitmq:\d[\w.-]*", README.read_text()))

    # Then it is the one docker-compose.yml runs
    assert named <= {yaml.safe_load(COMPOSE_FILE.read_text())["services"]["rabbitmq"]["image"]}, named


def readme_compose_commands() -> list[str]:
    """Every `docker compose ...` / `docker-compose ...` command the README shows (inline or in a block)."""
    text = README.read_text()
    is_command = re.compile(r"(^|\s)docker( compose|-compose)\s")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M))
    return [re.sub(r"\s+#.*$", "", c).strip() for c in lines + inline if is_command.search(c)]


def global_options(args: list[str]) -> list[str]:
    """A compose command line's options before its subcommand: ``-f FILE -p NAME`` of ``-f FILE -p NAME up -d``."""
    with_value = {"-f", "--file", "-p", "--project-name", "--env-file", "--profile", "--project-directory"}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in with_value else 1
    return args[:i]


def test_readme_compose_commands_work_with_the_compose_file_and_env_example(services, tmp_path):
    # Given each compose command in the README
    commands = readme_compose_commands()
    assert commands, "the README shows no docker compose command"
    for command in commands:
        words = shlex.split(command)
        first = next(i for i, w in enumerate(words) if w in ("docker", "docker-compose"))
        assignments = dict(w.split("=", 1) for w in words[:first] if "=" in w)
        args = words[words.index("compose") + 1 :] if "compose" in words else words[words.index("docker-compose") + 1 :]
        # The files it names with -f before its subcommand (docker-compose.yml when none), each one of the repository's
        files = tuple(REPO_ROOT / f for f in option_value(global_options(args), "-f", "--file")) or (COMPOSE_FILE,)
        assert set(files) <= {COMPOSE_FILE, LOCAL_COMPOSE_FILE} and files[0] == COMPOSE_FILE, command

        # Then the services it scales exist, and so do the variables it sets
        for scale in option_value(args, "--scale"):
            assert scale.split("=")[0] in services, command
        for name in assignments:
            assert any("${" + name in file.read_text() for file in files), (command, name)

        # And with .env.example as .env, compose accepts the files under those variables
        result = run_compose(tmp_path, "config", "-q", env_file=ENV_EXAMPLE, files=files, **assignments)
        assert result.returncode == 0, (command, result.stderr)


# -- the image -----------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_on_python_3_11_and_runs_a_worker_as_a_non_root_user():
    # Given the Dockerfile's instructions
    instructions = dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in instructions:
        by_keyword.setdefault(keyword, []).append(args)

    # Then the image is based on Python 3.11 (the default of its BASE argument)
    assert re.fullmatch(r"python:3\.11([.-]\S*)?", base_image()), by_keyword["FROM"]
    # And it installs the package itself (not only its requirements)
    assert any(re.search(r"\bpip install( [^ ]+)* \.(\s|$)", run) for run in by_keyword["RUN"]), by_keyword["RUN"]
    # And it runs as a user other than root
    assert "USER" in by_keyword and by_keyword["USER"][-1].split(":")[0] not in ("root", "0")
    # And its default command is a celery worker of proj
    cmd = json.loads(by_keyword["CMD"][-1])
    assert cmd[:4] == ["celery", "-A", "proj", "worker"]


def base_image() -> str:
    """The image the Dockerfile's FROM names, its ``${ARG}`` replaced with the ARG's default."""
    defaults: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and "=" in args:
            name, default = args.split("=", 1)
            defaults.setdefault(name, default)
        if keyword == "FROM":
            return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], args.split()[0])
    raise AssertionError("the Dockerfile has no FROM")


def test_dockerfile_takes_a_ca_bundle_only_as_a_build_secret_of_the_pip_install():
    # Given the Dockerfile's instructions
    instructions = dockerfile_instructions()

    # Then no instruction copies or adds a certificate into the image
    for keyword, args in instructions:
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.(crt|pem)\b|cert", args), args
    # And the one RUN that mounts the secret is the pip install, which trusts it only when given
    mounting = [args for keyword, args in instructions if keyword == "RUN" and "--mount=type=secret" in args]
    assert len(mounting) == 1, mounting
    assert "id=ca-bundle" in mounting[0] and "PIP_CERT=/run/secrets/ca-bundle" in mounting[0]
    assert re.search(r"\bpip install \.$", mounting[0]), mounting[0]


def test_dockerfile_puts_flowerconfig_where_the_containers_run():
    # Given the Dockerfile's instructions, in order
    workdir, copied_to = "/", {}
    for keyword, args in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = str(Path(workdir) / args)
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                copied_to[source] = str(Path(workdir) / dest / Path(source).name) if dest.endswith("/") else dest

    # Then flowerconfig.py lands in the folder the containers start in (Flower reads it from there)
    dest = copied_to.get("flowerconfig.py")
    assert dest is not None, copied_to
    assert str(Path(workdir) / dest) == str(Path(workdir) / "flowerconfig.py")


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.replace("**/", "")):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_local_state_and_secrets_out_and_what_the_image_needs_in():
    # Given the .dockerignore patterns
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]

    # Then git history, virtualenvs, the private node's data dir and .env files stay out
    for path in (".git", ".venv", ".rabbitmq", ".env", ".env.local", ".env.example"):
        assert dockerignored(path, patterns), path
    # And everything the Dockerfile copies is in
    for path in ("pyproject.toml", "README.md", "proj", "flowerconfig.py"):
        assert not dockerignored(path, patterns), path


# -- docker-compose.local.yml: the same stack on local images -------------------------------------


@pytest.fixture(scope="module")
def resolved_local(tmp_path_factory) -> dict:
    """docker-compose.yml with docker-compose.local.yml over it, as the compose CLI resolves them."""
    result = run_compose(
        tmp_path_factory.mktemp("compose-local"),
        "config",
        env_file=TEST_ENV,
        files=(COMPOSE_FILE, LOCAL_COMPOSE_FILE),
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_local_override_changes_only_the_images_the_workers_pace_and_prefetch_and_the_nodes_firewall(
    resolved, resolved_local
):
    # Given the users' stack and the local one, both resolved
    base, local = resolved["services"], resolved_local["services"]

    # Then the local stack has the same services
    assert set(local) == set(base)
    for name, service in local.items():
        # And each runs a local image (built by ./dev.sh images, no registry), never the published ones
        assert service["image"].startswith("proj-local/"), (name, service["image"])
        assert service["image"] != base[name].get("image")
        # And but for the image and the two pass-through variables, each service is the users' own
        env = environment(service)
        extra = {k: env.pop(k) for k in list(env) if k not in environment(base[name])}
        assert set(extra) <= set(LOCAL_APP_VARIABLES), (name, extra)
        assert extra == {k: LOCAL_APP_VARIABLES[k] for k in extra}, (name, extra)
        # And the cluster's nodes may change their own firewall, for the partition tests; nothing else may
        if name in CLUSTER_NODES:
            assert service.pop("cap_add") == ["NET_ADMIN"], name
        assert "cap_add" not in base[name] and "cap_add" not in service, name
        strip = ("image", "environment")
        assert {k: v for k, v in service.items() if k not in strip} == {
            k: v for k, v in base[name].items() if k not in strip
        }, name
        assert env == environment(base[name]), name


def test_local_override_runs_the_app_image_for_workers_and_flower_and_the_rabbitmq_image_for_brokers(resolved_local):
    # Given the local stack's images
    images = {name: service["image"] for name, service in resolved_local["services"].items()}

    # Then every app service runs the app image built from ./Dockerfile, every broker the local RabbitMQ
    for name in (*APP_SERVICES, *CLUSTER_APP_SERVICES):
        assert images[name] == "proj-local/app:local", name
    for name in ("rabbitmq", *CLUSTER_NODES, "cluster-ready"):
        assert images[name] == "proj-local/rabbitmq:4.3", name
