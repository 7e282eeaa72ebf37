"""The run's held-message watch: a worker that sits on a message it does not run is a verdict of its own.

Every few seconds it asks each worker that is up, through the guard's ``proj_stuck`` remote-control
command (proj/guard.py), which messages it holds without starting them while a pool process is idle,
and for how long. A message held longer than the bound (``--stuck-after``) means the guard did not do
its job: the run says so in one line (worker and task id), stops injecting and publishing, and ends
with that verdict instead of waiting for task_queue to drain until ``drain_timeout`` (issue 14).

The bound defaults to the guard's own bound plus a margin: the guard looks every
``min(5, PROJ_STUCK_AFTER / 4)`` seconds and gives the message back within one look of the bound, so
a hold longer than ``PROJ_STUCK_AFTER + max(10, PROJ_STUCK_AFTER / 2)`` is one the guard should have
ended. With the guard off (``PROJ_STUCK_AFTER=0``) the bound is 30 s, as ``proj health``'s.

A worker whose main process does not answer for longer than the bound is a verdict too: it may hold
a message, and nothing in it can give one back.
"""

from __future__ import annotations

import time

from celery.app.control import Control
from kombu import Connection

from proj import config
from proj.celery import app
from proj.chaos.state import RunState
from proj.chaos.worker_slots import WorkerSlots

COMMAND = "proj_stuck"
#: Seconds the workers have to answer one ask (a live main process answers in milliseconds).
ANSWER_TIMEOUT = 3.0
#: The bound when the guard is off (``proj health`` uses the same).
GUARD_OFF_BOUND = 30.0


def default_bound(stuck_after: float = config.STUCK_AFTER) -> float:
    """The guard's bound plus a margin of two of its looks and more (see the module docstring)."""
    if stuck_after <= 0:
        return GUARD_OFF_BOUND
    return stuck_after + max(10.0, stuck_after / 2)


class Watch:
    def __init__(self, state: RunState, workers: WorkerSlots, broker):
        self.state = state
        self.workers = workers
        self.broker = broker
        self.bound = state.settings.stuck_after
        self.interval = min(5.0, max(0.5, self.bound / 4))
        #: worker key ("w1#0") -> monotonic time of its last answer (or since it was seen up).
        self.answered: dict[str, float] = {}
        self._control = None
        #: Asks that failed (broker restarting, connection reset), and when the last one did: a silence
        #: counts only from then on, as no worker could answer while the broker was away.
        self.failed_asks = 0
        self.asks = 0
        #: The longest a message waited without starting, over every answer (the run's figure).
        self.longest_hold = 0.0
        self.last_failure = float("-inf")

    def start(self) -> None:
        self.state.start_thread(self.run, "chaos-watch")

    def run(self) -> None:
        state = self.state
        while not state.stopping.wait(self.interval):
            try:
                self.look()
            except Exception:  # the broker restarting, a connection reset: look again next time
                self.failed_asks += 1
                self.last_failure = time.monotonic()

    def control(self):
        if self._control is None:
            self._control = Control(app)
            # Celery's control publishes through its app's producer pool, so to the app's own broker
            # whatever connection it is given; without the pool it publishes on the run's connection.
            self._control.mailbox.producer_pool = None
        return self._control

    def ask(self, hosts: list[str]) -> dict[str, dict]:
        with Connection(self.broker.url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            replies = self.control().broadcast(
                COMMAND, destination=hosts, reply=True, timeout=ANSWER_TIMEOUT, limit=len(hosts), connection=conn
            )
        answers: dict[str, dict] = {}
        for reply in replies or ():
            answers.update(reply)
        return answers

    def look(self) -> None:
        """One ask; a hold or a silence past the bound ends the run with that verdict."""
        up = {slot.proc.hostname: slot.key for slot in self.workers.ready()}
        if not up:
            return
        now = time.monotonic()
        for key in up.values():
            self.answered.setdefault(key, now)
        answers = self.ask(sorted(up))
        self.asks += 1
        now = time.monotonic()
        found = []
        for host, key in sorted(up.items(), key=lambda kv: kv[1]):
            report = answers.get(host)
            if isinstance(report, dict) and "held" in report:
                self.answered[key] = now
                for held in report["held"]:
                    self.longest_hold = max(self.longest_hold, held["seconds"])
                    if held["seconds"] > self.bound:
                        found.append(
                            {"worker": key, "hostname": host, "task_id": held["id"], "seconds": held["seconds"]}
                        )
                continue
            silent = now - max(self.answered[key], self.last_failure)
            if silent > self.bound and self._still_up(key):
                found.append({"worker": key, "hostname": host, "task_id": None, "seconds": round(silent, 3)})
        if found:
            self.cut_short(found)

    def _still_up(self, key: str) -> bool:
        """Whether that incarnation is still up (a fault may have stopped it while the ask was out)."""
        return any(s.key == key for s in self.workers.ready())

    def cut_short(self, found: list[dict]) -> None:
        state = self.state
        with state.lock:
            if state.held:
                return
            state.held.extend(found)
        for h in found:
            state.say(f" [!] {describe(h, self.bound)}")
        state.say(" [!] stopping the run: the held message is its verdict")
        state.stopping.set()

    def figures(self) -> dict:
        return {
            "bound": self.bound,
            "asks": self.asks,
            "failed_asks": self.failed_asks,
            "longest_hold_seconds": round(self.longest_hold, 3),
        }


def describe(held: dict, bound: float) -> str:
    """One line for a held message (or a silent worker)."""
    if held["task_id"] is None:
        return (
            f"{held['worker']} ({held['hostname']}) did not answer for {held['seconds']:.1f} s (over {bound:g} s): "
            "its main process is stuck, and so is any message it holds"
        )
    return (
        f"{held['worker']} ({held['hostname']}) holds task {held['task_id']} without starting it for "
        f"{held['seconds']:.1f} s (over {bound:g} s) while a pool process is idle"
    )
