"""The run's monitor: tails the ledger the workers write, and has the workers' processes noted.

From the ledger: which task each process runs now, which tasks are done (the publisher paces itself
on that, and faults fire on it), and when each worker host started a task (a container fault's
"running tasks again"). Only this run's task ids count: the compose cluster's workers share one ledger
across runs. Each turn it also has the workers note their processes (:class:`Workers`): from /proc for
the process run, so a fault's processes are known even after their ids are reused; nothing for
containers, whose processes the ledger rows name by host.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Protocol

from proj.chaos.state import RunState

INTERVAL = 0.05
#: A progress line this often.
REPORT_EVERY = 10.0
#: Seconds a read waits for the workers' writes (WAL: rarely at all).
BUSY_TIMEOUT = 30.0


class Workers(Protocol):
    """What the monitor asks of the run's workers each turn."""

    def scan_all(self) -> None:
        """Note the processes of every worker."""

    def progress(self) -> str:
        """How many workers are up, for the progress line."""


class Monitor:
    def __init__(self, state: RunState, workers: Workers, ledger_path: Path | None = None):
        self.state = state
        self.workers = workers
        self._ledger_path = ledger_path
        self.last_rowid = 0
        #: Worker host -> when it started each task of the run; worker host -> its process ids in the ledger.
        self.starts_by_host: dict[str, list[float]] = defaultdict(list)
        self.pids_by_host: dict[str, set[int]] = defaultdict(set)
        self._reading = threading.Lock()

    @property
    def ledger_path(self) -> Path:
        """The ledger the workers write: the run's own, or (containers) the one shared on a bind mount."""
        return self._ledger_path or self.state.ledger_path

    def start(self) -> None:
        self.state.start_thread(self.run, "chaos-monitor")

    def run(self) -> None:
        state = self.state
        last_report = time.monotonic()
        while not state.stopping.is_set():
            self.read()
            self.workers.scan_all()
            if time.monotonic() - last_report >= REPORT_EVERY:
                last_report = time.monotonic()
                state.say(
                    f" [*] {len(state.done)}/{state.settings.tasks} done, {len(state.published)} published, "
                    f"{self.workers.progress()}, {len(state.faults)} faults so far"
                )
            time.sleep(INTERVAL)

    def read(self) -> None:
        """The ledger rows written since the last read (any thread may ask: a fault measures with it)."""
        state = self.state
        with self._reading:
            try:
                # mode=rw: a ledger that is not there (yet) is not created here
                uri = f"{Path(self.ledger_path).absolute().as_uri()}?mode=rw"
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
                try:
                    rows = conn.execute(
                        "SELECT rowid, task_id, event, hostname, pid, at FROM executions WHERE rowid > ? "
                        "ORDER BY rowid",
                        (self.last_rowid,),
                    ).fetchall()
                finally:
                    conn.close()
            except sqlite3.Error:  # busy beyond the timeout, or not there yet: read again next time
                return
            with state.lock:
                for rowid, task_id, event, host, pid, at in rows:
                    self.last_rowid = rowid
                    if not task_id.startswith(state.task_prefix):
                        continue
                    self.pids_by_host[host].add(int(pid))
                    if event == "start":
                        state.running[pid] = task_id
                        self.starts_by_host[host].append(float(at))
                    else:
                        state.done.add(task_id)
                        state.last_done = float(at)
                        if state.running.get(pid) == task_id:
                            del state.running[pid]
