"""A RabbitMQ cluster on one machine: N private nodes on 127.0.0.1, one epmd, one Erlang cookie, one data dir.

Each node is a ``proj.rabbit.node.Node`` with ports of its own (node i: AMQP ``port + i - 1``, management
``management_port + i - 1``, name ``proj-PORT@localhost``). The nodes share the cluster's data dir
as $HOME, so they share its Erlang cookie, and they register with one epmd, so they find each other.

The nodes form the cluster by RabbitMQ's classic config peer discovery: every node's rabbitmq.conf
lists the cluster's nodes, and a blank node joins them at its first boot. Node 1 boots first,
listing only itself, so it starts at once as the seed; the others then boot together and join it
(RabbitMQ's peer discovery lock makes them join one at a time). Peer discovery runs only on a
node's first boot: afterwards a node rejoins the cluster recorded in its own database, so a killed
node started again, or the whole cluster restarted, needs no seed.

Layout of the data dir::

    .erlang.cookie       the shared secret (mode 0400); whoever has it can run code on the nodes
    proj-cluster.json    size, ports, node names and the epmd's pid: what stop/status/kill-node read
    epmd.log
    node1/ node2/ ...    each node's own data dir (config, database, logs), as for a single node

Usage::

    cluster = Cluster(data_dir=".rabbitmq-cluster", size=3, port=5672, management_port=15672)
    cluster.start()               # returns once every node accepts AMQP and the cluster runs them all
    cluster.url                   # amqp://...:5672//;amqp://...:5673//;amqp://...:5674//  (Celery failover)
    cluster.failover_url(2)       # the same list, starting at node 2
    cluster.kill_node(2)          # SIGKILL: a crash
    cluster.start_node(2)         # back into the cluster
    cluster.stop()
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import threading
import time
from pathlib import Path

from proj import config
from proj.harness.processes import pid_alive, signal_pid, wait_gone
from proj.management import Management, ManagementError
from proj.rabbit import netsplit
from proj.rabbit.node import (
    START_TIMEOUT,
    STATE_FILE,
    STOP_TIMEOUT,
    BrokerError,
    Node,
    find_runtime,
    free_port,
    port_is_free,
    read_state,
    spawn_epmd,
)

CLUSTER_STATE_FILE = "proj-cluster.json"
#: Erlang's distribution tick (seconds): a peer silent for 3/4 to 5/4 of it is declared down.
NET_TICKTIME = 15
COOKIE_FILE = ".erlang.cookie"
MIN_SIZE, MAX_SIZE = 3, 7
#: How long a joining node waits for the seed (classic config peer discovery retries).
DISCOVERY_RETRIES, DISCOVERY_INTERVAL_MS = 120, 500


class ClusterError(BrokerError):
    """The cluster could not be started, reached or changed; the message says what to do."""


def free_port_run(n: int, avoid: tuple[int, ...] = ()) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (none in ``avoid``)."""
    for _ in range(200):
        base = free_port(avoid)
        ports = range(base, base + n)
        if base + n - 1 + 20000 <= 65535 and not set(ports) & set(avoid) and all(port_is_free(p) for p in ports):
            return base
    raise ClusterError(f"found no {n} consecutive free ports on 127.0.0.1")


def is_cluster_dir(data_dir: Path | str) -> bool:
    return (Path(data_dir).absolute() / CLUSTER_STATE_FILE).exists()


@dataclasses.dataclass
class Cluster:
    """``size`` RabbitMQ nodes whose files all live in ``data_dir``."""

    data_dir: Path = Path(".rabbitmq")
    size: int = 3
    #: Node i listens for AMQP on ``port + i - 1`` and for the management API on ``management_port + i - 1``.
    port: int = 5672
    management_port: int = 15672
    epmd_port: int | None = None
    user: str = "guest"
    password: str = "guest"
    #: Erlang VM flags for every node (``+S 1:1`` runs each on one scheduler thread).
    erl_args: str = ""
    #: Node names, kept from the first start: a node's database is filed under its name.
    node_names: list[str] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ClusterError(
                f"a cluster has {MIN_SIZE} to {MAX_SIZE} nodes, not {self.size}: with fewer than 3, quorum "
                "queues cannot survive the loss of a node"
            )
        if not self.node_names:
            self.node_names = [f"proj-{self.port + i}@localhost" for i in range(self.size)]
        self.nodes = [self._node(i) for i in range(self.size)]

    def _node(self, i: int) -> Node:
        return Node.from_data_dir(
            self.data_dir / f"node{i + 1}",
            port=self.port + i,
            management_port=self.management_port + i,
            node_name=self.node_names[i],
            epmd_port=self.epmd_port,
            own_epmd=False,
            home=self.data_dir,
            user=self.user,
            password=self.password,
            erl_args=self.erl_args,
            dist_source=netsplit.source_address(self.port + i),
            extra_config=self._peer_discovery(self.node_names),
        )

    @staticmethod
    def _peer_discovery(peers: list[str]) -> tuple[str, ...]:
        return (
            "cluster_formation.peer_discovery_backend = classic_config",
            *(f"cluster_formation.classic_config.nodes.{k} = {name}" for k, name in enumerate(peers, 1)),
            f"cluster_formation.discovery_retry_limit = {DISCOVERY_RETRIES}",
            f"cluster_formation.discovery_retry_interval = {DISCOVERY_INTERVAL_MS}",
            *_partition_handling(),
            # A node that stops answering (frozen, cut off) is declared down after 11-19 s instead of
            # Erlang's 45-75 s: until then every metadata change (a worker declaring its queues and
            # bindings on reconnect) waits on it, so a worker whose node froze could not fail over.
            f"net_ticktime = {NET_TICKTIME}",
        )

    # -- what a client needs --------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node, ``;``-separated: Celery's failover list (``CELERY_BROKER_URL``)."""
        return self.failover_url(1)

    def failover_url(self, first: int) -> str:
        """The failover list starting at node ``first`` (1-based), so clients spread over the nodes."""
        i = self._index(first)
        return ";".join(self.urls[i:] + self.urls[:i])

    @property
    def management_urls(self) -> list[str]:
        return [node.management_url for node in self.nodes]

    @property
    def management_url(self) -> str:
        """Every node's management API, ``;``-separated: ``PROJ_MANAGEMENT_URL`` for proj and Flower,
        which use the first node that answers."""
        return ";".join(self.management_urls)

    def node(self, n: int) -> Node:
        """Node ``n`` (1-based)."""
        return self.nodes[self._index(n)]

    def _index(self, n: int) -> int:
        if not 1 <= n <= self.size:
            raise ClusterError(f"there is no node {n}: the cluster in {self.data_dir} has nodes 1 to {self.size}")
        return n - 1

    def management(self):
        """A management API client on a node that answers (node 1 first), or ClusterError."""

        errors = []
        for node in self.nodes:
            if not node.is_running():
                continue
            mgmt = Management(node.management_url)
            try:
                mgmt.request("GET", "overview")
                return mgmt
            except ManagementError as exc:
                errors.append(str(exc))
        raise ClusterError(f"no node of the cluster in {self.data_dir} answers: {'; '.join(errors) or 'none runs'}")

    # -- saved state ----------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.data_dir / CLUSTER_STATE_FILE

    def _read_state(self) -> dict:
        return read_state(self.state_path)

    def _write_state(self, **extra) -> None:
        state = {
            "cluster": {
                "size": self.size,
                "port": self.port,
                "management_port": self.management_port,
                "epmd_port": self.epmd_port,
                "user": self.user,
                "password": self.password,
                "erl_args": self.erl_args,
                "node_names": self.node_names,
            },
            **extra,
        }
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def from_data_dir(cls, data_dir: Path | str, **overrides) -> Cluster:
        """The cluster last started in ``data_dir``, with ``overrides`` (those not None) applied."""
        saved = read_state(Path(data_dir).absolute() / CLUSTER_STATE_FILE).get("cluster", {})
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in saved.items() if k in fields}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if saved and kwargs.get("size") != saved.get("size"):
            raise ClusterError(
                f"the cluster in {Path(data_dir).absolute()} has {saved.get('size')} nodes, not {kwargs.get('size')}: "
                "pass its size, or another --data-dir for a new cluster"
            )
        kwargs["data_dir"] = Path(data_dir)
        return cls(**kwargs)

    # -- lifecycle -----------------------------------------------------------------------------

    def running_nodes(self) -> list[int]:
        """The 1-based numbers of the nodes whose process runs."""
        return [i + 1 for i, node in enumerate(self.nodes) if node.is_running()]

    def is_running(self) -> bool:
        return bool(self.running_nodes())

    def _epmd_alive(self) -> bool:
        pid = self._read_state().get("epmd_pid")
        return pid_alive(pid) and _is_epmd(pid)

    def _check_startable(self) -> None:
        if (self.data_dir / STATE_FILE).exists():
            raise ClusterError(
                f"{self.data_dir} holds a single node's data (`proj broker start` without --cluster): "
                "pick another --data-dir for the cluster"
            )
        running = self.running_nodes()
        if running:
            raise ClusterError(
                f"a cluster already runs from {self.data_dir} (nodes {', '.join(map(str, running))}): `proj broker "
                f"stop --data-dir {self.data_dir}` first, or `proj broker start-node N` for a node that is down"
            )
        ranges = {"port": self.port, "management-port": self.management_port}
        for option, base in ranges.items():
            if not 1 <= base <= 65536 - self.size:
                raise ClusterError(
                    f"--{option} {base} leaves no room for {self.size} ports (the cluster takes {base} to "
                    f"{base + self.size - 1}): pick a port between 1 and {65536 - self.size}"
                )
        if abs(self.port - self.management_port) < self.size:
            raise ClusterError(
                f"AMQP ports {self.port}-{self.port + self.size - 1} and management ports {self.management_port}-"
                f"{self.management_port + self.size - 1} overlap: pick --port and --management-port further apart"
            )
        for option, base in ranges.items():
            for port in range(base, base + self.size):
                if not port_is_free(port):
                    kind = "AMQP" if option == "port" else "management"
                    raise ClusterError(
                        f"{kind} port {port} on 127.0.0.1 is taken (the cluster needs {base}-{base + self.size - 1}): "
                        f"stop what listens there or pick others with --{option}"
                    )

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cookie = self.data_dir / COOKIE_FILE
        if not cookie.exists():
            # Erlang would make one per node if it found none: write it before any node boots.
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        state = self._read_state()
        if not self._epmd_alive():
            if not self.epmd_port or not port_is_free(self.epmd_port):
                self.epmd_port = free_port(tuple(range(self.port, self.port + self.size)))
            epmd = spawn_epmd(
                self.epmd_port, find_runtime().env(os.environ.copy()), self.data_dir, self.data_dir / "epmd.log"
            )
            state["epmd_pid"] = epmd.pid
        self.nodes = [self._node(i) for i in range(self.size)]
        self._write_state(epmd_pid=state.get("epmd_pid"))

    def start(self, timeout: float = START_TIMEOUT) -> Cluster:
        """Start every node; return once each accepts AMQP and the cluster counts them all as running."""
        self._check_startable()
        self._prepare()
        blank = all(not _has_database(node) for node in self.nodes)
        try:
            if blank:
                # The seed lists only itself: it starts at once instead of waiting for peers that wait for it.
                seed = dataclasses.replace(self.nodes[0], extra_config=self._peer_discovery(self.node_names[:1]))
                seed.start(timeout)
                self._start_nodes(self.nodes[1:], timeout)
            else:
                self._start_nodes(self.nodes, timeout)
            self.wait_clustered(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self, nodes: list[Node], timeout: float) -> None:
        errors: list[BaseException] = []

        def start(node: Node) -> None:
            try:
                node.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(node,), daemon=True) for node in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def cluster_view(self) -> list[dict]:
        """``[{name, running}, ...]`` for every cluster member, as a running node's management API says."""

        try:
            nodes = self.management().request("GET", "nodes") or []
        except (ClusterError, ManagementError):
            return []
        return [
            {"name": n["name"], "running": bool(n.get("running")), "partitions": n.get("partitions") or []}
            for n in nodes
        ]

    def wait_clustered(self, timeout: float = START_TIMEOUT, expect: list[int] | None = None) -> None:
        """Wait until the cluster counts nodes ``expect`` (all by default) as running members."""
        expect = expect or list(range(1, self.size + 1))
        wanted = {self.node_names[i - 1] for i in expect}
        deadline = time.monotonic() + timeout
        while True:
            view = self.cluster_view()
            running = {n["name"] for n in view if n["running"]}
            if wanted <= running and len(view) == self.size:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the cluster in {self.data_dir} does not run {sorted(wanted - running)} after {timeout:.0f} s "
                    f"(members: {view or 'none answers'}): see the nodes' logs in {self.data_dir}/node*/log"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop every node (together) and the epmd. True if something was running."""
        was_running = self.is_running()
        netsplit.heal_all(self)  # a partition made by proj.rabbit.netsplit ends with the cluster
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda n=node: results.append(n.stop(timeout)), daemon=True) for node in self.nodes
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = self._read_state()
        epmd_pid = state.get("epmd_pid")
        if pid_alive(epmd_pid) and _is_epmd(epmd_pid):
            signal_pid(epmd_pid, signal.SIGTERM)
            wait_gone(epmd_pid, 5)
        if state:
            self._write_state(epmd_pid=None)
        return was_running or any(results)

    def restart(self, timeout: float = START_TIMEOUT) -> Cluster:
        """Stop every node and start them all again, keeping their data: quorum queues and messages survive."""
        self.stop()
        return self.start(timeout)

    def partition_node(self, n: int) -> None:
        """Cut node ``n`` off from the other nodes (iptables; clients still reach it): ``proj.rabbit.netsplit``."""
        netsplit.partition(self, n)

    def heal_node(self, n: int) -> None:
        """End :meth:`partition_node`."""
        netsplit.heal(self, n)

    def kill_node(self, n: int) -> Node:
        """SIGKILL node ``n`` (1-based): a crash, not a shutdown. The epmd and the other nodes keep running."""
        node = self.node(n)
        if not node.is_running():
            raise ClusterError(f"node {n} ({node.node_name}) is not running")
        node.kill()
        return node

    def start_node(self, n: int, timeout: float = START_TIMEOUT) -> Node:
        """Start node ``n`` again with its data; return once the cluster counts it as running."""
        node = self.node(n)
        if node.is_running():
            raise ClusterError(f"node {n} ({node.node_name}) already runs")
        if not self._epmd_alive():
            raise ClusterError(
                f"the cluster in {self.data_dir} is stopped: `proj broker start --data-dir {self.data_dir}` starts it"
            )
        for port, name in ((node.port, "AMQP"), (node.management_port, "management")):
            if not port_is_free(port):
                raise ClusterError(f"{name} port {port} of node {n} is taken: stop what listens there")
        node.start(timeout)
        self.wait_clustered(timeout, expect=[n])
        return node

    def status(self) -> dict:
        """Each node's process and ports, and the cluster's health as its running nodes see it."""
        nodes = []
        for i, node in enumerate(self.nodes, 1):
            info = node.status()
            info["number"] = i
            nodes.append(info)
        view = self.cluster_view() if any(n["running"] for n in nodes) else []
        members = {m["name"]: m for m in view}
        for info in nodes:
            member = members.get(info["node_name"])
            info["in_cluster"] = bool(member and member["running"])
        running = sum(1 for n in nodes if n["in_cluster"])
        partitions = sorted({p for m in view for p in m["partitions"]})
        if running == self.size and not partitions:
            health = "healthy"
        elif running == 0:
            health = "down"
        else:
            health = "degraded"
        return {
            "cluster": True,
            "data_dir": str(self.data_dir),
            "size": self.size,
            "running": running,
            "health": health,
            "partitions": partitions,
            "nodes": nodes,
            "url": self.url,
            "management_url": self.management_url,
            "quorum_queues": self.quorum_queues() if running else [],
        }

    def quorum_queues(self) -> list[dict]:
        """Each quorum queue's leader and members (which nodes hold a replica, which of those are up)."""

        try:
            queues = self.management().queues()
        except (ClusterError, ManagementError):
            return []
        return [
            {
                "name": q["name"],
                "leader": q.get("leader"),
                "members": sorted(q.get("members") or []),
                "online": sorted(q.get("online") or []),
                "messages": q.get("messages", 0),
            }
            for q in queues
            if q.get("type") == "quorum"
        ]


def _partition_handling() -> tuple[str, ...]:
    """RabbitMQ 3.x: a node that finds itself in a minority (cut off from, or frozen while, the other two)
    pauses: it closes its clients' connections so they fail over to the majority, where the quorum
    task_queue keeps its leader, instead of serving a split-off copy. RabbitMQ 4.x keeps its metadata
    in Khepri (Raft), where a minority cannot change anything and there is no partition handling to
    choose: the setting is gone."""
    try:
        version = find_runtime().version
    except BrokerError:
        version = config.RABBITMQ
    return ("cluster_partition_handling = pause_minority",) if version.startswith("3.") else ()


def _has_database(node: Node) -> bool:
    return (node.data_dir / "mnesia" / node.node_name).is_dir()


def _is_epmd(pid: int) -> bool:
    """Guards against a reused pid: only an epmd is ever signalled as the cluster's."""
    try:
        return b"epmd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
