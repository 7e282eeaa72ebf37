"""The report of a chaos run: the checker's verdict and what the run did, as written to report.json."""

from __future__ import annotations

import dataclasses
import json
import time

from proj import ledger
from proj.chaos import checker
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
    verdict = checker.check(state.published, rows, state.faults, state.republished, unconfirmed, queue)
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
