"""``proj chaos --compose``: the cluster faults of real network boundaries, on the compose cluster profile.

Three RabbitMQ nodes in containers (docker-compose.yml's ``cluster`` profile on the local images, a
quorum task_queue, pause_minority), worker containers spread over them (worker N's failover list starts
at node N), and numbered tasks published from the host with confirms through every node's published
port. One fault at a time on one node, each healed before the next:

- ``crash``      ``docker kill`` (SIGKILL), then ``docker start``
- ``freeze``     ``docker pause`` (TCP connections stay open and silent), then ``unpause``
- ``isolate``    ``docker network disconnect`` (cut off from nodes, workers and host), then ``connect``
- ``partition``  iptables in the node drops the other nodes only (clients still reach it), then flushed

A fault is held until every worker that consumed from that node has started a task again (or
``hold_max``), then healed; the next waits until the cluster is whole again (three nodes running, no
partition recorded, every worker consuming). A thawed node that comes back with a partition recorded
(pause_minority does not heal that one: see :data:`PARTITION_AFTER_THAW`) is restarted, and that
restart is a fault of its own in the count.

The count is ``proj chaos``'s own: the ledger every worker writes (``PROJ_LEDGER`` on a bind mount),
:func:`proj.chaos.checker.check` and :func:`proj.chaos.report.build`, plus what only containers
measure: per fault kind, the seconds until the affected workers consume again (p50, p99), and the
seconds producers were refused (a publish that failed, or took over :data:`REFUSED_AFTER`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from proj import config
from proj.chaos import checker, ledger
from proj.chaos import report as report_mod
from proj.chaos.schedule import PlannedFault, task_messages
from proj.chaos.state import ChaosError, RunState, Settings
from proj.harness.compose import CLUSTER_NODES, ComposeCluster, ComposeError, NodeFaults, why_containers_cannot_run
from proj.harness.stats import percentile

KINDS = ("crash", "freeze", "isolate", "partition")
#: A publish that takes longer than this (retries inside it included) counts as refused for its whole time.
REFUSED_AFTER = 1.0
#: A fault is healed once every affected worker consumes again, or after this many seconds.
HOLD_MAX = 60.0
#: ... but never before this many: the cluster must notice (a crash is seen at once, the rest take ticks).
HOLD_MIN = 2.0
#: After a thaw, seconds the cluster may take to be whole; a partition still recorded then is healed by a restart.
PARTITION_AFTER_THAW = 45.0
#: ... or as soon as a partition has been recorded this long.
PARTITION_SEEN_FOR = 8.0
#: How long the cluster may take to be whole again after a heal (a node restart on 2 cores: about 20 s).
WHOLE_TIMEOUT = 240.0
#: Seconds a blocking read or write on the publisher's connection may take (see _connection).
PUBLISHER_SOCKET_TIMEOUT = 5.0
#: A publish is sent again under its task id (each attempt bounded by PROJ_PUBLISH_TIMEOUT) this long.
PUBLISH_DEADLINE = 180.0
#: No task done for this long: the run is stuck, stop injecting.
STALL_TIMEOUT = 180.0
SETTLED_SAMPLES = 3
#: Celery's log line when a worker's consumer has connected to a node.
CONNECTED = re.compile(r"Connected to amqp://\S*@(?P<node>rabbitmq\d)[:/]")
#: Seconds between looks at where the affected workers consume, while a fault is held.
POLL = 0.5


@dataclasses.dataclass
class ComposeSettings:
    tasks: int = 600
    workers: int = 3
    faults: int = 4
    kinds: tuple[str, ...] = KINDS
    seed: int | None = None
    seconds_per_dot: float = 0.02
    max_dots: int = 3
    #: Published but not yet done: the publisher waits above this, so it publishes through the faults.
    backlog: int = 30
    #: At most this many publishes a second, so the stream lasts through the faults (a fault is held up
    #: to a minute, while the workers drain a backlog in seconds). None: only the backlog paces it.
    rate: float | None = 3.0
    #: Faults fire between these fractions of the tasks done.
    window: tuple[float, float] = (0.05, 0.90)
    drain_timeout: float = 300.0
    out: Path | None = None
    #: Leave the compose project running at the end (its name is in the report).
    keep: bool = False


def schedule(
    seed: int, faults: int, tasks: int, kinds: tuple[str, ...], window: tuple[float, float] = (0.05, 0.90)
) -> list[PlannedFault]:
    """``faults`` faults, every kind of ``kinds`` in turn (shuffled by the seed), each on a drawn node,
    firing between ``window``'s fractions of the tasks done."""
    rng = random.Random(f"proj-chaos-compose-{seed}")
    drawn = []
    while len(drawn) < faults:
        batch = list(kinds)
        rng.shuffle(batch)
        drawn.extend(batch)
    low = max(1, int(tasks * window[0]))
    high = max(low, int(tasks * window[1]))
    thresholds = sorted(rng.randint(low, high) for _ in range(faults))
    return [
        PlannedFault(after_done=t, delay=0.0, kind=k, worker=rng.randrange(len(CLUSTER_NODES)))
        for t, k in zip(thresholds, drawn[:faults], strict=True)
    ]


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


class ComposeChaos:
    """One run. ``cluster``: a cluster that is up (the caller's, left up); None: the run brings up its own."""

    def __init__(self, settings: ComposeSettings, out=None, cluster: ComposeCluster | None = None):
        self.settings = settings
        s = settings
        # proj chaos's own settings and state, so that its report and checker read this run as theirs.
        common = Settings(
            tasks=s.tasks,
            workers=s.workers,
            faults=s.faults,
            seed=s.seed,
            seconds_per_dot=s.seconds_per_dot,
            backlog=s.backlog,
            cluster=len(CLUSTER_NODES),
            kinds=tuple(s.kinds),
        )
        self.state = RunState.new(common, out or sys.stdout)
        self.state.schedule = schedule(self.state.seed, s.faults, s.tasks, tuple(s.kinds), s.window)
        messages = task_messages(self.state.seed, s.tasks, s.max_dots)
        self.prefix = f"chaos-{self.state.run_id}-"
        self.state.tasks = [(f"{self.prefix}{i:05d}", m) for i, m in enumerate(messages)]
        self.cluster = cluster
        self.own_cluster = cluster is None
        self.records: list[FaultRecord] = []
        #: (begin, end) of every publish that was refused.
        self.refused: list[tuple[float, float]] = []
        self.starts_by_host: dict[str, list[float]] = defaultdict(list)
        self._last_rowid = 0
        self._reading = threading.Lock()

    @property
    def run_dir(self) -> Path | None:
        return self.state.run_dir

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> dict:
        state, s = self.state, self.settings
        started = time.time()
        self._prepare()
        kinds = Counter(f.kind for f in state.schedule)
        state.say(
            f" [*] compose chaos run {state.run_id}: {s.tasks} tasks, {s.workers} worker containers, "
            f"{len(state.schedule)} node faults ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), "
            f"seed {state.seed}; run dir {state.run_dir}"
        )
        queue = None
        interrupted = False
        try:
            self._bring_up()
            state.start_thread(self._monitor, "compose-chaos-monitor")
            state.start_thread(self._publisher, "compose-chaos-publisher")
            self._inject_all()
            state.publishing_done.wait()
            state.check_publisher()
            queue = self._drain()
        except KeyboardInterrupt:
            interrupted = True
            state.say(" [*] interrupted: stopping everything this run started")
        finally:
            state.stopping.set()
            for t in state.threads:
                t.join(15)
            self._read_ledger()
            self._teardown()
        result = self._report(queue, started, interrupted)
        if interrupted:
            raise KeyboardInterrupt
        return result

    def _prepare(self) -> None:
        s, state = self.settings, self.state
        if s.out is None:
            state.run_dir = Path(tempfile.mkdtemp(prefix="proj-chaos-compose-"))
        else:
            state.run_dir = Path(s.out).absolute()
            if (state.run_dir / "ledger.sqlite").exists():
                raise ChaosError(f"{state.run_dir} already holds a chaos run (ledger.sqlite): pass an empty --out")
            state.run_dir.mkdir(parents=True, exist_ok=True)

    def _bring_up(self) -> None:
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
        self.shared_ledger = self.cluster.ledger_dir / "ledger.sqlite"
        self.worker_container_of = {self.cluster.hostname(c): c for c in self.cluster.worker_containers().values()}
        self.faults = NodeFaults(self.cluster)
        took = self.cluster.wait_whole(WHOLE_TIMEOUT)
        state.say(f" [*] the cluster is whole ({took:.0f} s): 3 nodes, {self.cluster.workers} workers consuming")

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

    # -- the publisher: host -> every node's published port, confirmed -------------------------------

    def _publisher(self) -> None:
        state = self.state
        try:
            from proj import tasks

            work = tasks.work
            conn = None
            gap = 1.0 / self.settings.rate if self.settings.rate else 0.0
            next_at = time.monotonic()
            for task_id, message in state.tasks:
                while len(state.published) - len(state.done) >= self.settings.backlog or time.monotonic() < next_at:
                    if state.stopping.wait(0.01):
                        return
                next_at = max(next_at + gap, time.monotonic() - 1.0)
                first_try, failed = time.time(), False
                while True:
                    if state.stopping.is_set():
                        return
                    try:
                        if conn is None:
                            conn = self._connection()
                        state.sent.add(task_id)
                        # declare=[]: task_queue is the workers' quorum queue, whatever PROJ_QUEUE_TYPE says here.
                        work.apply_async(
                            args=[message], task_id=task_id, connection=conn, ignore_result=True, declare=[]
                        )
                        break
                    except Exception as exc:  # refused, nacked past the bound, connection lost: same id again
                        failed = True
                        state.publish_errors[type(exc).__name__] += 1
                        if len(state.publish_error_samples) < 10:
                            state.publish_error_samples.append(f"{task_id}: {type(exc).__name__}: {exc}")
                        state.republished.add(task_id)
                        with contextlib.suppress(Exception):
                            conn.release()
                        conn = None
                        if time.time() - first_try > PUBLISH_DEADLINE:
                            state.publisher_failure = f"could not publish {task_id} for {PUBLISH_DEADLINE:.0f} s: {exc}"
                            return
                        state.stopping.wait(0.2)
                confirmed = time.time()
                if failed or confirmed - first_try > REFUSED_AFTER:
                    self.refused.append((first_try, confirmed))
                if state.first_publish is None:
                    state.first_publish = first_try
                state.published[task_id] = message
            state.republished &= set(state.published)
            with contextlib.suppress(Exception):
                conn.release()
        except Exception as exc:
            state.publisher_failure = f"publisher crashed: {type(exc).__name__}: {exc}"
        finally:
            state.publishing_done.set()

    def _connection(self):
        from kombu import Connection

        # Socket timeouts: a publish on a frozen node that times out makes kombu close that connection, and
        # py-amqp waits for the node's close-ok with no timeout of its own (measured: one publish held 60 s,
        # until the thaw). A confirm itself is waited for with PROJ_PUBLISH_TIMEOUT (proj/tasks.py).
        options = {"confirm_publish": True, "read_timeout": PUBLISHER_SOCKET_TIMEOUT}
        options["write_timeout"] = PUBLISHER_SOCKET_TIMEOUT
        conn = Connection(self.cluster.failover_url(), transport_options=options, connect_timeout=3)
        conn.ensure_connection(max_retries=len(CLUSTER_NODES))
        return conn

    # -- the monitor: the shared ledger, tailed -----------------------------------------------------

    def _monitor(self) -> None:
        while not self.state.stopping.wait(0.1):
            self._read_ledger()

    def _read_ledger(self) -> None:
        if not hasattr(self, "shared_ledger"):  # the cluster never came up (no engine, no images): nothing to read
            return
        with self._reading:
            self._read_new_rows()

    def _read_new_rows(self) -> None:
        state = self.state
        try:
            conn = sqlite3.connect(str(self.shared_ledger), timeout=30)
            try:
                rows = conn.execute(
                    "SELECT rowid, task_id, event, hostname, pid, at FROM executions WHERE rowid > ? ORDER BY rowid",
                    (self._last_rowid,),
                ).fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return
        with state.lock:
            for rowid, task_id, event, host, pid, at in rows:
                self._last_rowid = rowid
                if not task_id.startswith(self.prefix):
                    continue
                state.pids_of[host].add(int(pid))
                if event == "start":
                    self.starts_by_host[host].append(float(at))
                else:
                    state.done.add(task_id)
                    state.last_done = float(at)

    # -- the faults ----------------------------------------------------------------------------------

    def _inject_all(self) -> None:
        state = self.state
        for n, planned in enumerate(state.schedule, 1):
            if not self._wait_done(planned.after_done):
                state.say(f" [!] no task done for {STALL_TIMEOUT:.0f} s: the remaining faults are not injected")
                state.skipped.extend({"kind": p.kind, "why": "run stalled"} for p in state.schedule[n - 1 :])
                return
            try:
                self._inject(n, planned)
            except ComposeError as exc:
                state.errors.append(f"fault {n} {planned.kind}: {exc}")
                state.say(f" [!] fault {n} {planned.kind}: {exc}")
                raise ChaosError(f"fault {n} {planned.kind} could not be injected or healed: {exc}") from None

    def _wait_done(self, count: int) -> bool:
        state = self.state
        last, since = -1, time.monotonic()
        while len(state.done) < count:
            state.check_publisher()
            if len(state.done) != last:
                last, since = len(state.done), time.monotonic()
            elif time.monotonic() - since > STALL_TIMEOUT:
                return False
            time.sleep(0.05)
        return True

    def _inject(self, n: int, planned: PlannedFault) -> None:
        state, cluster = self.state, self.cluster
        cluster.wait_whole(WHOLE_TIMEOUT)
        by_node = cluster.consumers_by_node()
        node = CLUSTER_NODES[planned.worker]
        if not by_node[node]:  # a fault where no worker consumes measures no failover: take the busiest node
            node = max(CLUSTER_NODES, key=lambda x: len(by_node[x]))
        record = FaultRecord(kind=planned.kind, node=node, begin=time.time(), affected=sorted(by_node[node]))
        state.say(
            f" [!] fault {n}/{len(state.schedule)} {planned.kind} {node} "
            f"({len(state.done)} done; its workers: {', '.join(record.affected) or 'none'})"
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
        if planned.kind != "crash":  # measured after a thaw and after a healed partition (a test timed out on it)
            self._restart_if_partitioned(node)
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
        self._read_ledger()
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
                after = [t for t in self.starts_by_host.get(host, ()) if t - record.begin >= moved]
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

    def _restart_if_partitioned(self, node: str) -> None:
        """A thawed node whose peers recorded a partition: restart it (what RabbitMQ's docs prescribe).

        Measured: once recorded after a thaw, the partition stayed (pause_minority does not clear it), so
        a record seen for :data:`PARTITION_SEEN_FOR` s running is not waited on up to the deadline.
        """
        deadline = time.monotonic() + PARTITION_AFTER_THAW
        seen_since = None
        while time.monotonic() < deadline:
            if self.cluster.is_whole():
                return
            views = {n: self.cluster.node_view(n) for n in CLUSTER_NODES}
            if any(v and v["partitions"] for v in views.values()):
                seen_since = seen_since or time.monotonic()
                if time.monotonic() - seen_since >= PARTITION_SEEN_FOR:
                    break
            else:
                seen_since = None
            time.sleep(1.0)
        views = {n: self.cluster.node_view(n) for n in CLUSTER_NODES}
        if not any(v and v["partitions"] for v in views.values()):
            return
        begin = time.time()
        self.state.say(f" [!] {node} healed into a recorded partition (pause_minority does not heal it): restarting it")
        from proj.harness.compose import docker

        docker("restart", "-t", "30", self.cluster.container(node))
        self.cluster.wait_whole(WHOLE_TIMEOUT)
        self.state.faults.append(
            checker.Fault("restart_after_heal", begin, time.time(), note=f"node {node}: partition recorded after heal")
        )

    # -- the end -------------------------------------------------------------------------------------

    def _drain(self) -> dict:
        state = self.state
        state.say(" [*] faults done; waiting for every task and an empty task_queue")
        deadline = time.monotonic() + self.settings.drain_timeout
        settled, sample = 0, None
        while time.monotonic() < deadline:
            self._read_ledger()
            sample = self._queue_state()
            empty = sample is not None and sample["ready"] == 0 and sample["unacked"] == 0
            all_done = set(state.published) <= state.done
            settled = settled + 1 if empty and all_done else 0
            if settled >= SETTLED_SAMPLES:
                break
            time.sleep(0.5)
        queue = dict(sample or {"ready": None, "unacked": None, "consumers": None})
        queue["settled"] = settled >= SETTLED_SAMPLES
        queue["dead_letters"] = self._dead_letters()
        queue["other_queues"] = {}
        return queue

    def _queue_state(self) -> dict | None:
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

    def _dead_letters(self) -> int | None:
        with contextlib.suppress(Exception):
            q = self.cluster.management().queue(config.DEAD_QUEUE_NAME)
            return int(q.get("messages", 0) or 0) if q else 0
        return None

    def _report(self, queue: dict | None, started: float, interrupted: bool) -> dict:
        state = self.state
        # The run's own ledger: this run's rows of the one the containers share (a test module runs several).
        own = state.ledger_path
        own.unlink(missing_ok=True)
        with contextlib.suppress(sqlite3.Error, OSError, AttributeError):
            rows = [dict(r) for r in ledger.rows(str(self.shared_ledger)) if r["task_id"].startswith(self.prefix)]
            conn = ledger.connect(str(own))
            conn.executemany(
                "INSERT INTO executions VALUES (:task_id, :message, :event, :redelivered, :hostname, :pid, :at)", rows
            )
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
        return f"compose project {project}: 3 RabbitMQ nodes in containers (quorum task_queue, pause_minority)"

    def _figures(self) -> dict:
        """Per fault kind: faults, failover (affected workers consuming again) p50/p99, producer refused seconds."""
        by_kind: dict[str, dict] = {}
        for kind in sorted({r.kind for r in self.records}):
            records = [r for r in self.records if r.kind == kind]
            again = [v for r in records for v in r.consumed_again.values() if v is not None]
            moved = [v for r in records for v in r.reconnected.values() if v is not None]
            never = sum(1 for r in records for v in r.consumed_again.values() if v is None)
            refused = sum(self._refused_within(r.begin, r.whole or r.begin) for r in records)
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
        total_refused = sum(end - begin for begin, end in self.refused)
        return {
            "project": self.cluster.project if self.cluster else None,
            "worker_containers": self.cluster.workers if self.cluster else None,
            "by_kind": by_kind,
            "producer_refused_seconds": _r(total_refused),
            "producer_refused_publishes": len(self.refused),
            "faults": [dataclasses.asdict(r) for r in self.records],
        }

    def _refused_within(self, begin: float, end: float) -> float:
        return sum(max(0.0, min(e, end) - max(b, begin)) for b, e in self.refused)


def docker_timestamp(stamp: str) -> float | None:
    """``docker logs -t``'s RFC 3339 time (nanoseconds, Z) as a Unix time."""
    from datetime import datetime

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
