"""One chaos run: a broker, real workers, confirmed publishes, faults at random points, then the count.

Usage::

    report = Chaos(Settings(tasks=500, workers=3, faults=10, seed=42)).run()
    report.ok, report.to_dict()

The parts, around one :class:`RunState`: the broker (``broker.py``), the workers and their restarts
(``worker_slots.py``), the publisher and the monitor (threads of their own: ``publisher.py``,
``monitor.py``), the fault injector (``faults.py``, in the caller's thread), and the checker
(``checker.py``, pure) whose verdict goes into the report (``report.py``). This module runs them in
order, waits for the queue to drain, and ends everything started in ``finally``, also on Ctrl+C.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from proj.chaos import ledger
from proj.chaos import report as report_mod
from proj.chaos.broker import RunBroker
from proj.chaos.faults import FaultInjector
from proj.chaos.monitor import Monitor
from proj.chaos.publisher import Publisher
from proj.chaos.report import Report
from proj.chaos.schedule import KINDS, NODE_KILL, RESTART_BROKER, fault_schedule, task_messages
from proj.chaos.state import ChaosError, RunState, Settings
from proj.chaos.watch import Watch, default_bound
from proj.chaos.worker_slots import WorkerSlots

__all__ = ("Chaos", "ChaosError", "Settings")

#: Queue samples in a row with nothing ready and nothing unacked before the queue counts as drained
#: (the management API's statistics lag about 0.5 s behind).
SETTLED_SAMPLES = 3
SAMPLE_INTERVAL = 0.5
#: How long teardown waits for each thread (publisher, monitor, restarters) to end.
JOIN_TIMEOUT = 10


class Chaos:
    def __init__(self, settings: Settings, out=None):
        if settings.stuck_after is None:
            settings.stuck_after = default_bound()
        state = RunState.new(settings, out or sys.stdout)
        kinds = tuple(k for k in KINDS if settings.applies(k) and (not settings.kinds or k in settings.kinds))
        state.schedule = fault_schedule(
            state.seed,
            settings.faults,
            settings.tasks,
            settings.workers,
            kinds=kinds,
            force=(NODE_KILL,) if settings.cluster else (RESTART_BROKER,),
        )
        messages = task_messages(state.seed, settings.tasks, settings.max_dots)
        state.tasks = [(f"chaos-{state.run_id}-{i:05d}", m) for i, m in enumerate(messages)]
        self.state = state
        self.broker = RunBroker(state)
        self.workers = WorkerSlots(state, self.broker)
        self.publisher = Publisher(state, self.broker)
        self.monitor = Monitor(state, self.workers)
        self.injector = FaultInjector(state, self.broker, self.workers)
        self.watch = Watch(state, self.workers, self.broker)

    @property
    def run_dir(self) -> Path | None:
        return self.state.run_dir

    def run(self) -> Report:
        state, s = self.state, self.state.settings
        started = time.time()
        self._prepare_dir()
        kinds = Counter(f.kind for f in state.schedule)
        state.say(
            f" [*] chaos run {state.run_id}: {s.tasks} tasks, {s.workers} workers, "
            f"{len(state.schedule)} faults ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), "
            f"seed {state.seed}; run dir {state.run_dir}"
        )
        queue: dict | None = None
        interrupted = False
        try:
            self._start_broker()
            self.workers.start()
            self.monitor.start()
            self.watch.start()
            self.publisher.start()
            self.injector.inject_all()
            self.publisher.wait()
            self.workers.wait_restarts()
            queue = self._drain()
        except KeyboardInterrupt:
            interrupted = True
            state.say(" [*] interrupted: stopping everything this run started")
        finally:
            self._teardown()
        state.watch = self.watch.figures()
        report = report_mod.build(state, self.broker.describe(), self.broker.external, queue, started)
        report.interrupted = interrupted
        (state.run_dir / "report.json").write_text(report.to_json() + "\n")
        if interrupted:
            raise KeyboardInterrupt
        return report

    def _prepare_dir(self) -> None:
        state = self.state
        out = state.settings.out
        if out is None:
            state.run_dir = Path(tempfile.mkdtemp(prefix="proj-chaos-"))
        else:
            run_dir = Path(out).absolute()
            if (run_dir / "ledger.sqlite").exists():
                raise ChaosError(f"{run_dir} already holds a chaos run (ledger.sqlite): pass an empty --out")
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ChaosError(f"cannot create the run dir {run_dir}: {exc.strerror}") from exc
            state.run_dir = run_dir
        ledger.connect(str(state.ledger_path))  # creates the table in WAL mode before any worker writes
        (state.run_dir / "schedule.json").write_text(
            json.dumps({"seed": state.seed, "faults": [f.to_dict() for f in state.schedule]}, indent=2) + "\n"
        )

    def _start_broker(self) -> None:
        try:
            self.broker.start()
        except ChaosError:
            # A temp run dir in which nothing ran (a broker that could not be reached) is removed.
            if self.state.settings.out is None and not self.broker.started:
                shutil.rmtree(self.state.run_dir, ignore_errors=True)
                self.state.run_dir = None
            raise

    def _drain(self) -> dict:
        """Wait until task_queue holds nothing ready and nothing unacknowledged, several samples in a row."""
        state = self.state
        if not state.held:
            state.say(" [*] faults done; waiting for task_queue to drain")
        deadline = time.monotonic() + state.settings.drain_timeout
        settled = 0
        sample = None
        if state.held:  # the watch ended the run: count what there is, do not wait for a drain
            deadline = time.monotonic()
            sample = self.broker.queue_state()
        while time.monotonic() < deadline and not state.stopping.is_set():
            sample = self.broker.queue_state()
            empty = sample is not None and sample["ready"] == 0 and sample["unacked"] == 0
            settled = settled + 1 if empty else 0
            all_done = len(state.done) >= len(state.published)
            # Once every task is done, a few samples suffice; a task still missing gets longer.
            if settled >= (SETTLED_SAMPLES if all_done else 4 * SETTLED_SAMPLES):
                break
            time.sleep(SAMPLE_INTERVAL)
        queue = dict(sample or {"ready": None, "unacked": None, "consumers": None})
        queue["settled"] = settled >= SETTLED_SAMPLES
        if not queue["settled"] and not state.held:
            state.say(f" [!] task_queue did not drain within {state.settings.drain_timeout:.0f} s: {queue}")
        queue["dead_letters"] = self.broker.dead_letters()
        queue["other_queues"] = self.broker.other_queues()
        return queue

    def _teardown(self) -> None:
        self.state.stopping.set()
        self.workers.stop()
        for t in self.state.threads:
            t.join(JOIN_TIMEOUT)
        self.workers.end_all()  # a restarter may have started one more in the meantime
        self.broker.stop()
