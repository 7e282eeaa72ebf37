"""One lab session: a broker (private unless given), the event recorder, the workers, the progress line.

A session lives for one ``proj lab`` command, so ``proj lab all`` pays for one broker start and
reuses idle workers from one scenario to the next when they have the settings it needs.
Everything the session starts it ends in ``close()``, by PID: workers by process group, the
private node through ``Node.stop()``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from amqp.exceptions import NotFound
from kombu import Connection

from proj import config
from proj.celery import app
from proj.harness.events import EventRecorder
from proj.harness.workers import WorkerProcess
from proj.lab import record as rec
from proj.management import configured_management_url, hide_password
from proj.new_task import describe_broker_error
from proj.rabbit.node import BrokerError, Node, private_node
from proj.tasks import work

#: Worker start-up and event subscription, on a loaded two-core machine.
START_TIMEOUT = 60.0
CONNECT_TIMEOUT = 5.0


class LabError(RuntimeError):
    """Something the person running the lab can act on; the message says what failed and what to do."""


class Lab:
    """Broker, recorder and workers for one ``proj lab`` command."""

    def __init__(self, *, broker_url: str | None, seconds_per_dot: float, out_dir: Path, echo: Callable = print):
        self.broker_url = broker_url
        self.seconds_per_dot = seconds_per_dot
        self.out_dir = Path(out_dir)
        self.log_dir = self.out_dir / "logs"
        self.echo = echo
        self.node: Node | None = None
        self.data_dir: Path | None = None
        self.url: str = broker_url or ""
        self.recorder: EventRecorder | None = None
        #: Every worker this session started (dead ones too), and its prefetch multiplier.
        self.workers: list[WorkerProcess] = []
        self.prefetch: dict[str, int] = {}
        #: Each worker's PROJ_POOL when the session chose one (a pool child to kill needs prefork's).
        self.pools: dict[str, str | None] = {}
        self._worker_count = 0
        self._stopping: list[threading.Thread] = []
        self._keep_data_dir = False

    @property
    def private(self) -> bool:
        return self.broker_url is None

    @property
    def management_url(self) -> str:
        if self.node is not None:
            return self.node.management_url
        return configured_management_url(self.url)

    # -- the broker ------------------------------------------------------------------------------

    def open(self) -> Lab:
        if self.private:
            self._start_private_node()
        else:
            self._check_given_broker()
        self.recorder = self._subscribe()
        return self

    def _start_private_node(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="proj-lab-"))
        self.node = private_node(self.data_dir)
        port = self.node.port
        self.url = self.node.url
        self.echo(f" [*] Starting a private RabbitMQ on 127.0.0.1:{port} (data in {self.data_dir})")
        try:
            self.node.start()
        except BrokerError as exc:
            self._keep_data_dir = True  # its logs say why
            raise LabError(f"could not start a private RabbitMQ: {exc}") from exc

    def _check_given_broker(self) -> None:
        where = hide_password(self.url)
        try:
            consumers, ready = self.queue_state()
        except Exception as exc:  # any connection failure is one line for the user
            raise LabError(f"cannot reach the broker at {where}: {describe_broker_error(exc)}") from exc
        if consumers:
            raise LabError(
                f"{config.QUEUE_NAME} on {where} already has {consumers} consumer(s): the lab needs the queue to "
                "itself; stop those workers or run without --broker-url (a private broker)"
            )
        if ready:
            raise LabError(
                f"{config.QUEUE_NAME} on {where} already holds {ready} message(s): drain them with a worker "
                f"(or `celery -A proj purge -f -Q {config.QUEUE_NAME}`), or run without --broker-url"
            )
        self.echo(f" [*] Using the broker at {where}")

    def _subscribe(self) -> EventRecorder:
        try:
            return EventRecorder(self.url).start(timeout=START_TIMEOUT)
        except TimeoutError as exc:
            raise LabError(f"could not subscribe to Celery's events on {hide_password(self.url)}: {exc}") from exc

    def queue_state(self) -> tuple[int, int]:
        """(consumers, ready messages) of ``task_queue``, exact, from a passive declare; (0, 0) if absent."""
        with Connection(self.url, connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=CONNECT_TIMEOUT)
            try:
                ok = conn.default_channel.queue_declare(config.QUEUE_NAME, passive=True)
            except NotFound:
                return 0, 0
            return ok.consumer_count, ok.message_count

    def queue_depth(self) -> int:
        return self.queue_state()[1]

    def restart_broker(self) -> dict:
        """Stop and start the private node with its data; the recorder re-subscribes. Returns the times."""
        assert self.node is not None, "only a private broker is restarted"
        if self.recorder is not None:
            # Its thread takes up to a second to notice; let it finish while the broker stops.
            stopping = threading.Thread(target=self.recorder.stop, name="recorder-stop", daemon=True)
            stopping.start()
            self._stopping.append(stopping)
            self.recorder = None
        times = {"stopping_at": time.time()}
        self.node.stop()
        times["stopped_at"] = time.time()
        try:
            self.node.start()
        except BrokerError as exc:
            self._keep_data_dir = True
            raise LabError(f"the private RabbitMQ did not come back after the restart: {exc}") from exc
        times["ready_at"] = time.time()
        self.recorder = self._subscribe()
        return times

    # -- workers -------------------------------------------------------------------------------

    def alive_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def ensure_workers(self, n: int, prefetch: int, pool: str | None = None) -> list[WorkerProcess]:
        """``n`` idle workers with ``prefetch`` (and ``pool``, PROJ_POOL's when None): the ones already running if
        they fit, else fresh ones."""
        live = self.alive_workers()
        if len(live) == n and all((self.prefetch[w.name], self.pools.get(w.name)) == (prefetch, pool) for w in live):
            return live
        self.stop_workers()
        return self.start_workers(n, prefetch, pool)

    def start_workers(self, n: int, prefetch: int, pool: str | None = None) -> list[WorkerProcess]:
        """Start ``n`` workers at once and wait until the broker has them all as consumers."""
        started = []
        for _ in range(n):
            self._worker_count += 1
            w = WorkerProcess(
                f"w{self._worker_count}",
                self.url,
                self.log_dir,
                prefetch_multiplier=prefetch,
                seconds_per_dot=self.seconds_per_dot,
                # Workers set task_queue's dead-letter policy through the management API: this broker's.
                env={"PROJ_MANAGEMENT_URL": self.management_url, **({"PROJ_POOL": pool} if pool else {})},
            )
            self.workers.append(w.start())
            self.prefetch[w.name] = prefetch
            self.pools[w.name] = pool
            started.append(w)
        for w in started:
            try:
                w.wait_ready(START_TIMEOUT)
            except (RuntimeError, TimeoutError) as exc:
                raise LabError(f"worker {w.name} did not start: see {w.log_path}") from exc
        expected = len(self.alive_workers())
        self.wait_until(lambda: self.queue_state()[0] == expected, f"{expected} consumers on {config.QUEUE_NAME}")
        return started

    def stop_workers(self) -> None:
        """Warm shutdown for every running worker, then SIGKILL to each process group (orphans included)."""
        for w in self.alive_workers():
            w.signal(signal.SIGTERM)  # warm shutdown: finish what runs (nothing, between scenarios), ack, exit
        for w in self.workers:
            if w.alive():
                with contextlib.suppress(Exception):
                    w.wait_exit(10)
            w.kill()

    def worker_info(self, workers: list[WorkerProcess]) -> list[dict]:
        return [
            {"hostname": w.hostname, "name": w.name, "pid": w.pid, "prefetch": self.prefetch[w.name]} for w in workers
        ]

    def by_hostname(self, hostname: str) -> WorkerProcess:
        return next(w for w in self.workers if w.hostname == hostname)

    # -- messages ------------------------------------------------------------------------------

    def publish(self, messages: list[str]) -> list[dict]:
        """Send each message as ``proj.tasks.work`` (persistent, confirmed); returns uuid and time of each."""
        out = []
        try:
            # The app's connection settings for this URL, publisher confirms included.
            with app.connection_for_write(self.url) as conn:
                for m in messages:
                    at = time.time()
                    result = work.apply_async(args=[m], connection=conn, ignore_result=True)
                    out.append({"uuid": result.id, "message": m, "published": at})
        except Exception as exc:
            raise LabError(f"could not publish to {hide_password(self.url)}: {describe_broker_error(exc)}") from exc
        return out

    def tasks_done(self, uuids: list[str]) -> int:
        if self.recorder is None:
            return 0
        return sum(1 for t in self.recorder.snapshot() if t.uuid in uuids and t.done)

    def wait_done(self, label: str, uuids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.tasks_done(uuids) < len(uuids):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(
                    f"{label}: only {self.tasks_done(uuids)} of {len(uuids)} tasks finished within {timeout:.0f} s; "
                    f"see the worker logs in {self.log_dir}"
                )
            # Wakes on every event the recorder gets.
            with contextlib.suppress(TimeoutError):
                self.recorder.wait_for(lambda r: self.tasks_done(uuids) == len(uuids), min(remaining, 0.5))

    def wait_until(self, predicate: Callable[[], object], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise LabError(f"not seen within {timeout:.0f} s: {what}; see the worker logs in {self.log_dir}")
            time.sleep(0.05)

    def timeout_for(self, messages: list[str]) -> float:
        """A generous deadline: the whole workload on one worker, three times over, plus start-up slack."""
        return 30.0 + 3 * sum(m.count(".") for m in messages) * self.seconds_per_dot

    def run_record(self, label: str, published: list[dict], workers: list[WorkerProcess], marks: list[dict]) -> dict:
        """The run's record (see ``record``), from the event stream."""
        by_uuid = {t.uuid: t for t in self.recorder.snapshot()} if self.recorder else {}
        tasks = [rec.task_entry(p, by_uuid.get(p["uuid"])) for p in published]
        for t in tasks:
            rec.close_abandoned(t, marks)
        return {
            "label": label,
            "t0": min(p["published"] for p in published),
            "workers": self.worker_info(workers),
            "tasks": tasks,
            "marks": marks,
        }

    def progress(self, label: str, uuids: list[str]) -> Progress:
        return Progress(self, label, uuids)

    # -- clean-up ------------------------------------------------------------------------------

    def close(self) -> None:
        """End everything this session started; safe to call more than once, and after a failure."""
        if self.recorder is not None:
            self.recorder.stop()
            self.recorder = None
        for thread in self._stopping:
            thread.join(10)
        # No warm shutdown here: after an interrupt a worker may be mid-task, and waiting for it would
        # keep Ctrl+C waiting. Their unacknowledged messages go back to the queue, as the tutorial says.
        for w in self.workers:
            w.kill()
        if self.node is not None:
            self.node.stop()
            self.node = None
        # A node that failed keeps its data dir for its logs (the error names it); otherwise it goes.
        logs = self.data_dir / "log" if self.data_dir is not None else None
        if self._keep_data_dir and logs is not None and not (logs.exists() and any(logs.iterdir())):
            self._keep_data_dir = False
        if self.data_dir is not None and not self._keep_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Progress:
    """A live line while a scenario runs: tasks done / total, workers alive (and what is happening).

    On a terminal it rewrites one line; otherwise it prints a line each time the figures change.
    """

    def __init__(self, lab: Lab, label: str, uuids: list[str]):
        self.lab, self.label, self.uuids = lab, label, list(uuids)
        self.phase = ""
        self.tty = sys.stdout.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-progress", daemon=True)
        self._last = ""

    def track(self, uuids: list[str]) -> None:
        self.uuids = list(uuids)

    def line(self) -> str:
        done, alive = self.lab.tasks_done(self.uuids), len(self.lab.alive_workers())
        text = f"  {self.label}: {done}/{len(self.uuids)} tasks done, {alive} worker{'s' if alive != 1 else ''} alive"
        return text + (f" ({self.phase})" if self.phase else "")

    def _show(self) -> None:
        text = self.line()
        if text == self._last:
            return
        self._last = text
        if self.tty:
            sys.stdout.write("\r" + text + "\x1b[K")
            sys.stdout.flush()
        else:
            print(text, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):  # a broker restart mid-read is not worth a traceback
                self._show()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self._show()
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Let clean-up finish: a second Ctrl+C (or SIGTERM) must not leave a broker or workers behind."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
