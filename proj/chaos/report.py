"""The report of a chaos run: the checker's verdict and what the run did, as written to report.json."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

from proj.chaos import checker, ledger
from proj.chaos.state import RunState


@dataclasses.dataclass
class Report:
    """A run's report; :meth:`to_dict` is its JSON form (the verdict's keys first, then the run's)."""

    verdict: checker.Verdict
    run_id: str
    seed: int
    tasks: int
    workers: int
    seconds_per_dot: float
    broker: str
    broker_restarts: str | None
    faults_planned: int
    faults_skipped: list[dict]
    fault_log: list[dict]
    worker_restarts: int
    #: Each restart: the worker, the ready messages when it started and when it said ready, whether it raced.
    worker_starts: list[dict]
    #: The bound of the held-message watch (``--stuck-after``).
    stuck_after: float
    #: The watch's figures: asks, failed asks, the longest any message waited without starting.
    watch: dict
    #: What the workers' guards did (proj/guard.py): their log lines, each a message held without starting
    #: that was given back, or a pool process that did not start and was replaced. Not failures: nothing
    #: was lost; each is a stuck worker the guard ended, worth a look.
    guard_actions: list[str]
    publish_errors: dict[str, int]
    publish_error_samples: list[str]
    publisher_failure: str | None
    #: Ledger rows written by a process the run never saw in any worker (should be none).
    unattributed_pids: list[int]
    errors: list[str]
    throughput: float | None
    work_seconds: float | None
    elapsed: float
    run_dir: str
    #: Whether task_queue ended with nothing ready and nothing unacknowledged, several samples in a row.
    settled: bool = False
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """Every task accounted for, the queue drained, every task published, and the run not cut short."""
        return (
            self.verdict.ok
            and self.settled
            and not self.publisher_failure
            and self.verdict.published >= self.tasks
            and not self.interrupted
        )

    def to_dict(self) -> dict:
        run = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for internal in ("verdict", "settled", "interrupted"):
            del run[internal]
        return {**self.verdict.to_dict(), "ok": self.ok, **run, "interrupted": self.interrupted}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def build(state: RunState, broker: str, external: bool, queue: dict | None, started: float) -> Report:
    """Count what the run's ledger says against what it published and the faults it injected."""
    rows = ledger.rows(str(state.ledger_path))
    for fault in state.faults:
        if fault.pids is None and fault.worker is not None:
            fault.pids = frozenset(state.pids_of[fault.worker])
    unconfirmed = state.sent - set(state.published)
    verdict = checker.check(state.published, rows, state.faults, state.republished, unconfirmed, queue, state.held)
    unknown = sorted({int(r["pid"]) for r in rows} - set().union(*state.pids_of.values()))
    end = state.last_done or time.time()
    work_seconds = end - state.first_publish if state.first_publish else None
    s = state.settings
    return Report(
        verdict=verdict,
        run_id=state.run_id,
        seed=state.seed,
        tasks=s.tasks,
        workers=s.workers,
        seconds_per_dot=s.seconds_per_dot,
        broker=broker,
        broker_restarts="not injected: the broker was given with --broker-url" if external else None,
        faults_planned=len(state.schedule),
        faults_skipped=state.skipped,
        fault_log=[f.to_dict() for f in state.faults],
        worker_restarts=state.worker_restarts,
        worker_starts=state.starts,
        stuck_after=s.stuck_after,
        watch=state.watch,
        guard_actions=guard_actions(state.run_dir / "workers"),
        publish_errors=dict(state.publish_errors),
        publish_error_samples=state.publish_error_samples,
        publisher_failure=state.publisher_failure,
        unattributed_pids=unknown,
        errors=state.errors,
        throughput=round(len(state.published) / work_seconds, 1) if work_seconds else None,
        work_seconds=round(work_seconds, 1) if work_seconds else None,
        elapsed=round(time.time() - started, 1),
        run_dir=str(state.run_dir),
        settled=bool(queue and queue.get("settled")),
    )


#: The guard's log lines (proj/guard.py): a message given back, a pool process killed at or after start.
GUARD_MARKS = ("held", "without starting"), ("did not start within",), ("has not started for",)
MAX_GUARD_LINES = 20


def guard_actions(log_dir: Path) -> list[str]:
    """The guard's lines in every worker log of the run (``w1.log``, ``w1.0.log``, ...), by log."""
    found = []
    for log in sorted(log_dir.glob("*.log")):
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if any(all(m in line for m in marks) for marks in GUARD_MARKS):
                    found.append(f"{log.stem}: {line.strip()}")
    return found[:MAX_GUARD_LINES]
