"""The run's publisher: the numbered tasks, confirmed one by one, paced so publishing lasts the whole run.

Pacing keeps at most ``backlog`` tasks published and not yet done, and (``Settings.rate``) at most
that many publishes a second, so publishes go on during the faults (a broker restart or a node fault
hits producers too). A publish that fails is sent again with the same task id until
``PUBLISH_DEADLINE``: such a task may exist twice, and the checker knows it. A publish that failed or
took longer than :data:`REFUSED_AFTER` is noted as refused, from its first try to its confirm.

Where it publishes is the run's broker's business (:class:`Broker`): the process run's private node,
cluster or given broker (proj/chaos/broker.py), or the compose cluster's published ports
(proj/chaos/compose.py).
"""

from __future__ import annotations

import contextlib
import time
from typing import Protocol

from proj import tasks
from proj.celery import app
from proj.chaos.state import RunState

#: A publish keeps being retried (same task id) this long, e.g. through a broker restart.
PUBLISH_DEADLINE = 180.0
#: The publisher stops pacing itself on the backlog after this long without a task done (tasks in flight may
#: be lost); the rate still paces it.
PACING_STALL = 60.0
#: Publish errors kept word for word in the report.
MAX_SAMPLES = 10
#: A publish that takes longer than this (retries inside it included) counts as refused for its whole time.
REFUSED_AFTER = 1.0


class Broker(Protocol):
    """Where the publisher publishes."""

    def publisher_connection(self):
        """A kombu connection with publisher confirms, connected (raise if it cannot be)."""

    def publish_options(self) -> dict:
        """Keyword arguments of ``apply_async`` beyond the task, its id and the connection."""


class Publisher:
    def __init__(self, state: RunState, broker: Broker):
        self.state = state
        self.broker = broker
        self.conn = None
        self.paced = True
        #: (first try, confirm) of every publish that failed at first or took over REFUSED_AFTER.
        self.refused: list[tuple[float, float]] = []

    def start(self) -> None:
        self.state.start_thread(self.run, "chaos-publisher")

    def wait(self) -> None:
        """Until the publisher has ended (it ends by itself: each publish has a deadline); raise its failure."""
        self.state.publishing_done.wait()
        self.state.check_publisher()

    def refused_seconds(self, begin: float = float("-inf"), end: float = float("inf")) -> float:
        """Seconds producers were refused between ``begin`` and ``end`` (all of them by default)."""
        return sum(max(0.0, min(e, end) - max(b, begin)) for b, e in self.refused)

    def run(self) -> None:
        state = self.state
        try:
            # The task of proj's app, not the thread's current app: in a thread other than the one that
            # created the app, Celery's current app is its fallback 'default' app, which routes to 'celery'.
            work = app.tasks[tasks.work.name]
            rate = state.settings.rate
            gap = 1.0 / rate if rate else 0.0
            next_at = time.monotonic()
            for task_id, message in state.tasks:
                if not self._wait_for_room(next_at):
                    return
                next_at = max(next_at + gap, time.monotonic() - 1.0)
                first_try = time.time()
                failed = self._publish(work, task_id, message)
                if failed is None:
                    return
                confirmed = time.time()
                if failed or confirmed - first_try > REFUSED_AFTER:
                    self.refused.append((first_try, confirmed))
                if state.first_publish is None:
                    state.first_publish = first_try
                state.published[task_id] = message
            # Only ids published again after an error can exist twice; one that was sent once is not.
            for task_id in set(state.republished) - set(state.published):
                del state.republished[task_id]
        except Exception as exc:
            state.publisher_failure = f"publisher crashed: {type(exc).__name__}: {exc}"
        finally:
            self._release()
            state.publishing_done.set()

    def _wait_for_room(self, next_at: float) -> bool:
        """Wait while ``backlog`` tasks are published and not done, and until ``next_at`` (monotonic);
        False if the run stops meanwhile."""
        state = self.state
        last, since = len(state.done), time.monotonic()
        while time.monotonic() < next_at or (
            self.paced and len(state.published) - len(state.done) >= state.settings.backlog
        ):
            if state.stopping.wait(0.01):
                return False
            if len(state.done) != last:
                last, since = len(state.done), time.monotonic()
            elif self.paced and time.monotonic() - since > PACING_STALL:
                # Tasks in flight that never finish (lost?) must not stop the run: the count will tell.
                self.paced = False
                state.say(
                    f" [!] no task done for {PACING_STALL:.0f} s with {state.settings.backlog} in flight: "
                    "publishing the rest without waiting"
                )
        return True

    def _publish(self, work, task_id: str, message: str) -> bool | None:
        """Publish one task until the broker confirms it: whether any try failed; None if the run stops or
        the deadline passes."""
        state = self.state
        failed_since = None
        while True:
            if state.stopping.is_set():
                return None
            try:
                if self.conn is None:
                    self.conn = self.broker.publisher_connection()
                state.sent.add(task_id)
                work.apply_async(
                    args=[message],
                    task_id=task_id,
                    connection=self.conn,
                    ignore_result=True,
                    **self.broker.publish_options(),
                )
                return failed_since is not None
            except Exception as exc:  # broker restarting, node frozen, connection reset: same task id again
                self._note_error(task_id, exc)
                failed_since = failed_since or time.monotonic()
                if time.monotonic() - failed_since > PUBLISH_DEADLINE:
                    state.publisher_failure = (
                        f"could not publish {task_id} for {PUBLISH_DEADLINE:.0f} s: {type(exc).__name__}: {exc}"
                    )
                    return None
                state.stopping.wait(0.2)

    def _note_error(self, task_id: str, exc: Exception) -> None:
        state = self.state
        state.publish_errors[type(exc).__name__] += 1
        if len(state.publish_error_samples) < MAX_SAMPLES:
            state.publish_error_samples.append(f"{task_id}: {type(exc).__name__}: {exc}")
        if task_id in state.sent:
            state.republished[task_id] += 1
        self._release()

    def _release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.release()
            self.conn = None
