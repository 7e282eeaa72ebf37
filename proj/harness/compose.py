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

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILES = (REPO_ROOT / "docker-compose.yml", REPO_ROOT / "docker-compose.local.yml")
#: The local images the compose files need (./dev.sh images builds them).
IMAGES = ("proj-local/rabbitmq:local", "proj-local/app:local")
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


def why_containers_cannot_run() -> str | None:
    """None when compose, an engine and the local images are all there; else what is missing and what to do."""
    if not shutil.which("docker"):
        return "no docker CLI: ./dev.sh images installs docker.io"
    if compose_cli() is None:
        return "no compose CLI (docker compose or docker-compose): ./dev.sh images installs docker-compose"
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
            result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
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
            docker("exec", container, "iptables", "-I", "INPUT", "-s", address, "-j", "DROP")
            docker("exec", container, "iptables", "-I", "OUTPUT", "-d", address, "-j", "DROP")

    def unpartition(self, node: str) -> None:
        container = self.project.container(node)
        docker("exec", container, "iptables", "-F", "INPUT")
        docker("exec", container, "iptables", "-F", "OUTPUT")
