"""One compose project of docker-compose.yml + docker-compose.local.yml, and the cluster faults on its nodes.

Usage::

    project = ComposeProject(workdir, variables={"PROJ_NODE1_PORT": "..."}, profiles=("cluster",))
    project.compose("up", "-d", "rabbitmq1", "rabbitmq2", "rabbitmq3")
    faults = NodeFaults(project)
    faults.freeze("rabbitmq2"); faults.thaw("rabbitmq2")
    project.down()                      # down -v --remove-orphans: containers, network, volumes

A project has a name of its own (``-p``), its own ``--env-file`` with fresh credentials and cookie, and
none of the caller's RABBITMQ_*/FLOWER_*/COMPOSE_* variables; an extra override file (``override=``)
adds services or settings for one run. Everything runs through the ``docker`` and compose CLIs, with a
timeout; a project ends only what it created (its own containers, by compose's project label).

The node faults, one container each (``docker kill`` and ``start``, ``pause`` and ``unpause``,
``network disconnect`` and ``connect``), and a partition between nodes only: iptables rules inside the
node's container dropping the other nodes' addresses, while clients (workers, the host's published
ports) still reach it. That needs ``cap_add: [NET_ADMIN]`` and iptables in the image: the local images
have both (docker-compose.local.yml, docker/rabbitmq/Dockerfile).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import yaml
from kombu import Connection

from proj import config
from proj.chaos import ledger
from proj.management import Management
from proj.rabbit.node import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_NAMES = ("docker-compose.yml", "docker-compose.local.yml")
#: Copies of the repository's compose files, packaged with proj for an installed proj that has no repository
#: (``proj chaos --compose`` from a wheel); tests/test_packaging.py checks they match the repository's.
PACKAGED_COMPOSE_DIR = Path(__file__).resolve().parent / "compose_files"


def find_compose_files() -> tuple[Path, ...]:
    """The repository's compose files in a source checkout, else the copies packaged with proj."""
    for folder in (REPO_ROOT, PACKAGED_COMPOSE_DIR):
        files = tuple(folder / name for name in COMPOSE_NAMES)
        if all(file.is_file() for file in files):
            return files
    return tuple(PACKAGED_COMPOSE_DIR / name for name in COMPOSE_NAMES)  # missing: compose names them


COMPOSE_FILES = find_compose_files()
#: The local images the compose files need (./dev.sh images builds them).
IMAGES = ("proj-local/rabbitmq:4.3", "proj-local/app:local")
#: Seconds any one docker or compose command may take.
COMMAND_TIMEOUT = 180.0
#: The cluster profile's nodes, by compose service name (each also its host name).
CLUSTER_NODES = ("rabbitmq1", "rabbitmq2", "rabbitmq3")


class ComposeError(RuntimeError):
    """A docker or compose command failed; the message says which and why."""


def docker(*args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
    """``docker ARGS``: its stdout; ComposeError with its stderr when it fails and ``check``."""
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ComposeError(f"docker {' '.join(args)}: no answer within {timeout:g} s") from exc
    if check and result.returncode != 0:
        raise ComposeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def compose_cli() -> list[str] | None:
    """``docker compose`` (v2) or ``docker-compose`` (Debian's 1.29), whichever is installed, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def why_containers_cannot_run(images: tuple[str, ...] = IMAGES, compose: bool = True) -> str | None:
    """None when an engine, the local ``images`` (and, with ``compose``, a compose CLI) are all there; else
    what is missing and what to do."""
    if not shutil.which("docker"):
        return "no docker CLI: ./dev.sh images installs docker.io"
    if compose and compose_cli() is None:
        return "no compose CLI (docker compose or docker-compose): ./dev.sh images installs docker-compose"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker engine answers ({last}): ./dev.sh images starts one (needs root)"
    missing = [i for i in images if subprocess.run(["docker", "image", "inspect", i], capture_output=True).returncode]
    if missing:
        return (
            f"local images missing ({', '.join(missing)}): ./dev.sh images builds them (needs root and a Debian mirror)"
        )
    return None


class ComposeProject:
    """A compose project of the repository's compose files (and an override of its own), on its own name."""

    def __init__(
        self,
        workdir: Path,
        variables: dict[str, str] | None = None,
        profiles: tuple[str, ...] = (),
        name_prefix: str = "proj",
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.project = f"{name_prefix}{os.getpid()}{secrets.token_hex(3)}"
        self.user, self.password = "compose-test", secrets.token_urlsafe(16)
        self.flower_auth = ("flower", secrets.token_urlsafe(16))
        self.env_file = self.workdir / "compose.env"
        self.env_file.write_text(
            f"RABBITMQ_DEFAULT_USER={self.user}\n"
            f"RABBITMQ_DEFAULT_PASS={self.password}\n"
            f"RABBITMQ_ERLANG_COOKIE={secrets.token_urlsafe(24)}\n"
            f"FLOWER_BASIC_AUTH={':'.join(self.flower_auth)}\n"
        )
        self.variables = dict(variables or {})
        self.profiles = profiles
        self.override: Path | None = None
        self.cli = compose_cli()
        if self.cli is None:
            raise ComposeError("no compose CLI (docker compose or docker-compose): ./dev.sh images installs it")

    @property
    def network(self) -> str:
        """The project's default network, where every service is."""
        return f"{self.project}_default"

    def write_override(self, document: dict) -> Path:
        """An extra compose file, applied after docker-compose.local.yml from now on."""
        self.override = self.workdir / "compose.override.yml"
        self.override.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.override

    def files(self) -> list[str]:
        files = [*COMPOSE_FILES, *([self.override] if self.override else [])]
        return [arg for file in files for arg in ("-f", str(file))]

    def compose(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "FLOWER_", "COMPOSE_"))}
        env.update(self.variables)
        profiles = [arg for profile in self.profiles for arg in ("--profile", profile)]
        argv = [*self.cli, "-p", self.project, "--env-file", str(self.env_file), *self.files(), *profiles, *args]
        try:
            result = subprocess.run(
                argv, cwd=COMPOSE_FILES[0].parent, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise ComposeError(f"compose {' '.join(args)}: no answer within {timeout:g} s") from exc
        if check and result.returncode != 0:
            raise ComposeError(f"compose {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result

    def resolved(self) -> dict:
        """The compose files as compose resolves them (``config``) with this project's variables."""
        return yaml.safe_load(self.compose("config").stdout)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "20", check=False)

    def save_logs(self, path: Path) -> Path:
        """Every container's log, timestamped, into ``path`` (before ``down`` removes them)."""
        result = self.compose("logs", "--no-color", "--timestamps", check=False, timeout=120)
        path.write_text(result.stdout + result.stderr)
        return path

    def tail(self, lines: int = 40) -> str:
        result = self.compose("logs", "--no-color", f"--tail={lines}", check=False)
        return result.stdout + result.stderr

    # -- containers ------------------------------------------------------------------------------

    def containers(self, service: str) -> list[str]:
        """The service's containers, running or not (by compose's labels)."""
        labels = [f"label=com.docker.compose.{k}={v}" for k, v in (("project", self.project), ("service", service))]
        return sorted(docker("ps", "-aq", "--no-trunc", *(a for label in labels for a in ("--filter", label))).split())

    def container(self, service: str) -> str:
        (container,) = self.containers(service)
        return container

    def inspect(self, container: str, template: str) -> str:
        return docker("inspect", "-f", template, container).strip()

    def health(self, container: str) -> str:
        """The container's health status (starting, healthy, unhealthy), or '' without a healthcheck."""
        return self.inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def state(self, container: str) -> str:
        """running, paused, exited..."""
        return self.inspect(container, "{{.State.Status}}")

    def hostname(self, container: str) -> str:
        return self.inspect(container, "{{.Config.Hostname}}")

    def address(self, container: str) -> str:
        """The container's address on the project's network ('' when it is not on it)."""
        return self.inspect(
            container, f'{{{{with index .NetworkSettings.Networks "{self.network}"}}}}{{{{.IPAddress}}}}{{{{end}}}}'
        )

    def logs(self, container: str) -> str:
        result = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr


class NodeFaults:
    """The faults a node of the cluster profile can meet, each on one node's container, and their healing."""

    #: What each fault does, and what heals it.
    KINDS = {
        "crash": ("docker kill (SIGKILL: no shutdown)", "docker start"),
        "freeze": ("docker pause (frozen: its TCP connections stay open and silent)", "docker unpause"),
        "isolate": ("docker network disconnect (cut off from everything)", "docker network connect"),
        "partition": ("iptables in the node drops the other nodes (clients still reach it)", "iptables -F"),
    }

    def __init__(self, project: ComposeProject, nodes: tuple[str, ...] = CLUSTER_NODES):
        self.project = project
        self.nodes = nodes

    def inject(self, kind: str, node: str) -> None:
        getattr(self, kind)(node)

    def heal(self, kind: str, node: str) -> None:
        {"crash": self.restart, "freeze": self.thaw, "isolate": self.reconnect, "partition": self.unpartition}[kind](
            node
        )

    def crash(self, node: str) -> None:
        docker("kill", self.project.container(node))

    def restart(self, node: str) -> None:
        docker("start", self.project.container(node))

    def freeze(self, node: str) -> None:
        docker("pause", self.project.container(node))

    def thaw(self, node: str) -> None:
        docker("unpause", self.project.container(node))

    def isolate(self, node: str) -> None:
        docker("network", "disconnect", self.project.network, self.project.container(node))

    def reconnect(self, node: str) -> None:
        # The service's name is the node's host name in the other nodes' Erlang node names: it must resolve again.
        docker("network", "connect", "--alias", node, self.project.network, self.project.container(node))

    def partition(self, node: str) -> None:
        """Drop every packet between ``node`` and the other nodes, inside ``node``: both directions."""
        container = self.project.container(node)
        for other in self.nodes:
            if other == node:
                continue
            address = self.project.address(self.project.container(other))
            if not address:
                raise ComposeError(f"{other} has no address on {self.project.network}: cannot partition from it")
            self.iptables(container, "-I", "INPUT", "-s", address, "-j", "DROP")
            self.iptables(container, "-I", "OUTPUT", "-d", address, "-j", "DROP")

    def unpartition(self, node: str) -> None:
        container = self.project.container(node)
        self.iptables(container, "-F", "INPUT")
        self.iptables(container, "-F", "OUTPUT")

    def iptables(self, container: str, *args: str) -> None:
        """iptables in the container's network namespace: the image's own (NET_ADMIN), else, as root on the
        engine's host, the host's iptables entered into that namespace (an image built before iptables was
        added to docker/rabbitmq/Dockerfile: the local images' tags are shared by every checkout)."""
        has_own = docker("exec", container, "sh", "-c", "command -v iptables", check=False).strip()
        if has_own:
            docker("exec", container, "iptables", *args)
            return
        if os.geteuid() != 0 or not shutil.which("nsenter") or not shutil.which("iptables"):
            raise ComposeError(
                "the node image has no iptables and this is not root with nsenter and iptables: "
                "./dev.sh images rebuilds proj-local/rabbitmq:4.3 with it"
            )
        pid = self.project.inspect(container, "{{.State.Pid}}")
        argv = ["nsenter", "-t", pid, "-n", "iptables", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if result.returncode != 0:
            raise ComposeError(f"{' '.join(argv)}: {result.stderr.strip()}")


class ComposeCluster(ComposeProject):
    """The cluster profile: three nodes on free host ports, and ``workers`` worker containers spread over them.

    The workers are the compose file's ``cluster-worker`` as compose resolves it, one service each
    (``cluster-worker-1``...) in this project's override, whose only differences are the failover list's
    order (worker N starts at node N, round the nodes) and, with ``ledger_dir``, the ledger
    (``PROJ_LEDGER`` on a bind mount, ``--include proj.chaos.ledger_hook`` on the worker's command line)
    every worker writes its task starts and finishes to.
    """

    def __init__(
        self,
        workdir: Path,
        workers: int = 3,
        seconds_per_dot: float = 0.05,
        ledger_dir: Path | None = None,
        name_prefix: str = "projcluster",
    ):
        ports: list[int] = []
        for _ in range(2 * len(CLUSTER_NODES) + 1):
            ports.append(free_port(avoid=tuple(ports)))
        self.ports = {n: ports[i] for i, n in enumerate(CLUSTER_NODES)}
        self.management_ports = {n: ports[len(CLUSTER_NODES) + i] for i, n in enumerate(CLUSTER_NODES)}
        variables = {f"PROJ_NODE{i}_PORT": str(self.ports[n]) for i, n in enumerate(CLUSTER_NODES, 1)}
        variables |= {
            f"PROJ_NODE{i}_MANAGEMENT_PORT": str(self.management_ports[n]) for i, n in enumerate(CLUSTER_NODES, 1)
        }
        variables |= {"PROJ_CLUSTER_FLOWER_PORT": str(ports[-1]), "PROJ_SECONDS_PER_DOT": str(seconds_per_dot)}
        super().__init__(workdir, variables=variables, profiles=("cluster",), name_prefix=name_prefix)
        self.flower_port = ports[-1]
        self.workers = workers
        self.ledger_dir = Path(ledger_dir) if ledger_dir is not None else None

    # -- where the nodes are, from the host ------------------------------------------------------

    def node_url(self, node: str) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.ports[node]}//"

    def failover_url(self, first: int = 1) -> str:
        """Every node's published port, ``;``-separated, starting at node ``first`` (1-based)."""
        i = (first - 1) % len(CLUSTER_NODES)
        order = CLUSTER_NODES[i:] + CLUSTER_NODES[:i]
        return ";".join(self.node_url(n) for n in order)

    def management_url(self, node: str | None = None) -> str:
        """One node's management API (published port), or every node's, ``;``-separated."""
        nodes = (node,) if node else CLUSTER_NODES
        return ";".join(f"http://{self.user}:{self.password}@127.0.0.1:{self.management_ports[n]}/api/" for n in nodes)

    def management(self, node: str | None = None):
        return Management(self.management_url(node), timeout=3)

    # -- the workers -----------------------------------------------------------------------------

    def worker_services(self) -> list[str]:
        return [f"cluster-worker-{i}" for i in range(1, self.workers + 1)]

    def write_worker_override(self) -> None:
        """The override with one service per worker, each the resolved ``cluster-worker`` but for its broker list."""
        resolved = self.resolved()["services"]["cluster-worker"]
        services = {}
        for i, name in enumerate(self.worker_services(), 1):
            service = json_copy(resolved)
            service.pop("build", None)  # the local image, as built by ./dev.sh images
            env = service.setdefault("environment", {})
            env["CELERY_BROKER_URL"] = self._container_failover_url(env["CELERY_BROKER_URL"], i)
            if self.ledger_dir is not None:
                # the worker loads the ledger's hook (proj/chaos/ledger_hook.py, in the app image's package)
                service["command"] = [*service["command"], *ledger.WORKER_ARGS]
                env["PROJ_LEDGER"] = "/ledger/ledger.sqlite"
                service["volumes"] = [*service.get("volumes", []), f"{self.ledger_dir}:/ledger"]
            services[name] = service
        self.write_override({"services": services})

    @staticmethod
    def _container_failover_url(url_list: str, first: int) -> str:
        urls = url_list.split(";")
        i = (first - 1) % len(urls)
        return ";".join(urls[i:] + urls[:i])

    def worker_containers(self) -> dict[str, str]:
        """Worker service -> its container."""
        return {s: c for s in self.worker_services() for c in self.containers(s)}

    def worker_hosts(self) -> dict[str, str]:
        """A worker container's host name (its Celery name is worker@HOST, its ledger rows say HOST) -> service."""
        return {self.hostname(c): s for s, c in self.worker_containers().items()}

    # -- up and whole ------------------------------------------------------------------------------

    def up(self, timeout: float = 300.0) -> None:
        """Nodes and workers in one ``up``, as a user runs it: compose's own order does the rest.

        Compose starts the nodes, waits for their healthchecks, runs ``cluster-ready`` (a one-shot that
        exits once rabbitmq1 counts three running nodes: a node's ``rabbitmq-diagnostics ping`` passes
        before it has joined the others) and only then the workers, so the first worker to declare
        task_queue makes it a quorum queue on all three nodes. Then: until :meth:`is_whole`.
        """
        if self.ledger_dir is not None:
            prepare_ledger_dir(self.ledger_dir)
        self.write_worker_override()
        self.compose("up", "-d", "--no-build", *CLUSTER_NODES, *self.worker_services(), timeout=timeout)
        self.wait_whole(timeout)

    def node_view(self, node: str) -> dict | None:
        """What ``node`` says of the cluster: {running: [node names], partitions: [...]}, None if it does not answer."""
        try:
            nodes = self.management(node).request("GET", "nodes") or []
        except Exception:
            return None
        return {
            "running": sorted(n["name"] for n in nodes if n.get("running")),
            "partitions": sorted({p for n in nodes for p in n.get("partitions") or []}),
        }

    def is_whole(self, workers: bool = True) -> bool:
        """Every node runs and sees all three running with no partition, and (``workers``) every worker
        consumes task_queue."""
        expected = sorted(f"rabbit@{n}" for n in CLUSTER_NODES)
        for node in CLUSTER_NODES:
            view = self.node_view(node)
            if view is None or view["running"] != expected or view["partitions"]:
                return False
        return not workers or self.consumers() == self.workers

    def consumers_by_node(self) -> dict[str, list[str]]:
        """Node -> the worker host names consuming task_queue there (the management API's consumers)."""
        by_address = {self.address(c): self.hostname(c) for c in self.worker_containers().values()}
        found: dict[str, list[str]] = {n: [] for n in CLUSTER_NODES}
        for consumer in self.management().consumers():
            if (consumer.get("queue") or {}).get("name") != config.QUEUE_NAME:
                continue
            details = consumer.get("channel_details") or {}
            node = str(details.get("node", "")).removeprefix("rabbit@")
            host = by_address.get(details.get("peer_host"))
            if node in found and host:
                found[node].append(host)
        return found

    def consumers(self) -> int | None:
        """task_queue's consumers (passive declare through the failover list), None if it cannot be asked."""
        try:
            with Connection(self.failover_url(), connect_timeout=3) as conn:
                return conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True).consumer_count
        except Exception:
            return None

    def wait_whole(self, timeout: float = 300.0, workers: bool = True) -> float:
        """Until :meth:`is_whole`; the seconds it took. ComposeError with what is missing after ``timeout``."""
        started = time.monotonic()
        while not self.is_whole(workers):
            if time.monotonic() - started > timeout:
                views = {n: self.node_view(n) for n in CLUSTER_NODES}
                raise ComposeError(
                    f"the cluster is not whole after {timeout:g} s: nodes say {views}, "
                    f"task_queue has {self.consumers()} of {self.workers} consumers"
                )
            time.sleep(1.0)
        return time.monotonic() - started


def json_copy(value):
    return json.loads(json.dumps(value))


def prepare_ledger_dir(path: Path) -> Path:
    """A folder the workers' user (uid 10001 in the app image) can write the ledger to, and the ledger in it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    db = path / "ledger.sqlite"
    db.touch()
    db.chmod(0o666)  # SQLite gives the -wal and -shm files the database's mode
    ledger.connect(str(db))
    for extra in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        if (path / extra).exists():
            (path / extra).chmod(0o666)
    return db
