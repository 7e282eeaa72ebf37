"""The run's publisher: the numbered tasks, confirmed one by one, paced so publishing lasts the whole run.

Pacing keeps at most ``backlog`` tasks published and not yet done, so publishes go on during the
faults (a broker restart hits producers too). A publish that fails is sent again with the same task
id until ``PUBLISH_DEADLINE``: such a task may exist twice, and the checker knows it.
"""

from __future__ import annotations

import contextlib
import time

from proj.chaos.broker import RunBroker
from proj.chaos.state import RunState

#: A publish keeps being retried (same task id) this long, e.g. through a broker restart.
PUBLISH_DEADLINE = 180.0
#: The publisher stops pacing itself after this long without a task done (tasks in flight may be lost).
PACING_STALL = 60.0
#: Publish errors kept word for word in the report.
MAX_SAMPLES = 10


class Publisher:
    def __init__(self, state: RunState, broker: RunBroker):
        self.state = state
        self.broker = broker
        self.conn = None
        self.paced = True

    def start(self) -> None:
        self.state.start_thread(self.run, "chaos-publisher")

    def wait(self) -> None:
        """Until the publisher has ended (it ends by itself: each publish has a deadline); raise its failure."""
        self.state.publishing_done.wait()
        self.state.check_publisher()

    def run(self) -> None:
        state = self.state
        try:
            from proj import tasks
            from proj.celery import app

            # The task of proj's app, not the thread's current app: in a thread other than the one that
            # created the app, Celery's current app is its fallback 'default' app, which routes to 'celery'.
            work = app.tasks[tasks.work.name]
            for task_id, message in state.tasks:
                if not self._wait_for_room():
                    return
                if not self._publish(work, task_id, message):
                    return
                if state.first_publish is None:
                    state.first_publish = time.time()
                state.published[task_id] = message
            # Only ids published again after an error can exist twice; one that was sent once is not.
            state.republished &= set(state.published)
        except Exception as exc:
            state.publisher_failure = f"publisher crashed: {type(exc).__name__}: {exc}"
        finally:
            self._release()
            state.publishing_done.set()

    def _wait_for_room(self) -> bool:
        """Wait while ``backlog`` tasks are published and not done; False if the run stops meanwhile."""
        state = self.state
        last, since = len(state.done), time.monotonic()
        while self.paced and len(state.published) - len(state.done) >= state.settings.backlog:
            if state.stopping.wait(0.01):
                return False
            if len(state.done) != last:
                last, since = len(state.done), time.monotonic()
            elif time.monotonic() - since > PACING_STALL:
                # Tasks in flight that never finish (lost?) must not stop the run: the count will tell.
                self.paced = False
                state.say(
                    f" [!] no task done for {PACING_STALL:.0f} s with {state.settings.backlog} in flight: "
                    "publishing the rest without waiting"
                )
        return True

    def _publish(self, work, task_id: str, message: str) -> bool:
        """Publish one task until the broker confirms it; False if the run stops or the deadline passes."""
        from kombu import Connection

        state = self.state
        failed_since = None
        while True:
            if state.stopping.is_set():
                return False
            try:
                if self.conn is None:
                    self.conn = Connection(
                        self.broker.url, transport_options={"confirm_publish": True}, connect_timeout=5
                    )
                    self.conn.ensure_connection(max_retries=1)
                state.sent.add(task_id)
                work.apply_async(
                    args=[message],
                    task_id=task_id,
                    connection=self.conn,
                    ignore_result=True,
                    retry=False,
                    # On a cluster the workers declared task_queue as a quorum queue; this
                    # process's PROJ_QUEUE_TYPE may say otherwise.
                    **({"declare": []} if self.broker.cluster is not None else {}),
                )
                return True
            except Exception as exc:  # broker restarting, connection reset: same task id again
                self._note_error(task_id, exc)
                failed_since = failed_since or time.monotonic()
                if time.monotonic() - failed_since > PUBLISH_DEADLINE:
                    state.publisher_failure = (
                        f"could not publish {task_id} for {PUBLISH_DEADLINE:.0f} s: {type(exc).__name__}: {exc}"
                    )
                    return False
                state.stopping.wait(0.2)

    def _note_error(self, task_id: str, exc: Exception) -> None:
        state = self.state
        state.publish_errors[type(exc).__name__] += 1
        if len(state.publish_error_samples) < MAX_SAMPLES:
            state.publish_error_samples.append(f"{task_id}: {type(exc).__name__}: {exc}")
        if task_id in state.sent:
            state.republished.add(task_id)
        self._release()

    def _release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.release()
            self.conn = None
