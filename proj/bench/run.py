"""One benchmark run: a private broker, the contenders' workers, every section, the figures.

Every contender runs on the same broker in the same run, and each pair is measured alternately
(A B A B ...), so a machine that gets busier or quieter during the run moves both alike and the
ratios stay fair. The absolute numbers are as noisy as the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import celery
import kombu
import pika
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue

from proj import config
from proj.bench.fleet import (
    PIKA_QUEUE,
    CeleryFleet,
    DramatiqFleet,
    Loader,
    PikaFleet,
    QueueProbe,
    dramatiq_available,
    rss_kib,
)
from proj.bench.load import command as load_command
from proj.bench.load import publish_celery, publish_dramatiq, publish_pika
from proj.bench.report import NO_DRAMATIQ
from proj.celery import app
from proj.harness.events import EventRecorder
from proj.harness.stats import percentile
from proj.harness.workers import REPO_ROOT
from proj.rabbit.management import Management
from proj.rabbit.node import Node, private_node
from proj.tasks import work

#: One '.' is 10 ms in every benchmark worker: "." is the 10 ms task, a message without dots a no-op.
SECONDS_PER_DOT = 0.01
#: Worker processes in the drain section; the other sections use W = 2 (the machine's cores).
DRAIN_WORKERS = (1, 2, 4)
W = 2
TIMEOUT = 300


@dataclasses.dataclass
class Plan:
    """How much of everything one run does."""

    drain_tasks: int
    reps: int
    short_tasks: int
    publish_messages: int
    latency_seconds: float
    latency_reps: int
    dispatch_pairs: int
    heavy_dots: int
    light_dots: int
    dispatch_reps: int
    kills: int

    @classmethod
    def make(cls, quick: bool, scale: float = 1.0) -> Plan:
        def n(value: float, least: int) -> int:
            return max(least, int(value * scale))

        if quick:
            return cls(
                drain_tasks=n(1500, 100),
                reps=2,
                short_tasks=n(300, 20),
                publish_messages=n(500, 50),
                latency_seconds=max(1.0, 3 * scale),
                latency_reps=1,
                dispatch_pairs=4,
                heavy_dots=n(40, 8),
                light_dots=n(10, 2),
                dispatch_reps=1,
                kills=3,
            )
        return cls(
            drain_tasks=n(4000, 100),
            reps=3,
            short_tasks=n(1000, 20),
            publish_messages=n(2000, 50),
            latency_seconds=max(1.0, 6 * scale),
            latency_reps=2,
            dispatch_pairs=4,
            heavy_dots=n(100, 8),
            light_dots=n(25, 2),
            dispatch_reps=2,
            kills=n(10, 10),
        )


_BEGAN = time.monotonic()


def say(line: str) -> None:
    """Progress, on stderr: stdout is the table (or the JSON)."""
    print(f" [*] {time.monotonic() - _BEGAN:4.0f} s  {line}", file=sys.stderr, flush=True)


def versions(node: Node) -> dict:
    rabbit = "unknown"
    with contextlib.suppress(Exception):
        rabbit = Management(node.management_url).request("GET", "overview")["rabbitmq_version"]
    return {
        "cores": os.cpu_count(),
        "rabbitmq": rabbit,
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "pika": pika.__version__,
        "dramatiq": _version("dramatiq"),
        "pool": config.POOL,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def peer_ratios(row: dict, celery_key: str = "celery", dramatiq_key: str = "dramatiq", pika_key: str = "pika") -> None:
    """proj / dramatiq and dramatiq / pika next to proj / pika, when dramatiq ran."""
    if row.get(dramatiq_key):
        row["ratio_dramatiq"] = row[celery_key] / row[dramatiq_key]
        row["dramatiq_ratio_pika"] = row[dramatiq_key] / row[pika_key]


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


#: Runs of one drain before "fewer workers consumed than asked" is an error.
DRAIN_ATTEMPTS = 3


class _TooFewConsumers(RuntimeError):
    """The queue drained before every worker of the fleet had subscribed: the figure is not valid."""


class Bench:
    """Owns the node, the worker fleets and the temp dir of one run; ``close()`` ends them all."""

    def __init__(self, plan: Plan, work_dir: Path | None = None):
        self.plan = plan
        #: A folder given by the caller is kept (logs to read); a temporary one is removed at the end.
        self.keep_dir = work_dir is not None
        self.dir = Path(work_dir).absolute() if work_dir else Path(tempfile.mkdtemp(prefix="proj-bench-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node: Node | None = None
        self.fleets: list = []
        self.probe: QueueProbe | None = None
        #: The peer's fleet, None when dramatiq is not installed (its column is skipped).
        self.dramatiq: DramatiqFleet | None = None

    # -- set-up and tear-down -------------------------------------------------------------------

    def start_broker(self) -> None:
        self.node = private_node(self.dir / "rabbitmq")
        say(f"starting a private RabbitMQ on 127.0.0.1:{self.node.port} (data in {self.dir})")
        self.node.start()
        self.probe = QueueProbe(self.node.url)

    def start_fleets(self, fleets: list) -> None:
        """Start every worker at once, wait until all consume, then pause them all."""
        self.fleets += fleets
        for fleet in fleets:
            fleet.start()
        for fleet in fleets:
            fleet.wait_ready()
        # Every Celery fleet consumes task_queue: all of them stop before any queue can read 0 consumers.
        for fleet in fleets:
            fleet.pause()
        for fleet in fleets:
            self.pause(fleet)

    def start(self) -> None:
        self.start_broker()
        logs, url, spd = self.dir / "workers", self.node.url, SECONDS_PER_DOT
        # Every worker talks to the private node, and sets task_queue's dead-letter policy through its API.
        mgmt = self.node.management_url
        self.celery = CeleryFleet("celery", url, logs, max(DRAIN_WORKERS), seconds_per_dot=spd, management_url=mgmt)
        self.pika = PikaFleet("pika", url, logs, max(DRAIN_WORKERS), seconds_per_dot=spd)
        self.no_events = CeleryFleet(
            "noevents",
            url,
            logs,
            W,
            seconds_per_dot=spd,
            management_url=mgmt,
            settings={"worker_send_task_events": False},
        )
        self.unlimited = CeleryFleet(
            "unlimited", url, logs, W, seconds_per_dot=spd, management_url=mgmt, prefetch_multiplier=0
        )
        fleets = [self.celery, self.pika, self.no_events, self.unlimited]
        if dramatiq_available():
            self.dramatiq = DramatiqFleet("dramatiq", url, logs, max(DRAIN_WORKERS), seconds_per_dot=spd)
            fleets.append(self.dramatiq)
        else:
            say(NO_DRAMATIQ)
        peer = ", 4 dramatiq" if self.dramatiq else ""
        say(f"starting workers: 4 celery, 4 pika{peer}, 2 celery without events, 2 celery with unlimited prefetch")
        self.start_fleets(fleets)

    def with_peer(self, contenders: dict[str, Callable], measure: Callable) -> dict[str, Callable]:
        """``contenders`` plus ``dramatiq: measure(self.dramatiq)`` in the same rotation, when it is installed."""
        if self.dramatiq is not None:
            contenders["dramatiq"] = lambda: measure(self.dramatiq)
        return contenders

    def close(self) -> None:
        for fleet in self.fleets:
            with contextlib.suppress(Exception):
                fleet.stop()
        if self.probe is not None:
            self.probe.close()
        if self.node is not None:
            say("stopping the broker")
            self.node.stop()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- queue control ----------------------------------------------------------------------------

    def pause(self, fleet) -> None:
        fleet.pause()
        self.probe.wait(fleet.queue, lambda ready, consumers: consumers == 0, 60, f"{fleet.workers[0].name}.. paused")

    def fill(self, fleet, messages: list[str], ignore_result: bool = True) -> None:
        """Publish ``messages`` (persistent, confirmed) to the paused fleet's queue, emptied first."""
        self.probe.purge(fleet.queue)
        loader = Loader(self.node.url)
        try:
            if fleet.kind == "celery":
                loader.celery_tasks(messages, ignore_result=ignore_result)
            elif fleet.kind == "dramatiq":
                loader.dramatiq(fleet.queue, messages)
            else:
                loader.plain(fleet.queue, messages)
        finally:
            loader.close()
        self.probe.wait(fleet.queue, lambda ready, consumers: ready == len(messages), 60, "queue filled")

    def drain(self, fleet, workers: int, messages: list[str], ignore_result: bool = True) -> float:
        """Tasks per second: ``messages`` pre-published, then ``workers`` workers resumed at once.

        Timed from the first delivery (the queue's ready count drops) to the queue's last message
        handed out; the at most ``workers`` messages then in flight finish within one task time.
        A run in which the queue drained before every worker had subscribed measured fewer workers
        than asked: it is run again (fast workers empty a small queue in a few milliseconds).
        """
        for attempt in range(1, DRAIN_ATTEMPTS + 1):
            try:
                return self._drain_once(fleet, workers, messages, ignore_result)
            except _TooFewConsumers:
                if attempt == DRAIN_ATTEMPTS:
                    raise
                with Connection(self.node.url) as conn:  # what the paused workers gave back
                    conn.default_channel.queue_purge(fleet.queue)

    def _drain_once(self, fleet, workers: int, messages: list[str], ignore_result: bool) -> float:
        n = len(messages)
        self.fill(fleet, messages, ignore_result)
        fleet.resume(workers)
        self.probe.wait(fleet.queue, lambda ready, c: ready < n, 60, "first delivery", interval=0.001)
        t0 = time.perf_counter()
        _, consumers = self.probe.wait(fleet.queue, lambda ready, c: ready == 0, TIMEOUT, "queue drained")
        t1 = time.perf_counter()
        self.pause(fleet)
        if consumers != workers:
            raise _TooFewConsumers(f"{consumers} of {workers} {fleet.kind} workers were consuming:\n{fleet.log()}")
        # A message delivered but not yet handed to the callback when pika's consumer is cancelled goes
        # back to the queue: it was not done, so it does not count.
        requeued, _ = self.probe.counts(fleet.queue)
        return (n - requeued) / (t1 - t0)

    # -- sections ---------------------------------------------------------------------------------

    def alternate(self, contenders: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
        """Run each contender ``reps`` times, in turn: A B A B ..."""
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(reps):
            for name, measure in contenders.items():
                runs[name].append(measure())
        return runs

    def section_drain(self) -> tuple[list[dict], dict]:
        plan = self.plan
        no_ops = ["bench"] * plan.drain_tasks
        rows, events = [], {}
        for w in DRAIN_WORKERS:
            say(
                f"drain: {plan.drain_tasks} no-op tasks, {w} worker process(es), celery vs pika"
                f"{' vs dramatiq' if self.dramatiq else ''}, {plan.reps} runs each"
            )
            contenders = self.with_peer(
                {
                    "celery": lambda w=w: self.drain(self.celery, w, no_ops),
                    "pika": lambda w=w: self.drain(self.pika, w, no_ops),
                },
                lambda fleet, w=w: self.drain(fleet, w, no_ops),
            )
            if w == W:
                # Events' cost: the same workers with worker_send_task_events = False, in the same rotation.
                contenders["celery_no_events"] = lambda: self.drain(self.no_events, W, no_ops)
            runs = self.alternate(contenders, plan.reps)
            celery, pika = statistics.median(runs["celery"]), statistics.median(runs["pika"])
            row = {"workers": w, "tasks": plan.drain_tasks, "celery": celery, "pika": pika, "ratio": celery / pika}
            if "dramatiq" in runs:
                row["dramatiq"] = statistics.median(runs["dramatiq"])
                peer_ratios(row)
            rows.append({**row, "runs": runs})
            if w == W:
                off = statistics.median(runs["celery_no_events"])
                events = {
                    "workers": W,
                    "events_on": celery,
                    "events_off": off,
                    "ratio": celery / off,
                    "runs": {"events_on": runs["celery"], "events_off": runs["celery_no_events"]},
                }
        return rows, events

    def section_short(self) -> tuple[dict, dict]:
        """10 ms tasks on W processes against the ceiling W / 10 ms; busy memory sampled meanwhile."""
        plan = self.plan
        tasks = ["."] * plan.short_tasks
        say(f"short tasks: {plan.short_tasks} tasks of 10 ms, {W} worker processes, {plan.reps} runs each")
        watched = {"celery": lambda: self.celery.pids(1), "pika": lambda: self.pika.pids(1)}
        if self.dramatiq is not None:
            watched["dramatiq"] = lambda: self.dramatiq.pids(1)
        sampler = RssSampler(watched)
        with sampler:
            runs = self.alternate(
                self.with_peer(
                    {
                        "celery": lambda: self.drain(self.celery, W, tasks),
                        "pika": lambda: self.drain(self.pika, W, tasks),
                    },
                    lambda fleet: self.drain(fleet, W, tasks),
                ),
                plan.reps,
            )
        ceiling = W / (1 * SECONDS_PER_DOT)
        celery, pika = statistics.median(runs["celery"]), statistics.median(runs["pika"])
        short = {
            "workers": W,
            "task_seconds": SECONDS_PER_DOT,
            "tasks": plan.short_tasks,
            "ceiling": ceiling,
            "celery": celery,
            "pika": pika,
            "ratio": celery / ceiling,
            "pika_ratio": pika / ceiling,
            "runs": runs,
        }
        if "dramatiq" in runs:
            short["dramatiq"] = statistics.median(runs["dramatiq"])
            short["dramatiq_ratio"] = short["dramatiq"] / ceiling
            short["ratio_dramatiq"] = celery / short["dramatiq"]
        return short, sampler.peaks

    def section_publish(self) -> dict:
        """``.delay()`` with confirms vs pika's confirmed ``basic_publish``, one message at a time."""
        n, url = self.plan.publish_messages, self.node.url
        say(
            f"publish: {n} confirmed messages one at a time, .delay() vs pika basic_publish, {self.plan.reps} runs each"
        )

        def without_sent_event() -> float:
            sent_event = app.conf.task_send_sent_event
            app.conf.task_send_sent_event = False
            try:
                return n / publish_celery(n, broker_url=url, ignore_result=True)
            finally:
                app.conf.task_send_sent_event = sent_event

        runs = self.alternate(
            self.with_peer(
                {
                    "celery": lambda: n / publish_celery(n, broker_url=url),
                    "pika": lambda: n / publish_pika(self.node.url, PIKA_QUEUE, n),
                    "celery_ignore_result": lambda: n / publish_celery(n, broker_url=url, ignore_result=True),
                    "celery_no_sent_event": without_sent_event,
                },
                # dramatiq's work.send(), confirmed one at a time (confirm_delivery=True)
                lambda fleet: n / publish_dramatiq(url, n),
            ),
            self.plan.reps,
        )
        # The same connection publishing with its confirms pipelined (what filled the queues above):
        # neither Celery's nor pika's blocking API offers a batch of publishes with one wait.
        batch = []
        for _ in range(self.plan.reps):
            loader = Loader(self.node.url)
            started = time.perf_counter()
            loader.celery_tasks(["bench"] * n)
            batch.append(n / (time.perf_counter() - started))
            loader.close()
        for fleet in (self.celery, self.pika, self.dramatiq):
            if fleet is not None:
                self.probe.purge(fleet.queue)
        med = {name: statistics.median(values) for name, values in runs.items()}
        peer = {}
        if "dramatiq" in med:
            peer = {"dramatiq": med["dramatiq"], "celery": med["celery"], "pika": med["pika"]}
            peer_ratios(peer)
        return {
            **peer,
            "messages": n,
            "celery": med["celery"],
            "pika": med["pika"],
            "ratio": med["celery"] / med["pika"],
            "celery_ignore_result": med["celery_ignore_result"],
            "celery_no_sent_event": med["celery_no_sent_event"],
            "celery_batch_confirms": statistics.median(batch),
            "runs": {**runs, "celery_batch_confirms": batch},
        }

    def section_latency(self, capacity: float) -> dict:
        """At a steady load of half the Celery capacity (W = 2): enqueue->start and enqueue->done."""
        plan = self.plan
        rate = capacity / 2
        fleets = [f for f in (self.celery, self.pika, self.dramatiq) if f is not None]
        say(
            f"latency: {rate:.0f} tasks/s for {plan.latency_seconds:.0f} s on {W} workers, "
            + " vs ".join(f.kind for f in fleets)
        )
        samples = {f.kind: {"start": [], "done": [], "offered": []} for f in fleets}
        for _ in range(plan.latency_reps):
            for fleet in fleets:
                start, done, offered = self.latency_run(fleet, rate, plan.latency_seconds)
                samples[fleet.kind]["start"] += start
                samples[fleet.kind]["done"] += done
                samples[fleet.kind]["offered"].append(offered)
        result = {"workers": W, "rate": rate, "seconds": plan.latency_seconds * plan.latency_reps}
        for kind, s in samples.items():
            result[kind] = {
                # The rate the producer kept up (below ``rate`` if publishing itself could not keep up).
                "offered_rate": statistics.median(s["offered"]),
                "samples": len(s["done"]),
                "start_p50": percentile(s["start"], 50),
                "start_p99": percentile(s["start"], 99),
                "done_p50": percentile(s["done"], 50),
                "done_p99": percentile(s["done"], 99),
            }
        for key in ("start_p50", "start_p99", "done_p50", "done_p99"):
            result[f"ratio_{key}"] = result["celery"][key] / result["pika"][key]
            if "dramatiq" in result:
                result[f"ratio_dramatiq_{key}"] = result["celery"][key] / result["dramatiq"][key]
                result[f"dramatiq_ratio_pika_{key}"] = result["dramatiq"][key] / result["pika"][key]
        return result

    def latency_run(self, fleet, rate: float, seconds: float) -> tuple[list[float], list[float], float]:
        out = self.dir / f"enqueued-{fleet.kind}.json"
        # Celery's times come from its own task events, kept by the broker in a queue and read only
        # after the run: nothing in this process competes with the workers for the CPU meanwhile.
        events = TaskEventQueue(self.node.url) if fleet.kind == "celery" else None
        try:
            fleet.resume(W)
            self.probe.wait(fleet.queue, lambda ready, consumers: consumers == W, 60, "workers consuming")
            subprocess.run(
                load_command(fleet.kind, self.node.url, fleet.queue, rate, seconds, out),
                cwd=REPO_ROOT,
                check=True,
                timeout=seconds + 120,
            )
            enqueued = dict(json.loads(out.read_text()))
            self.probe.wait(fleet.queue, lambda ready, consumers: ready == 0, 60, "queue drained")
            # Every message acked (the broker's statistics lag by up to a second) before the pause.
            mgmt = Management(self.node.management_url)
            deadline = time.monotonic() + 60
            while mgmt.counts(fleet.queue) != (0, 0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{fleet.kind} latency run: messages still unacknowledged after 60 s")
                time.sleep(0.1)
            done = events.read(set(enqueued)) if events is not None else self.records(fleet, enqueued)
        finally:
            if events is not None:
                events.close()
        self.pause(fleet)
        start = [done[i][0] - t for i, t in enqueued.items()]
        finish = [done[i][1] - t for i, t in enqueued.items()]
        times = sorted(enqueued.values())
        offered = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else rate
        return start, finish, offered

    def records(self, fleet, enqueued) -> dict[str, tuple[float, float]]:
        """Pause the pika (or dramatiq) workers and read the (id, start, done) each wrote at the pause."""
        lines_before = {w.name: _line_count(w.record_path) for w in fleet.workers}
        fleet.pause()
        records: dict[str, tuple[float, float]] = {}
        deadline = time.monotonic() + 60
        for w in fleet.workers:
            while _line_count(w.record_path) <= lines_before[w.name]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{fleet.kind} worker {w.name} wrote no records at its pause")
                time.sleep(0.02)
            last = w.record_path.read_text().splitlines()[-1]
            records.update({mid: (start, done) for mid, start, done in json.loads(last)})
        missing = set(enqueued) - set(records)
        if missing:
            raise RuntimeError(f"{len(missing)} {fleet.kind} messages were not recorded as done")
        return records

    def section_dispatch(self) -> dict:
        """Heavy and light tasks alternating on W workers: makespan over its lower bound."""
        plan = self.plan
        heavy, light = plan.heavy_dots * SECONDS_PER_DOT, plan.light_dots * SECONDS_PER_DOT
        workload = [
            m
            for i in range(plan.dispatch_pairs)
            for m in (f"heavy {i}" + "." * plan.heavy_dots, f"light {i}" + "." * plan.light_dots)
        ]
        work = [m.count(".") * SECONDS_PER_DOT for m in workload]
        bound = max(max(work), sum(work) / W)
        say(
            f"dispatch: {plan.dispatch_pairs} heavy ({heavy:.2f} s) and light ({light:.2f} s) pairs on {W} workers, "
            "prefetch 1 vs unlimited"
        )
        runs = self.alternate(
            self.with_peer(
                {
                    "prefetch_1": lambda: self.makespan(self.celery, workload),
                    "unlimited": lambda: self.makespan(self.unlimited, workload),
                },
                lambda fleet: self.makespan_dramatiq(fleet, workload),
            ),
            plan.dispatch_reps,
        )
        result = {"workers": W, "tasks": len(workload), "lower_bound": bound, "runs": runs}
        for name, values in runs.items():
            result[name] = statistics.median(values)
            result[f"{name}_ratio"] = result[name] / bound
        if "dramatiq" in result:
            result["ratio_dramatiq"] = result["prefetch_1"] / result["dramatiq"]
        return result

    def makespan(self, fleet: CeleryFleet, workload: list[str]) -> float:
        """From the first task-started to the last task-succeeded, publishing to running workers."""
        with EventRecorder(self.node.url) as recorder:
            fleet.resume(W)
            self.probe.wait(fleet.queue, lambda ready, consumers: consumers == W, 60, "workers consuming")
            with Connection(self.node.url, transport_options={"confirm_publish": True}) as conn:
                ids = {work.apply_async(args=[m], connection=conn, ignore_result=True).id for m in workload}
            recorder.wait_for(
                lambda r: sum(1 for t in r.snapshot() if t.uuid in ids and t.succeeded) == len(ids),
                TIMEOUT,
                "dispatch workload done",
            )
            tasks = [t for t in recorder.snapshot() if t.uuid in ids]
        self.pause(fleet)
        return max(t.succeeded[-1][1] for t in tasks) - min(t.started[0][1] for t in tasks)

    def makespan_dramatiq(self, fleet: DramatiqFleet, workload: list[str]) -> float:
        """The same for dramatiq: ``work.send()`` to running workers, times from the workers' records."""
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench import dramatiq_worker

        fleet.resume(W)
        self.probe.wait(fleet.queue, lambda ready, consumers: consumers == W, 60, "workers consuming")
        dramatiq_worker.use(self.node.url)
        ids = {dramatiq_worker.work.send(m).message_id: None for m in workload}
        self.probe.wait(fleet.queue, lambda ready, consumers: ready == 0, TIMEOUT, "dispatch workload handed out")
        self._wait_acked(fleet, "dispatch")
        done = self.records(fleet, ids)
        self.pause(fleet)
        return max(done[i][1] for i in ids) - min(done[i][0] for i in ids)

    def _wait_acked(self, fleet, what: str) -> None:
        """Every message of ``fleet``'s queue acked (the broker's statistics lag by up to a second)."""
        mgmt = Management(self.node.management_url)
        deadline = time.monotonic() + TIMEOUT
        while mgmt.counts(fleet.queue) != (0, 0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fleet.kind} {what}: messages still unacknowledged after {TIMEOUT} s")
            time.sleep(0.1)

    def section_redelivery(self) -> dict:
        """SIGKILL the main process of the worker running a task; time until another worker starts it.

        A fresh task for every kill (proj's consumer dead-letters a message after PROJ_MAX_DELIVERIES
        deliveries), and every worker up and idle before each kill. dramatiq's kills alternate with
        proj's: its worker process (the one holding the consumer and running the task) is killed.
        """
        kills = self.plan.kills
        fleet = self.celery
        everyone = len(fleet.workers)
        say(
            f"redelivery: {kills} SIGKILLs of the worker running a task, {everyone} workers"
            + (", celery and dramatiq alternated" if self.dramatiq else "")
        )
        long_task = "redelivery" + "." * 300  # 3 s: still running when its worker is killed
        delays: list[float] = []
        peer: list[float] = []
        with EventRecorder(self.node.url) as recorder:
            fleet.resume()
            if self.dramatiq is not None:
                self.dramatiq.resume()
            for k in range(kills):
                self.probe.wait(fleet.queue, lambda r, consumers: consumers == everyone, 120, "every worker consuming")
                with Connection(self.node.url, transport_options={"confirm_publish": True}) as conn:
                    task_id = work.apply_async(args=[long_task], connection=conn, ignore_result=True).id

                def started(r, n: int, task_id=task_id) -> bool:
                    task = r.tasks.get(task_id)
                    return bool(task) and len(task.started) >= n

                recorder.wait_for(lambda r: started(r, 1), 60, f"task {k + 1} started")
                runner = fleet.hostnames().index(recorder.tasks[task_id].started[0][0])
                killed_at = time.time()
                os.kill(fleet.workers[runner].pid, signal.SIGKILL)
                recorder.wait_for(lambda r: started(r, 2), 60, f"task {k + 1} started again after the kill")
                delays.append(recorder.tasks[task_id].started[1][1] - killed_at)
                # The killed worker's orphaned pool child goes with its process group; a new worker takes
                # its place, and the task finishes before the next kill, so every worker is idle again.
                fleet.restart(runner).wait_ready(120)
                if self.dramatiq is not None:
                    peer.append(self.redeliver_dramatiq(long_task, k))
                recorder.wait_for(lambda r, t=task_id: r.tasks[t].done, 120, f"task {k + 1} done")
        self.pause(fleet)
        result = {
            "kills": len(delays),
            "p50": percentile(delays, 50),
            "p99": percentile(delays, 99),
            "max": max(delays),
            "samples": delays,
        }
        if peer:
            self.pause(self.dramatiq)
            result["dramatiq"] = {
                "kills": len(peer),
                "p50": percentile(peer, 50),
                "p99": percentile(peer, 99),
                "max": max(peer),
                "samples": peer,
            }
            result["ratio_dramatiq_p50"] = result["p50"] / result["dramatiq"]["p50"]
            result["ratio_dramatiq_p99"] = result["p99"] / result["dramatiq"]["p99"]
        return result

    def redeliver_dramatiq(self, long_task: str, k: int) -> float:
        """One dramatiq kill: the task's start announced in a worker's log, that worker process SIGKILLed,
        the seconds until another worker announces it; then the killed worker replaced and the task done."""
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench import dramatiq_worker as dw

        fleet = self.dramatiq
        everyone = len(fleet.workers)
        self.probe.wait(fleet.queue, lambda r, consumers: consumers == everyone, 120, "every dramatiq worker consuming")
        dw.use(self.node.url)
        message_id = dw.work.send(long_task).message_id

        def starts() -> list[tuple[int, float]]:
            found = []
            for i, w in enumerate(fleet.workers):
                for line in w.log().splitlines():
                    if line.startswith(f"{dw.STARTED} {message_id} "):
                        found.append((i, float(line.split()[-1])))
            return sorted(found, key=lambda x: x[1])

        deadline = time.monotonic() + 60
        while not starts():
            if time.monotonic() > deadline:
                raise TimeoutError(f"dramatiq task {k + 1} not started within 60 s")
            time.sleep(0.005)
        runner = starts()[0][0]
        killed_at = time.time()
        os.kill(fleet.workers[runner].worker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(starts()) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"dramatiq task {k + 1} not started again within 60 s of the kill")
            time.sleep(0.005)
        delay = starts()[1][1] - killed_at
        new = fleet.restart(runner)
        new.wait_ready(120)
        new.signal_worker(dw.RESUME_SIGNAL)  # it consumes from boot; resumed in case the fleet was paused
        self.probe.wait(fleet.queue, lambda ready, consumers: ready == 0, 60, f"dramatiq task {k + 1} taken")
        self._wait_acked(fleet, f"redelivery {k + 1}")
        return delay

    def section_memory_idle(self) -> dict:
        return {
            "celery_idle_kib": rss_kib(self.celery.pids(1)),
            "pika_idle_kib": rss_kib(self.pika.pids(1)),
            "celery_processes": len(self.celery.pids(1)),
            **(
                {"dramatiq_idle_kib": rss_kib(self.dramatiq.pids(1)), "dramatiq_processes": len(self.dramatiq.pids(1))}
                if self.dramatiq is not None
                else {}
            ),
        }


class TaskEventQueue:
    """Celery's task-started and task-succeeded events, queued by the broker during a run, read after it."""

    def __init__(self, url: str):
        self.conn = Connection(url)
        exchange = get_exchange(self.conn)
        self.queue = Queue(f"bench.events.{os.getpid()}", exchange, routing_key="task.#", auto_delete=False)
        self.queue(self.conn.default_channel).declare()

    def read(self, ids: set[str], timeout: float = 60) -> dict[str, tuple[float, float]]:
        """(started, succeeded) timestamps of every task in ``ids``, as its worker stamped them."""
        started: dict[str, float] = {}
        succeeded: dict[str, float] = {}

        def on_event(body, message) -> None:
            # A worker flushes its buffered task events as one message holding a list of them.
            for event in body if isinstance(body, list) else [body]:
                kind, uuid = event.get("type"), event.get("uuid")
                if uuid in ids and kind == "task-started":
                    started.setdefault(uuid, float(event["timestamp"]))
                elif uuid in ids and kind == "task-succeeded":
                    succeeded.setdefault(uuid, float(event["timestamp"]))

        deadline = time.monotonic() + timeout
        with Consumer(self.conn.default_channel, [self.queue], callbacks=[on_event], accept=["json"], no_ack=True):
            while len(succeeded) < len(ids) or len(started) < len(ids):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(succeeded)} of {len(ids)} task-succeeded events within {timeout} s")
                with contextlib.suppress(TimeoutError, OSError):
                    self.conn.drain_events(timeout=1)
        return {uuid: (started[uuid], succeeded[uuid]) for uuid in ids}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.queue(self.conn.default_channel).delete()
        with contextlib.suppress(Exception):
            self.conn.release()


def _line_count(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


class RssSampler:
    """Peak resident memory of each contender while busy: every 0.1 s, the processes each callable names
    (a fleet's ``pids``: main processes with their pool or worker children), summed per contender."""

    def __init__(self, pids: dict[str, Callable[[], list[int]]]):
        self.pids = pids
        self.peaks = {name: 0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, pids in self.pids.items():
                self.peaks[name] = max(self.peaks[name], rss_kib(pids()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
