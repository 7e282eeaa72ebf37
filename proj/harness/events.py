"""A record of what the workers did, taken from Celery's event stream (the stream Flower reads).

``EventRecorder`` subscribes to the ``celeryev`` exchange in a background thread and keeps every
task and worker event. It reconnects by itself when the broker restarts. Tests and ``proj lab``
read from it which worker received, started and finished which message, and which deliveries
were redeliveries (the ``task-redelivered`` event that ``proj.tasks.work`` sends).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable

from kombu import Connection

from proj.celery import app as proj_app


@dataclasses.dataclass
class TaskRecord:
    """One task as the event stream tells it."""

    uuid: str
    message: str | None = None
    sent: float | None = None
    #: One entry per delivery: (hostname, timestamp). A redelivered task has several.
    received: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    started: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    redelivered: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    succeeded: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, float, str]] = dataclasses.field(default_factory=list)
    result: object = None

    @property
    def done(self) -> bool:
        return bool(self.succeeded or self.failed)

    @property
    def worker(self) -> str | None:
        """The worker that finished it (or, if unfinished, last started or received it)."""
        for events in (self.succeeded, self.failed, self.started, self.received):
            if events:
                return events[-1][0]
        return None


def _message_of(fields: dict) -> str | None:
    args = fields.get("args")
    if isinstance(args, str):  # events carry repr() of the arguments
        try:
            args = ast.literal_eval(args)
        except (ValueError, SyntaxError):
            return None
    if isinstance(args, (list, tuple)) and args:
        return args[0] if isinstance(args[0], str) else repr(args[0])
    return None


class EventRecorder:
    """Capture task and worker events from ``broker_url`` until stopped.

    Usage::

        with EventRecorder(url) as rec:
            ...  # publish, run workers
            rec.wait_for(lambda r: r.succeeded_count() == 5, timeout=30)
    """

    def __init__(self, broker_url: str, app=None):
        self.app = proj_app if app is None else app
        self.broker_url = broker_url
        self.tasks: dict[str, TaskRecord] = {}
        self.events: list[dict] = []
        self._lock = threading.Condition()
        self._receiver = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 15) -> EventRecorder:
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"event recorder could not subscribe to {self.broker_url} within {timeout} s")
        return self

    def stop(self) -> None:
        self._stop = True
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> EventRecorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop:
            try:
                with Connection(self.broker_url, heartbeat=10) as conn:
                    self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                    self._receiver.should_stop = self._stop
                    # The receiver declares its queue when it starts consuming.
                    self._receiver.consumer_context = _announce(self._receiver.consumer_context, self._ready)
                    # wakeup=False: the wake-up broadcast would go to the app's default broker, not ours.
                    self._receiver.run(wakeup=False)  # reconnects on connection errors until should_stop
            except Exception:  # broker down longer than the receiver's own retries: try again
                if not self._stop:
                    time.sleep(0.5)

    # -- recording -----------------------------------------------------------------------------

    def _on_event(self, event: dict) -> None:
        kind = event.get("type", "")
        with self._lock:
            self.events.append(event)
            uuid = event.get("uuid")
            if kind.startswith("task-") and uuid:
                rec = self.tasks.setdefault(uuid, TaskRecord(uuid))
                host, ts = event.get("hostname", ""), float(event.get("timestamp", time.time()))
                if rec.message is None:
                    rec.message = _message_of(event)
                if kind == "task-sent":
                    rec.sent = ts
                elif kind == "task-received":
                    rec.received.append((host, ts))
                elif kind == "task-started":
                    rec.started.append((host, ts))
                elif kind == "task-redelivered":
                    rec.redelivered.append((host, ts))
                elif kind == "task-succeeded":
                    rec.succeeded.append((host, ts))
                    rec.result = event.get("result")
                elif kind == "task-failed":
                    rec.failed.append((host, ts, event.get("exception", "")))
            self._lock.notify_all()

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self) -> list[TaskRecord]:
        with self._lock:
            return [dataclasses.replace(t) for t in self.tasks.values()]

    def by_message(self) -> dict[str, TaskRecord]:
        return {t.message: t for t in self.snapshot() if t.message is not None}

    def succeeded_count(self) -> int:
        with self._lock:
            return sum(1 for t in self.tasks.values() if t.succeeded)

    def worker_events(self, kind: str) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e.get("type") == kind]

    def wait_for(self, predicate: Callable[[EventRecorder], bool], timeout: float, what: str = "") -> None:
        """Block until ``predicate(self)`` holds; TimeoutError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                self._lock.release()
                try:
                    if predicate(self):
                        return
                finally:
                    self._lock.acquire()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"not seen within {timeout} s: {what or predicate}")
                self._lock.wait(min(remaining, 0.2))


def _announce(consumer_context, ready: threading.Event):
    """Wrap ConsumerMixin.consumer_context so ``ready`` is set once the queue is consumed."""

    @contextlib.contextmanager
    def wrapped(**kwargs):
        with consumer_context(**kwargs) as ctx:
            ready.set()
            yield ctx

    return wrapped
