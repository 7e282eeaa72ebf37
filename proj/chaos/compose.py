"""``proj chaos --compose``: the cluster faults of real network boundaries, on the compose cluster profile.

Three RabbitMQ 4.3 nodes in containers (docker-compose.yml's ``cluster`` profile on the local images, a
quorum task_queue), worker containers spread over them (worker N's failover list starts
at node N), and numbered tasks published from the host with confirms through every node's published
port. One fault at a time on one node, each healed before the next:

- ``crash``      ``docker kill`` (SIGKILL), then ``docker start``
- ``freeze``     ``docker pause`` (TCP connections stay open and silent), then ``unpause``
- ``isolate``    ``docker network disconnect`` (cut off from nodes, workers and host), then ``connect``
- ``partition``  iptables in the node drops the other nodes only (clients still reach it), then flushed

A fault is held until every worker that consumed from that node has started a task again (or
``hold_max``), then healed; the next waits until the cluster is whole again (three nodes running, no
partition recorded, every worker consuming). The nodes run RabbitMQ 4.3, whose Khepri metadata store has no
partition handling: no node pauses, and a healed node is never restarted here (3.10's pause_minority
could leave a thawed node in a recorded partition that only a restart cleared; compose no longer runs 3.10).

The run is ``proj chaos``'s own (proj/chaos/run.py's parts): the seeded schedule (every kind in turn, each
on a drawn node), the publisher (confirmed publishes through every node's published port, paced by a
backlog and a rate), the monitor tailing the ledger every worker writes (``PROJ_LEDGER`` on a bind mount,
``--include proj.chaos.ledger_hook``), the fault loop, the drain, :func:`proj.chaos.checker.check` and
:func:`proj.chaos.report.build`. What differs on containers is here: :class:`Containers` (where to
publish, what task_queue holds) and :class:`NodeFaultInjector` (the node faults and what only containers
measure: per fault kind, the seconds until the affected workers consume again, p50 and p99, and the
seconds producers were refused: a publish that failed, or took over
:data:`proj.chaos.publisher.REFUSED_AFTER`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from kombu import Connection

from proj import config
from proj.chaos import checker, ledger
from proj.chaos import report as report_mod
from proj.chaos.faults import FaultLoop
from proj.chaos.monitor import Monitor
from proj.chaos.publisher import REFUSED_AFTER, Publisher
from proj.chaos.run import drain
from proj.chaos.schedule import CONTAINER_KINDS, PlannedFault, fault_schedule, task_messages
from proj.chaos.state import ChaosError, RunState, Settings
from proj.harness.compose import (
    CLUSTER_NODES,
    ComposeCluster,
    ComposeError,
    NodeFaults,
    why_containers_cannot_run,
)
from proj.harness.stats import percentile

KINDS = CONTAINER_KINDS
#: A fault is healed once every affected worker consumes again, or after this many seconds.
HOLD_MAX = 60.0
#: ... but never before this many: the cluster must notice (a crash is seen at once, the rest take ticks).
HOLD_MIN = 2.0
#: How long the cluster may take to be whole again after a heal (a node restart on 2 cores: about 20 s).
WHOLE_TIMEOUT = 240.0
#: Seconds a blocking read or write on the publisher's connection may take (see Containers.publisher_connection).
PUBLISHER_SOCKET_TIMEOUT = 5.0
#: How long teardown waits for each thread (publisher, monitor) to end.
JOIN_TIMEOUT = 15
#: Celery's log line when a worker's consumer has connected to a node.
CONNECTED = re.compile(r"Connected to amqp://\S*@(?P<node>rabbitmq\d)[:/]")
#: Seconds between looks at where the affected workers consume, while a fault is held.
POLL = 0.5


@dataclasses.dataclass
class ComposeSettings(Settings):
    """proj chaos's settings (proj/chaos/state.py), with the compose run's defaults and two of its own."""

    tasks: int = 600
    faults: int = 4
    kinds: tuple[str, ...] = KINDS
    seconds_per_dot: float = 0.02
    backlog: int = 30
    #: The stream must last through the faults: a fault is held up to a minute, while the workers drain a
    #: backlog in seconds.
    rate: float | None = 3.0
    cluster: int = len(CLUSTER_NODES)
    #: Faults fire between these fractions of the tasks done.
    window: tuple[float, float] = (0.05, 0.90)
    #: Leave the compose project running at the end (its name is in the report).
    keep: bool = False


@dataclasses.dataclass
class FaultRecord:
    """What one fault did, beyond the checker's :class:`checker.Fault`."""

    kind: str
    node: str
    begin: float
    healed: float | None = None
    whole: float | None = None
    affected: list[str] = dataclasses.field(default_factory=list)
    #: Affected worker host -> seconds from the fault until it logged its connection to another node
    #: (looked at every :data:`POLL` s; None: not within the hold).
    reconnected: dict[str, float | None] = dataclasses.field(default_factory=dict)
    #: Affected worker host -> seconds from the fault to its first task start after it reconnected (None: none yet).
    consumed_again: dict[str, float | None] = dataclasses.field(default_factory=dict)
    refused_seconds: float = 0.0
    note: str = ""


class Containers:
    """The compose project as the run's broker and workers: what the publisher (proj/chaos/publisher.py), the
    monitor (proj/chaos/monitor.py) and the drain (proj/chaos/run.py) ask of it."""

    def __init__(self, cluster: ComposeCluster | None = None):
        self.cluster = cluster
        self._first_node = 0  # the node the publisher's last connection started at (none yet)

    def publisher_connection(self) -> Connection:
        # Every node's published port. Socket timeouts: a publish on a frozen node that times out makes kombu
        # close that connection, and py-amqp waits for the node's close-ok with no timeout of its own (measured:
        # one publish held 60 s, until the thaw). A confirm itself is waited for with PROJ_PUBLISH_TIMEOUT
        # (proj/tasks.py).
        options = {"confirm_publish": True, "read_timeout": PUBLISHER_SOCKET_TIMEOUT}
        options["write_timeout"] = PUBLISHER_SOCKET_TIMEOUT
        # Each new connection (the last one failed) starts at the next node: a node cut off from the majority
        # still takes connections and publishes, never confirms them, and hands them on after the heal; going
        # back to it sent one task there four times (five runs, measured on 4.3.6).
        self._first_node = self._first_node % len(CLUSTER_NODES) + 1
        conn = Connection(self.cluster.failover_url(self._first_node), transport_options=options, connect_timeout=3)
        conn.ensure_connection(max_retries=len(CLUSTER_NODES))
        return conn

    def publish_options(self) -> dict:
        # declare=[]: task_queue is the workers' quorum queue, whatever PROJ_QUEUE_TYPE says here. Celery's own
        # publish retries (through the failover list) count in the publish's time: a refusal if it is long.
        return {"declare": []}

    def scan_all(self) -> None:
        """Nothing to look at: the ledger rows name each container's processes (the monitor notes them)."""

    def progress(self) -> str:
        return f"{self.cluster.workers} worker containers"

    def queue_state(self) -> dict | None:
        try:
            q = self.cluster.management().queue(config.QUEUE_NAME)
        except Exception:
            return None
        if q is None:
            return None
        return {
            "ready": int(q.get("messages_ready", 0) or 0),
            "unacked": int(q.get("messages_unacknowledged", 0) or 0),
            "consumers": q.get("consumers"),
        }

    def dead_letters(self) -> int | None:
        with contextlib.suppress(Exception):
            q = self.cluster.management().queue(config.DEAD_QUEUE_NAME)
            return int(q.get("messages", 0) or 0) if q else 0
        return None

    def other_queues(self) -> dict[str, int]:
        return {}


class NodeFaultInjector(FaultLoop):
    """One node fault at a time: held until the node's workers consume elsewhere, healed, the cluster whole again."""

    def __init__(self, state: RunState, cluster: ComposeCluster, monitor: Monitor, records: list[FaultRecord]):
        super().__init__(state)
        self.cluster = cluster
        self.monitor = monitor
        self.records = records
        self.faults = NodeFaults(cluster)
        self.worker_container_of = {cluster.hostname(c): c for c in cluster.worker_containers().values()}

    def inject(self, n: int, planned: PlannedFault) -> None:
        try:
            self._inject(n, planned)
        except ComposeError as exc:
            self.state.errors.append(f"fault {n} {planned.kind}: {exc}")
            self.state.say(f" [!] fault {n} {planned.kind}: {exc}")
            raise ChaosError(f"fault {n} {planned.kind} could not be injected or healed: {exc}") from None

    def _inject(self, n: int, planned: PlannedFault) -> None:
        state, cluster = self.state, self.cluster
        cluster.wait_whole(WHOLE_TIMEOUT)
        by_node = cluster.consumers_by_node()
        node = CLUSTER_NODES[planned.worker]
        if not by_node[node]:  # a fault where no worker consumes measures no failover: take the busiest node
            node = max(CLUSTER_NODES, key=lambda x: len(by_node[x]))
        record = FaultRecord(kind=planned.kind, node=node, begin=time.time(), affected=sorted(by_node[node]))
        self._say(
            n, f"{planned.kind} {node} ({len(state.done)} done; its workers: {', '.join(record.affected) or 'none'})"
        )
        self.faults.inject(planned.kind, node)
        hold_from = time.monotonic()
        while time.monotonic() - hold_from < HOLD_MAX:
            self._measure(record)
            if time.monotonic() - hold_from >= HOLD_MIN and all(
                record.consumed_again.get(h) is not None for h in record.affected
            ):
                break
            time.sleep(POLL)
        self.faults.heal(planned.kind, node)
        record.healed = time.time()
        for host in record.affected:
            record.reconnected.setdefault(host, None)
            record.consumed_again.setdefault(host, None)
        cluster.wait_whole(WHOLE_TIMEOUT)
        record.whole = time.time()
        self.records.append(record)
        state.faults.append(checker.Fault(planned.kind, record.begin, record.whole, note=f"node {node}"))
        again = ", ".join(
            f"{h} moved {_s(record.reconnected.get(h))}, ran a task {_s(v)}" for h, v in record.consumed_again.items()
        )
        state.say(
            f" [*] healed {planned.kind} {node} after {record.healed - record.begin:.1f} s, whole again "
            f"{record.whole - record.healed:.1f} s later; consuming again: {again or 'no worker was on it'}"
        )

    def _measure(self, record: FaultRecord) -> None:
        """When each affected worker connected to another node, and its first task start after that.

        The worker's own log line ``Connected to amqp://...@NODE`` (docker's timestamp) says when it moved:
        the management API lists a new consumer only with its next statistics, measured 5-8 s late, which
        made every failover look that much slower. A task start alone would not do either: a message
        handed over just before the fault starts just after it.
        """
        self.monitor.read()
        for host in record.affected:
            if record.reconnected.get(host) is None:
                moved = self._connected_elsewhere(host, record)
                if moved is not None:
                    record.reconnected[host] = moved
        with self.state.lock:
            for host in record.affected:
                moved = record.reconnected.get(host)
                if moved is None or record.consumed_again.get(host) is not None:
                    continue
                after = [t for t in self.monitor.starts_by_host.get(host, ()) if t - record.begin >= moved]
                record.consumed_again[host] = (min(after) - record.begin) if after else None

    def _connected_elsewhere(self, host: str, record: FaultRecord) -> float | None:
        """Seconds from the fault until worker ``host`` logged its connection to a node other than the fault's."""
        container = self.worker_container_of.get(host)
        if container is None:
            return None
        result = subprocess.run(
            ["docker", "logs", "-t", "--since", f"{record.begin - 1:.3f}", container],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in (result.stdout + result.stderr).splitlines():
            match = CONNECTED.search(line)
            if not match or match.group("node") == record.node:
                continue
            at = docker_timestamp(line.split(" ", 1)[0])
            if at is not None and at >= record.begin:
                return at - record.begin
        return None


class ComposeChaos:
    """One run. ``cluster``: a cluster that is up (the caller's, left up); None: the run brings up its own.

    proj chaos's parts (proj/chaos/run.py's): its state, schedule, publisher, monitor, fault loop, drain,
    checker and report; :class:`Containers` and :class:`NodeFaultInjector` are what differs on containers.
    """

    def __init__(self, settings: ComposeSettings, out=None, cluster: ComposeCluster | None = None):
        self.settings = s = settings
        self.state = state = RunState.new(settings, out or sys.stdout)
        state.schedule = fault_schedule(
            state.seed,
            s.faults,
            s.tasks,
            len(CLUSTER_NODES),
            tuple(s.kinds or KINDS),
            force=(),
            in_turn=True,
            window=s.window,
            max_delay=0.0,
        )
        messages = task_messages(state.seed, s.tasks, s.max_dots)
        state.tasks = [(f"{state.task_prefix}{i:05d}", m) for i, m in enumerate(messages)]
        self.cluster = cluster
        self.own_cluster = cluster is None
        self.containers = Containers(cluster)
        self.publisher = Publisher(state, self.containers)
        self.monitor: Monitor | None = None  # once the cluster is up: it reads the cluster's ledger
        self.records: list[FaultRecord] = []

    @property
    def run_dir(self) -> Path | None:
        return self.state.run_dir

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> dict:
        state, s = self.state, self.settings
        started = time.time()
        state.make_run_dir("proj-chaos-compose-")
        state.announce("compose chaos run", f"{s.workers} worker containers", "node faults")
        queue = None
        interrupted = False
        try:
            injector = self._bring_up()
            self.monitor.start()
            self.publisher.start()
            injector.inject_all()
            self.publisher.wait()
            queue = drain(state, self.containers, all_done_only=True)
        except KeyboardInterrupt:
            interrupted = True
            state.say(" [*] interrupted: stopping everything this run started")
        finally:
            state.stopping.set()
            for t in state.threads:
                t.join(JOIN_TIMEOUT)
            if self.monitor is not None:
                self.monitor.read()
            self._teardown()
        result = self._report(queue, started, interrupted)
        if interrupted:
            raise KeyboardInterrupt
        return result

    def _bring_up(self) -> NodeFaultInjector:
        state, s = self.state, self.settings
        if self.cluster is None:
            reason = why_containers_cannot_run()
            if reason:
                raise ChaosError(reason)
            self.cluster = ComposeCluster(
                state.run_dir / "compose",
                workers=s.workers,
                seconds_per_dot=s.seconds_per_dot,
                ledger_dir=state.run_dir / "containers-ledger",
                name_prefix="projchaos",
            )
            state.say(f" [*] compose project {self.cluster.project}: 3 nodes, {s.workers} worker containers")
            try:
                self.cluster.up()
            except ComposeError as exc:
                raise ChaosError(f"the compose cluster did not come up: {exc}") from None
        if self.cluster.ledger_dir is None:
            raise ChaosError("the compose cluster has no ledger (ComposeCluster(ledger_dir=...))")
        self.containers.cluster = self.cluster
        self.monitor = Monitor(state, self.containers, ledger_path=self.cluster.ledger_dir / "ledger.sqlite")
        injector = NodeFaultInjector(state, self.cluster, self.monitor, self.records)
        took = self.cluster.wait_whole(WHOLE_TIMEOUT)
        state.say(f" [*] the cluster is whole ({took:.0f} s): 3 nodes, {self.cluster.workers} workers consuming")
        return injector

    def _teardown(self) -> None:
        if self.own_cluster and self.cluster is not None:
            # The nodes' and workers' own words, for a verdict to be traced after the containers are gone.
            with contextlib.suppress(Exception):
                saved = self.cluster.save_logs(self.state.run_dir / "containers.log")
                self.state.say(f" [*] the containers' logs: {saved}")
            if self.settings.keep:
                self.state.say(f" [*] left running: compose project {self.cluster.project}")
            else:
                self.cluster.down()

    # -- the end -------------------------------------------------------------------------------------

    def _report(self, queue: dict | None, started: float, interrupted: bool) -> dict:
        state = self.state
        # The run's own ledger: this run's rows of the one the containers share (a test module runs several).
        own = state.ledger_path
        own.unlink(missing_ok=True)
        if self.monitor is not None:
            with contextlib.suppress(sqlite3.Error, OSError):
                rows = [dict(r) for r in ledger.rows(str(self.monitor.ledger_path))]
                conn = ledger.connect(str(own))
                conn.executemany(
                    "INSERT INTO executions VALUES (:task_id, :message, :event, :redelivered, :hostname, :pid, :at)",
                    [r for r in rows if r["task_id"].startswith(state.task_prefix)],
                )
            # A container's processes are those its ledger rows name.
            state.pids_of.update(self.monitor.pids_by_host)
        ledger.connect(str(own))
        report = report_mod.build(state, self._describe(), False, queue, started)
        report.interrupted = interrupted
        result = report.to_dict()
        result["compose"] = self._figures()
        result["ok"] = report.ok and not state.errors
        (state.run_dir / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    def _describe(self) -> str:
        project = self.cluster.project if self.cluster else "?"
        return f"compose project {project}: 3 RabbitMQ nodes in containers (quorum task_queue)"

    def _figures(self) -> dict:
        """Per fault kind: faults, failover (affected workers consuming again) p50/p99, producer refused seconds."""
        by_kind: dict[str, dict] = {}
        for kind in sorted({r.kind for r in self.records}):
            records = [r for r in self.records if r.kind == kind]
            again = [v for r in records for v in r.consumed_again.values() if v is not None]
            moved = [v for r in records for v in r.reconnected.values() if v is not None]
            never = sum(1 for r in records for v in r.consumed_again.values() if v is None)
            refused = sum(self.publisher.refused_seconds(r.begin, r.whole or r.begin) for r in records)
            by_kind[kind] = {
                "faults": len(records),
                "affected_workers": sum(len(r.affected) for r in records),
                "reconnected_p50": _r(percentile(moved, 50)),
                "reconnected_p99": _r(percentile(moved, 99)),
                "consumed_again_p50": _r(percentile(again, 50)),
                "consumed_again_p99": _r(percentile(again, 99)),
                "consumed_again_max": _r(max(again) if again else None),
                "not_consuming_again": never,
                "producer_refused_seconds": _r(refused),
                "fault_held_p50": _r(percentile([r.healed - r.begin for r in records if r.healed], 50)),
                "whole_again_p50": _r(percentile([r.whole - r.healed for r in records if r.whole and r.healed], 50)),
            }
        return {
            "project": self.cluster.project if self.cluster else None,
            "worker_containers": self.cluster.workers if self.cluster else None,
            "by_kind": by_kind,
            "producer_refused_seconds": _r(self.publisher.refused_seconds()),
            "producer_refused_publishes": len(self.publisher.refused),
            "faults": [dataclasses.asdict(r) for r in self.records],
        }


def docker_timestamp(stamp: str) -> float | None:
    """``docker logs -t``'s RFC 3339 time (nanoseconds, Z) as a Unix time."""
    try:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return None


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def summary(result: dict) -> list[str]:
    """The compose figures, as lines for a terminal (after ``proj chaos``'s own summary)."""
    lines = []
    compose = result["compose"]
    for kind, f in compose["by_kind"].items():
        lines.append(
            f" [x] {kind}: {f['faults']} faults, {f['affected_workers']} workers on the node; consuming on another "
            f"node p50 {_s(f['reconnected_p50'])}, p99 {_s(f['reconnected_p99'])}; running tasks again "
            f"p50 {_s(f['consumed_again_p50'])}, p99 {_s(f['consumed_again_p99'])}"
            + (f" ({f['not_consuming_again']} not within the hold)" if f["not_consuming_again"] else "")
            + f"; producers refused {_s(f['producer_refused_seconds'])}"
        )
    lines.append(
        f" [x] producers refused {_s(compose['producer_refused_seconds'])} in all "
        f"({compose['producer_refused_publishes']} publishes retried or slower than {REFUSED_AFTER:g} s)"
    )
    return lines


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f} s"
