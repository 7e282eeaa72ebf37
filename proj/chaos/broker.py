"""The run's broker: a private node, a private cluster, or one given with ``--broker-url``; and what it holds.

The fault injector restarts the private node or kills a cluster node through it; the drain reads
task_queue through it (ready and consumers exact by passive declare, unacknowledged from the
management API).
"""

from __future__ import annotations

import contextlib

from proj import config
from proj.chaos.state import ChaosError, RunState
from proj.management import Management, ManagementError, hide_password
from proj.rabbit.node import BrokerError, Node, private_node

DEAD_QUEUE = config.DEAD_QUEUE_NAME


class RunBroker:
    def __init__(self, state: RunState):
        self.state = state
        self.external = state.settings.broker_url is not None
        self.url = state.settings.broker_url or ""
        self.node: Node | None = None
        self.cluster = None  # a proj.rabbit.cluster.Cluster when settings.cluster
        self.mgmt: Management | None = None

    @property
    def started(self) -> bool:
        """Whether the run started a broker of its own (then its files are in the run dir)."""
        return self.node is not None or self.cluster is not None

    def describe(self) -> str:
        if self.external:
            return "given"
        return f"cluster of {self.cluster.size}" if self.cluster is not None else "private"

    def start(self) -> None:
        say = self.state.say
        if self.external:
            self.mgmt = Management.for_broker(self.url)
            self._check_external()
            say(
                f" [*] broker {hide_password(self.url)} (given): no broker restarts in this run, "
                "only a node the run starts itself can be restarted"
            )
            return
        if self.state.settings.cluster:
            self._start_cluster()
            return
        self.node = private_node(self.state.run_dir / "rabbitmq")
        say(f" [*] starting a private RabbitMQ on 127.0.0.1:{self.node.port}")
        try:
            self.node.start()
        except BrokerError as exc:
            raise ChaosError(str(exc)) from exc
        self.url = self.node.url
        self.mgmt = Management(self.node.management_url)

    def _start_cluster(self) -> None:
        from proj.rabbit.cluster import Cluster, free_port_run

        size = self.state.settings.cluster
        port = free_port_run(size)
        management_port = free_port_run(size, avoid=tuple(range(port, port + size)))
        self.cluster = Cluster(self.state.run_dir / "rabbitmq", size=size, port=port, management_port=management_port)
        self.state.say(
            f" [*] starting a private RabbitMQ cluster of {size} nodes on 127.0.0.1:{port}-{port + size - 1}"
        )
        try:
            self.cluster.start()
        except BrokerError as exc:
            raise ChaosError(str(exc)) from exc
        self.url = self.cluster.url
        self.mgmt = self.cluster.management()

    def _check_external(self) -> None:
        """A given broker's task_queue must be empty and unconsumed: anything else would skew the count."""
        from amqp.exceptions import NotFound
        from kombu import Connection

        from proj.new_task import describe_broker_error

        try:
            with Connection(self.url, connect_timeout=5) as conn:
                ok = conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True)
        except NotFound:
            ok = None
        except Exception as exc:
            raise ChaosError(
                f"cannot reach the broker at {hide_password(self.url)}: {describe_broker_error(exc)}"
            ) from None
        if ok is not None and (ok.message_count or ok.consumer_count):
            raise ChaosError(
                f"{config.QUEUE_NAME} on {hide_password(self.url)} holds {ok.message_count} messages and has "
                f"{ok.consumer_count} consumers: run chaos against a broker with an idle, empty {config.QUEUE_NAME}"
            )
        try:
            self.mgmt.queues()
        except ManagementError as exc:
            raise ChaosError(f"{exc}: set PROJ_MANAGEMENT_URL to the broker's management API") from exc

    # -- what a worker needs ---------------------------------------------------------------------

    def worker_options(self, name: str) -> tuple[str, str | None, dict[str, str]]:
        """(broker URL, management URL, extra environment) for worker ``name`` ("w1", "w2", ...)."""
        if self.cluster is None:
            return self.url, None, {}
        # A quorum task_queue; worker wN's failover list starts at node N, so they spread over the nodes.
        first = (int(name.lstrip("w")) - 1) % self.cluster.size + 1
        return self.cluster.failover_url(first), self.cluster.management_url, {"PROJ_QUEUE_TYPE": "quorum"}

    # -- faults ----------------------------------------------------------------------------------

    def restart(self) -> None:
        try:
            self.node.stop()
            self.node.start()
        except BrokerError as exc:
            raise ChaosError(f"the broker did not come back after a restart: {exc}") from exc

    def kill_node(self, number: int) -> Node:
        return self.cluster.kill_node(number)

    def start_node(self, number: int) -> None:
        try:
            self.cluster.start_node(number)
        except BrokerError as exc:
            raise ChaosError(f"node {number} did not come back into the cluster: {exc}") from exc

    # -- what it holds ---------------------------------------------------------------------------

    def ready_count(self) -> int | None:
        """Messages ready in task_queue (exact, by passive declare); None if the broker does not answer."""
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(self.url, connect_timeout=5) as conn:
            return conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True).message_count
        return None

    def queue_state(self) -> dict | None:
        """ready and consumers by passive declare (exact), unacked from the management API."""
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=5) as conn:
                ok = conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True)
            state = {"ready": ok.message_count, "consumers": ok.consumer_count}
            mgmt = self.cluster.management() if self.cluster is not None else self.mgmt  # a node that is up
            counts = mgmt.counts(config.QUEUE_NAME) if mgmt else None
            state["unacked"] = counts[1] if counts else None
            return state
        except Exception:  # broker or management API unreachable: not settled, sample again
            return None

    def dead_letters(self) -> int | None:
        """Messages in the dead-letter queue, if there is one (a task dead-lettered is not done)."""
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(self.url, connect_timeout=5) as conn:
            return conn.default_channel.queue_declare(DEAD_QUEUE, passive=True).message_count
        return None

    def other_queues(self) -> dict[str, int]:
        """Queues other than task_queue holding messages: where a lost task may have gone instead."""
        try:
            queues = self.mgmt.queues()
        except ManagementError:
            return {}
        skip = (config.QUEUE_NAME, DEAD_QUEUE)
        return {q["name"]: q.get("messages", 0) for q in queues if q["name"] not in skip and q.get("messages")}

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        if self.cluster is not None:
            self.cluster.stop()
