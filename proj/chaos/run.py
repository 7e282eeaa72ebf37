"""One chaos run: a broker, real workers, confirmed publishes, faults at random points, then the count.

Usage::

    report = Chaos(Settings(tasks=500, workers=3, faults=10, seed=42)).run()

Threads: the publisher (numbered tasks, confirmed, paced so publishing lasts the whole run and
broker restarts hit producers too), the monitor (tails the ledger; maps every worker process id to
the worker that forked it), one restarter per stopped worker, and the caller's thread, which
injects the faults, waits for the queue to drain and hands everything to ``checker.check``.
Everything started is ended in ``finally``, also on Ctrl+C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from proj import config, ledger
from proj.chaos import checker
from proj.chaos.schedule import (
    COLD_SHUTDOWN,
    KILL_CHILD,
    KILL_WORKER,
    KINDS,
    NODE_KILL,
    RESTART_BROKER,
    STOPS_WORKER,
    WARM_SHUTDOWN,
    PlannedFault,
    fault_schedule,
    task_messages,
)
from proj.harness.workers import WorkerProcess
from proj.rabbit.management import Management, ManagementError, hide_password
from proj.rabbit.node import BrokerError, Node, pid_alive, private_node

SIGNALS = {KILL_WORKER: signal.SIGKILL, COLD_SHUTDOWN: signal.SIGQUIT, WARM_SHUTDOWN: signal.SIGTERM}
#: How long a stopped worker may take to exit before it is SIGKILLed (and the run says so).
EXIT_TIMEOUT = {KILL_WORKER: 10.0, COLD_SHUTDOWN: 30.0, WARM_SHUTDOWN: 60.0}
#: Pool children orphaned by a killed main process get this long to finish and exit on their own.
ORPHAN_GRACE = 5.0
#: A killed cluster node is started again once this many more tasks are done without it (or after NODE_DOWN_MAX s).
NODE_DOWN_TASKS = 10
NODE_DOWN_MAX = 30.0
WORKER_START_TIMEOUT = 180.0
#: A publish keeps being retried (same task id) this long, e.g. through a broker restart.
PUBLISH_DEADLINE = 180.0
#: The publisher stops pacing itself after this long without a task done (tasks in flight may be lost).
PACING_STALL = 60.0
#: No task done for this long means the run is stuck: stop injecting and go count.
STALL_TIMEOUT = 180.0
#: Queue samples in a row with nothing ready and nothing unacked before the queue counts as drained
#: (the management API's statistics lag about 0.5 s behind).
SETTLED_SAMPLES = 3
SAMPLE_INTERVAL = 0.5
MONITOR_INTERVAL = 0.05
DEAD_QUEUE = f"{config.QUEUE_NAME}.dead"


class ChaosError(RuntimeError):
    """The run could not be carried out (not a verdict); the message says what to do."""


@dataclasses.dataclass
class Settings:
    tasks: int = 500
    workers: int = 3
    faults: int = 10
    seed: int | None = None
    seconds_per_dot: float = 0.01
    broker_url: str | None = None
    out: Path | None = None
    #: Published but not yet done: the publisher waits above this, so it publishes during the faults.
    backlog: int = 50
    max_dots: int = 3
    drain_timeout: float = 300.0
    #: Nodes of a private RabbitMQ cluster (quorum task_queue) instead of one node; 0: one node.
    cluster: int = 0
    #: The fault kinds to draw from; empty: every kind that applies to the broker.
    kinds: tuple[str, ...] = ()


@dataclasses.dataclass(eq=False)
class Slot:
    """One worker name and its successive processes (a stopped worker is started again under its name)."""

    name: str
    proc: WorkerProcess | None = None
    incarnation: int = 0
    ready: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}#{self.incarnation}"


class Chaos:
    def __init__(self, settings: Settings, out=None):
        self.s = settings
        self.stream = out or sys.stdout
        self.seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
        self.run_id = secrets.token_hex(4)
        self.external = settings.broker_url is not None
        kinds = tuple(k for k in KINDS if self._applies(k) and (not settings.kinds or k in settings.kinds))
        self.schedule: list[PlannedFault] = fault_schedule(
            self.seed,
            settings.faults,
            settings.tasks,
            settings.workers,
            kinds=kinds,
            force=(NODE_KILL,) if settings.cluster else (RESTART_BROKER,),
        )
        messages = task_messages(self.seed, settings.tasks, settings.max_dots)
        self.tasks = [(f"chaos-{self.run_id}-{i:05d}", m) for i, m in enumerate(messages)]

        self.run_dir: Path | None = None
        self.node: Node | None = None
        self.cluster = None  # a proj.cluster.Cluster when settings.cluster
        self.url = settings.broker_url or ""
        self.mgmt: Management | None = None
        self.slots = [Slot(f"w{i}") for i in range(1, settings.workers + 1)]
        #: Every worker process started, with its incarnation key ("w1#0"), so each is ended at the end.
        self.all_procs: list[tuple[WorkerProcess, str]] = []
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.restarters: list[threading.Thread] = []

        # What the publisher did.
        self.published: dict[str, str] = {}
        self.republished: set[str] = set()
        self.sent: set[str] = set()
        self.publish_errors: Counter = Counter()
        self.publish_error_samples: list[str] = []
        self.publisher_failure: str | None = None
        self.first_publish: float | None = None
        self.publishing_done = threading.Event()

        # What the monitor saw.
        self.done: set[str] = set()
        self.running: dict[int, str] = {}
        #: Process ids seen in each worker incarnation (main and pool children). Ids are reused (the
        #: machine wraps at pid_max), so a fault's processes are those of its incarnation's set.
        self.pids_of: dict[str, set[int]] = defaultdict(set)
        self.last_done: float | None = None

        self.faults: list[checker.Fault] = []
        self.skipped: list[dict] = []
        self.worker_restarts = 0
        self.errors: list[str] = []

    def _applies(self, kind: str) -> bool:
        """Node kills need a cluster; a broker restart needs the run's own single node."""
        if kind == NODE_KILL:
            return bool(self.s.cluster)
        if kind == RESTART_BROKER:
            return not self.external and not self.s.cluster
        return True

    # -- console -------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.run_dir is not None:
            with contextlib.suppress(OSError), open(self.run_dir / "chaos.log", "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.time()
        self._prepare_dir()
        kinds = Counter(f.kind for f in self.schedule)
        self.say(
            f" [*] chaos run {self.run_id}: {self.s.tasks} tasks, {self.s.workers} workers, "
            f"{len(self.schedule)} faults ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), "
            f"seed {self.seed}; run dir {self.run_dir}"
        )
        queue: dict | None = None
        interrupted = False
        try:
            try:
                self._start_broker()
            except ChaosError:
                self._forget_dir()
                raise
            self._start_workers()
            self._start_thread(self._monitor, "chaos-monitor")
            self._start_thread(self._publish_all, "chaos-publisher")
            self._inject_faults()
            self._wait_publishing()
            self._wait_restarts()
            queue = self._drain()
        except KeyboardInterrupt:
            interrupted = True
            self.say(" [*] interrupted: stopping everything this run started")
        finally:
            self._teardown()
        report = self._verdict(queue, started)
        report["interrupted"] = interrupted
        if interrupted:
            report["ok"] = False
        (self.run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if interrupted:
            raise KeyboardInterrupt
        return report

    def _prepare_dir(self) -> None:
        if self.s.out is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="proj-chaos-"))
        else:
            self.run_dir = Path(self.s.out).absolute()
            if (self.run_dir / "ledger.sqlite").exists():
                run_dir, self.run_dir = self.run_dir, None
                raise ChaosError(f"{run_dir} already holds a chaos run (ledger.sqlite): pass an empty --out")
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                run_dir, self.run_dir = self.run_dir, None
                raise ChaosError(f"cannot create the run dir {run_dir}: {exc.strerror}") from exc
        self.ledger_path = self.run_dir / "ledger.sqlite"
        ledger.connect(str(self.ledger_path))  # creates the table in WAL mode before any worker writes
        (self.run_dir / "schedule.json").write_text(
            json.dumps({"seed": self.seed, "faults": [f.to_dict() for f in self.schedule]}, indent=2) + "\n"
        )

    def _forget_dir(self) -> None:
        """Remove a temp run dir in which nothing ran (a broker that could not be reached)."""
        if self.s.out is None and self.node is None and self.cluster is None and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def _start_thread(self, target, name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    # -- broker ------------------------------------------------------------------------------

    def _start_broker(self) -> None:
        if self.external:
            self.mgmt = Management.for_broker(self.url)
            self._check_external_broker()
            self.say(
                f" [*] broker {hide_password(self.url)} (given): no broker restarts in this run, "
                "only a node the run starts itself can be restarted"
            )
            return
        if self.s.cluster:
            self._start_cluster()
            return
        self.node = private_node(self.run_dir / "rabbitmq")
        self.say(f" [*] starting a private RabbitMQ on 127.0.0.1:{self.node.port}")
        try:
            self.node.start()
        except BrokerError as exc:
            raise ChaosError(str(exc)) from exc
        self.url = self.node.url
        self.mgmt = Management(self.node.management_url)

    def _start_cluster(self) -> None:
        from proj.rabbit.cluster import Cluster, free_port_run

        size = self.s.cluster
        port = free_port_run(size)
        management_port = free_port_run(size, avoid=tuple(range(port, port + size)))
        self.cluster = Cluster(self.run_dir / "rabbitmq", size=size, port=port, management_port=management_port)
        self.say(f" [*] starting a private RabbitMQ cluster of {size} nodes on 127.0.0.1:{port}-{port + size - 1}")
        try:
            self.cluster.start()
        except BrokerError as exc:
            raise ChaosError(str(exc)) from exc
        self.url = self.cluster.url
        self.mgmt = self.cluster.management()

    def _kill_node(self, n: int, planned: PlannedFault) -> None:
        """SIGKILL one node (a crash), let work go on without it, start it again."""
        number = planned.worker % self.cluster.size + 1
        with self.lock:
            running = sorted({t for p, t in self.running.items() if pid_alive(p)})
        begin = time.time()
        node = self.cluster.kill_node(number)
        self.say(
            f" [!] fault {n}/{len(self.schedule)} {NODE_KILL}: SIGKILL node {number} ({node.node_name}), "
            f"{len(running)} tasks running"
        )
        # At most one node is down at a time: a quorum queue needs a majority of its replicas.
        target = min(len(self.done) + NODE_DOWN_TASKS, self.s.tasks)
        deadline = time.monotonic() + NODE_DOWN_MAX
        while len(self.done) < target and time.monotonic() < deadline and not self.stopping.wait(0.05):
            self._check_publisher()
        done_while_down = len(self.done) - target + NODE_DOWN_TASKS
        try:
            self.cluster.start_node(number)
        except BrokerError as exc:
            raise ChaosError(f"node {number} did not come back into the cluster: {exc}") from exc
        end = time.time()
        note = f"node {number} down {end - begin:.1f} s, {done_while_down} tasks done meanwhile"
        self.faults.append(checker.Fault(NODE_KILL, begin, end, None, None, note))
        self.say(f"     {note}")

    def _check_external_broker(self) -> None:
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

    def _restart_broker(self, n: int) -> None:
        with self.lock:
            running = sorted({t for p, t in self.running.items() if pid_alive(p)})
        self.say(f" [!] fault {n}/{len(self.schedule)} {RESTART_BROKER}: {len(running)} tasks running")
        begin = time.time()
        try:
            self.node.stop()
            self.node.start()
        except BrokerError as exc:
            raise ChaosError(f"the broker did not come back after a restart: {exc}") from exc
        end = time.time()
        self.faults.append(checker.Fault(RESTART_BROKER, begin, end, None, None, f"down {end - begin:.1f} s"))
        self.say(f"     broker back after {end - begin:.1f} s")

    # -- workers -----------------------------------------------------------------------------

    def _new_worker(self, name: str, key: str) -> WorkerProcess:
        proc = WorkerProcess(
            name,
            self.url,
            self.run_dir / "workers",
            seconds_per_dot=self.s.seconds_per_dot,
            env={"PROJ_LEDGER": str(self.ledger_path)},
        )
        if self.cluster is not None:
            # A quorum task_queue; worker wN's failover list starts at node N, so they spread over the nodes.
            first = (int(name.lstrip("w")) - 1) % self.cluster.size + 1
            proc.broker_url = proc.env["CELERY_BROKER_URL"] = self.cluster.failover_url(first)
            proc.env.update({"PROJ_QUEUE_TYPE": "quorum", "PROJ_MANAGEMENT_URL": self.cluster.management_url})
        with self.lock:
            self.all_procs.append((proc, key))
        return proc

    def _start_workers(self) -> None:
        for slot in self.slots:
            slot.proc = self._new_worker(slot.name, slot.key).start()
        for slot in self.slots:
            if not self._wait_ready(slot.proc):
                raise ChaosError(f"worker {slot.name} did not start: see {slot.proc.log_path}")
            slot.ready = True
        self.say(f" [*] {len(self.slots)} workers consuming {config.QUEUE_NAME}")

    def _wait_ready(self, proc: WorkerProcess) -> bool:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                proc.wait_ready(timeout=1)
                return True
            except TimeoutError:
                continue
            except RuntimeError:  # exited before it was ready
                return False
        return False

    def _ready_slots(self) -> list[Slot]:
        with self.lock:
            return [s for s in self.slots if s.ready and s.proc is not None and _running(s.proc)]

    def _pick_slot(self, planned: PlannedFault) -> Slot | None:
        """The planned worker if it is up, else the next one that is; waits so one worker stays up."""
        need = 2 if planned.kind in STOPS_WORKER and len(self.slots) > 1 else 1
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_publisher()
            ready = self._ready_slots()
            if len(ready) >= need:
                order = self.slots[planned.worker :] + self.slots[: planned.worker]
                for slot in order:
                    if any(slot is r for r in ready) and (planned.kind != KILL_CHILD or _live_children(slot.proc)):
                        return slot
            if self.stopping.wait(0.05):
                return None
        return None

    def _scan(self, slot: Slot) -> None:
        with self.lock:
            proc, key = slot.proc, slot.key
            # Once reaped, the leader's id may belong to another process: its children are not ours.
            if proc is None or proc.proc is None or proc.proc.returncode is not None:
                return
            self.pids_of[key].update([proc.pid, *proc.children()])

    def _stop_worker(self, n: int, planned: PlannedFault, slot: Slot) -> None:
        kind = planned.kind
        with self.lock:
            proc, key = slot.proc, slot.key
            slot.ready = False
        self._scan(slot)
        with self.lock:
            running = [self.running[p] for p in self.pids_of[key] if p in self.running and pid_alive(p)]
        begin = time.time()
        if _running(proc):
            os.kill(proc.pid, SIGNALS[kind])
        fault = checker.Fault(kind, begin, begin, None, key, f"{SIGNALS[kind].name} to pid {proc.pid}")
        self.faults.append(fault)
        self.say(
            f" [!] fault {n}/{len(self.schedule)} {kind}: {SIGNALS[kind].name} {slot.name} (pid {proc.pid}), "
            f"running {_tasks(running)}"
        )
        self.restarters.append(self._start_thread(lambda: self._restart(slot, proc, fault), f"restart-{slot.name}"))

    def _kill_child(self, n: int, slot: Slot) -> None:
        self._scan(slot)
        children = _live_children(slot.proc)
        if not children:
            self.skipped.append({"kind": KILL_CHILD, "why": f"{slot.name} had no pool child"})
            return
        child = children[0]
        with self.lock:
            running = [self.running[child]] if child in self.running else []
        begin = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        self.faults.append(
            checker.Fault(KILL_CHILD, begin, begin, frozenset({child}), slot.key, f"SIGKILL to pool child {child}")
        )
        self.say(
            f" [!] fault {n}/{len(self.schedule)} {KILL_CHILD}: SIGKILL {slot.name}'s pool child (pid {child}), "
            f"running {_tasks(running)}"
        )

    def _restart(self, slot: Slot, proc: WorkerProcess, fault: checker.Fault) -> None:
        """Wait for the stopped worker to exit, end what is left of its group, start it again."""
        key = fault.worker
        try:
            # Wait without reaping: while the main process is an unreaped zombie its id, and so its
            # process group's id, cannot go to another process, and ending the group stays safe.
            if not _wait_gone(proc.pid, EXIT_TIMEOUT[fault.kind]):
                fault.note += f"; still running after {EXIT_TIMEOUT[fault.kind]:.0f} s, SIGKILLed"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _wait_gone(proc.pid, 10)
            fault.end = time.time()
            # Orphaned pool children may finish their task (and write 'done', with no ack to follow).
            deadline = time.monotonic() + ORPHAN_GRACE
            while time.monotonic() < deadline and self._group_alive(key, proc.pid):
                time.sleep(0.05)
            self._end(proc, key)  # SIGKILL what is left of the group, then reap
            fault.note += f"; exit status {proc.proc.returncode} after {fault.end - fault.begin:.1f} s"
            with contextlib.suppress(OSError):
                proc.log_path.rename(proc.log_path.with_name(f"{slot.name}.{slot.incarnation}.log"))
            for attempt in range(3):
                if self.stopping.is_set():
                    return
                with self.lock:
                    slot.incarnation += 1
                    new = self._new_worker(slot.name, slot.key)
                    slot.proc = new
                new.start()
                if self._wait_ready(new):
                    with self.lock:
                        slot.ready = True
                        self.worker_restarts += 1
                    return
                self.errors.append(f"{slot.name} did not start again (attempt {attempt + 1}): see {new.log_path}")
                self._end(new, slot.key)
        except Exception as exc:  # a restarter must not die silently: the run would wait forever
            self.errors.append(f"restarting {slot.name}: {type(exc).__name__}: {exc}")

    def _group_alive(self, key: str, pgid: int) -> bool:
        """Whether a process of that worker incarnation, other than its main process, still runs."""
        with self.lock:
            pids = set(self.pids_of[key]) - {pgid}
        return any(_in_group(p, pgid) for p in pids)

    def _end(self, proc: WorkerProcess, key: str) -> None:
        """SIGKILL a worker process and whatever is left of its group, never another process."""
        if proc.proc is None:
            return
        if proc.proc.returncode is None:
            proc.kill()  # main process not reaped yet: its group id is still ours
            return
        # Reaped earlier: its group id may be reused; end only known members still in that group.
        with self.lock:
            pids = set(self.pids_of[key]) - {proc.pid}
        for pid in pids:
            if _in_group(pid, proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _wait_restarts(self) -> None:
        for t in self.restarters:
            t.join(WORKER_START_TIMEOUT + 60)

    # -- publisher ---------------------------------------------------------------------------

    def _publish_all(self) -> None:
        from kombu import Connection

        conn = None
        try:
            from proj import tasks
            from proj.celery import app

            # The task of proj's app, not the thread's current app: in a thread other than the one that
            # created the app, Celery's current app is its fallback 'default' app, which routes to 'celery'.
            work = app.tasks[tasks.work.name]
            paced = True
            for task_id, message in self.tasks:
                last, since = len(self.done), time.monotonic()
                while paced and len(self.published) - len(self.done) >= self.s.backlog:
                    if self.stopping.wait(0.01):
                        return
                    if len(self.done) != last:
                        last, since = len(self.done), time.monotonic()
                    elif time.monotonic() - since > PACING_STALL:
                        # Tasks in flight that never finish (lost?) must not stop the run: the count will tell.
                        paced = False
                        self.say(
                            f" [!] no task done for {PACING_STALL:.0f} s with {self.s.backlog} in flight: "
                            "publishing the rest without waiting"
                        )
                failed_since = None
                while True:
                    if self.stopping.is_set():
                        return
                    try:
                        if conn is None:
                            conn = Connection(self.url, transport_options={"confirm_publish": True}, connect_timeout=5)
                            conn.ensure_connection(max_retries=1)
                        self.sent.add(task_id)
                        work.apply_async(
                            args=[message],
                            task_id=task_id,
                            connection=conn,
                            ignore_result=True,
                            retry=False,
                            # On a cluster the workers declared task_queue as a quorum queue; this
                            # process's PROJ_QUEUE_TYPE may say otherwise.
                            **({"declare": []} if self.cluster is not None else {}),
                        )
                        break
                    except Exception as exc:  # broker restarting, connection reset: same task id again
                        self.publish_errors[type(exc).__name__] += 1
                        if len(self.publish_error_samples) < 10:
                            self.publish_error_samples.append(f"{task_id}: {type(exc).__name__}: {exc}")
                        if task_id in self.sent:
                            self.republished.add(task_id)
                        if conn is not None:
                            with contextlib.suppress(Exception):
                                conn.release()
                            conn = None
                        failed_since = failed_since or time.monotonic()
                        if time.monotonic() - failed_since > PUBLISH_DEADLINE:
                            self.publisher_failure = (
                                f"could not publish {task_id} for {PUBLISH_DEADLINE:.0f} s: {type(exc).__name__}: {exc}"
                            )
                            return
                        self.stopping.wait(0.2)
                if self.first_publish is None:
                    self.first_publish = time.time()
                self.published[task_id] = message
            # Only ids published again after an error can exist twice; one that was sent once is not.
            self.republished &= set(self.published)
        except Exception as exc:
            self.publisher_failure = f"publisher crashed: {type(exc).__name__}: {exc}"
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.release()
            self.publishing_done.set()

    def _check_publisher(self) -> None:
        if self.publisher_failure:
            raise ChaosError(self.publisher_failure)

    def _wait_publishing(self) -> None:
        # The publisher ends by itself: each publish has a deadline and pacing gives up on a stall.
        self.publishing_done.wait()
        self._check_publisher()

    # -- monitor -----------------------------------------------------------------------------

    def _monitor(self) -> None:
        conn = sqlite3.connect(str(self.ledger_path), timeout=60)
        last_rowid = 0
        last_report = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    rows = conn.execute(
                        "SELECT rowid, task_id, event, pid, at FROM executions WHERE rowid > ? ORDER BY rowid",
                        (last_rowid,),
                    ).fetchall()
                except sqlite3.OperationalError:  # busy beyond the timeout: read again next time
                    rows = []
                with self.lock:
                    for rowid, task_id, event, pid, at in rows:
                        last_rowid = rowid
                        if event == "start":
                            self.running[pid] = task_id
                        else:
                            self.done.add(task_id)
                            self.last_done = at
                            if self.running.get(pid) == task_id:
                                del self.running[pid]
                for slot in self.slots:
                    self._scan(slot)
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    self.say(
                        f" [*] {len(self.done)}/{self.s.tasks} done, {len(self.published)} published, "
                        f"{len(self._ready_slots())}/{len(self.slots)} workers up, {len(self.faults)} faults so far"
                    )
                time.sleep(MONITOR_INTERVAL)
        finally:
            conn.close()

    # -- faults ------------------------------------------------------------------------------

    def _inject_faults(self) -> None:
        for n, planned in enumerate(self.schedule, 1):
            if not self._wait_done(planned.after_done):
                self.say(f" [!] no task done for {STALL_TIMEOUT:.0f} s: the remaining faults are not injected")
                self.skipped.extend({"kind": p.kind, "why": "run stalled"} for p in self.schedule[n - 1 :])
                return
            if planned.delay:
                time.sleep(planned.delay)
            if planned.kind == RESTART_BROKER:
                self._restart_broker(n)
                continue
            if planned.kind == NODE_KILL:
                self._kill_node(n, planned)
                continue
            slot = self._pick_slot(planned)
            if slot is None:
                self.skipped.append({"kind": planned.kind, "why": "no worker up to take it"})
                self.say(f" [!] fault {n}/{len(self.schedule)} {planned.kind} skipped: no worker up")
            elif planned.kind == KILL_CHILD:
                self._kill_child(n, slot)
            else:
                self._stop_worker(n, planned, slot)

    def _wait_done(self, count: int) -> bool:
        last, since = -1, time.monotonic()
        while len(self.done) < count:
            self._check_publisher()
            if len(self.done) != last:
                last, since = len(self.done), time.monotonic()
            elif time.monotonic() - since > STALL_TIMEOUT:
                return False
            time.sleep(0.01)
        return True

    # -- the end -----------------------------------------------------------------------------

    def _queue_state(self) -> dict | None:
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

    def _dead_letters(self) -> int | None:
        """Messages in the dead-letter queue, if there is one (a task dead-lettered is not done)."""
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(self.url, connect_timeout=5) as conn:
            return conn.default_channel.queue_declare(DEAD_QUEUE, passive=True).message_count
        return None

    def _drain(self) -> dict:
        """Wait until task_queue holds nothing ready and nothing unacknowledged, several samples in a row."""
        self.say(" [*] faults done; waiting for task_queue to drain")
        deadline = time.monotonic() + self.s.drain_timeout
        settled = 0
        state = None
        while time.monotonic() < deadline:
            state = self._queue_state()
            empty = state is not None and state["ready"] == 0 and state["unacked"] == 0
            settled = settled + 1 if empty else 0
            all_done = len(self.done) >= len(self.published)
            # Once every task is done, a few samples suffice; a task still missing gets longer.
            if settled >= (SETTLED_SAMPLES if all_done else 4 * SETTLED_SAMPLES):
                break
            time.sleep(SAMPLE_INTERVAL)
        state = dict(state or {"ready": None, "unacked": None, "consumers": None})
        state["settled"] = settled >= SETTLED_SAMPLES
        if not state["settled"]:
            self.say(f" [!] task_queue did not drain within {self.s.drain_timeout:.0f} s: {state}")
        state["dead_letters"] = self._dead_letters()
        state["other_queues"] = self._other_queues()
        return state

    def _other_queues(self) -> dict[str, int]:
        """Queues other than task_queue holding messages: where a lost task may have gone instead."""
        try:
            queues = self.mgmt.queues()
        except ManagementError:
            return {}
        skip = (config.QUEUE_NAME, DEAD_QUEUE)
        return {q["name"]: q.get("messages", 0) for q in queues if q["name"] not in skip and q.get("messages")}

    def _teardown(self) -> None:
        self.stopping.set()
        with self.lock:
            procs = list(self.all_procs)
        running = [p for p, _ in procs if _running(p)]
        for proc in running:  # warm shutdown: nothing should be running by now
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in running:
            _wait_gone(proc.pid, max(0.1, deadline - time.monotonic()))
        for proc, key in procs:
            self._end(proc, key)
        for t in self.threads:
            t.join(10)
        with self.lock:  # a restarter may have started one more in the meantime
            procs = list(self.all_procs)
        for proc, key in procs:
            self._end(proc, key)
        if self.node is not None:
            self.node.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def _verdict(self, queue: dict | None, started: float) -> dict:
        rows = ledger.rows(str(self.ledger_path))
        for fault in self.faults:
            if fault.pids is None and fault.worker is not None:
                fault.pids = frozenset(self.pids_of[fault.worker])
        unconfirmed = self.sent - set(self.published)
        report = checker.check(self.published, rows, self.faults, self.republished, unconfirmed, queue)
        if queue is None or not queue.get("settled"):
            report["ok"] = False
        unknown = sorted({int(r["pid"]) for r in rows} - set().union(*self.pids_of.values()))
        broker = "given" if self.external else (f"cluster of {self.s.cluster}" if self.s.cluster else "private")
        end = self.last_done or time.time()
        work_seconds = end - self.first_publish if self.first_publish else None
        report.update(
            {
                "run_id": self.run_id,
                "seed": self.seed,
                "tasks": self.s.tasks,
                "workers": self.s.workers,
                "seconds_per_dot": self.s.seconds_per_dot,
                "broker": broker,
                "broker_restarts": "not injected: the broker was given with --broker-url" if self.external else None,
                "faults_planned": len(self.schedule),
                "faults_skipped": self.skipped,
                "fault_log": [f.to_dict() for f in self.faults],
                "worker_restarts": self.worker_restarts,
                "publish_errors": dict(self.publish_errors),
                "publish_error_samples": self.publish_error_samples,
                "publisher_failure": self.publisher_failure,
                "unattributed_pids": unknown,
                "errors": self.errors,
                "throughput": round(len(self.published) / work_seconds, 1) if work_seconds else None,
                "work_seconds": round(work_seconds, 1) if work_seconds else None,
                "elapsed": round(time.time() - started, 1),
                "run_dir": str(self.run_dir),
            }
        )
        if self.publisher_failure or len(self.published) < self.s.tasks:
            report["ok"] = False
        return report


def _running(proc: WorkerProcess) -> bool:
    """Whether the worker's main process runs; never reaps it (see ``Chaos._restart``)."""
    return proc.proc is not None and proc.proc.returncode is None and pid_alive(proc.pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (a zombie counts), without reaping it. False on timeout."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _in_group(pid: int, pgid: int) -> bool:
    """Whether ``pid`` runs (not a zombie) in process group ``pgid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[2]) == pgid


def _live_children(proc: WorkerProcess) -> list[int]:
    """Pool children that run (a child just killed stays listed until its parent reaps it)."""
    return [pid for pid in proc.children() if pid_alive(pid)]


def _tasks(task_ids: list[str]) -> str:
    if not task_ids:
        return "no task"
    return ", ".join(t.rsplit("-", 1)[-1] for t in task_ids)
