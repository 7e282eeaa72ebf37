"""The run's monitor: tails the ledger the workers write, and notes every worker process id.

From the ledger: which task each process runs now, and which tasks are done (the publisher paces
itself on that, and faults fire on it). From /proc: the processes of each worker incarnation, so a
fault's processes are known even after their ids are reused.
"""

from __future__ import annotations

import sqlite3
import time

from proj.chaos.state import RunState
from proj.chaos.worker_slots import WorkerSlots

INTERVAL = 0.05
#: A progress line this often.
REPORT_EVERY = 10.0


class Monitor:
    def __init__(self, state: RunState, workers: WorkerSlots):
        self.state = state
        self.workers = workers
        self.last_rowid = 0

    def start(self) -> None:
        self.state.start_thread(self.run, "chaos-monitor")

    def run(self) -> None:
        state = self.state
        conn = sqlite3.connect(str(state.ledger_path), timeout=60)
        last_report = time.monotonic()
        try:
            while not state.stopping.is_set():
                self._read(conn)
                self.workers.scan_all()
                if time.monotonic() - last_report >= REPORT_EVERY:
                    last_report = time.monotonic()
                    state.say(
                        f" [*] {len(state.done)}/{state.settings.tasks} done, {len(state.published)} published, "
                        f"{len(self.workers.ready())}/{len(self.workers.slots)} workers up, "
                        f"{len(state.faults)} faults so far"
                    )
                time.sleep(INTERVAL)
        finally:
            conn.close()

    def _read(self, conn: sqlite3.Connection) -> None:
        """The ledger rows written since the last read."""
        state = self.state
        try:
            rows = conn.execute(
                "SELECT rowid, task_id, event, pid, at FROM executions WHERE rowid > ? ORDER BY rowid",
                (self.last_rowid,),
            ).fetchall()
        except sqlite3.OperationalError:  # busy beyond the timeout: read again next time
            return
        with state.lock:
            for rowid, task_id, event, pid, at in rows:
                self.last_rowid = rowid
                if event == "start":
                    state.running[pid] = task_id
                else:
                    state.done.add(task_id)
                    state.last_done = at
                    if state.running.get(pid) == task_id:
                        del state.running[pid]
