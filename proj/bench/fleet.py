"""The contenders' worker processes, and the broker-side tools that fill a queue and watch it drain.

A fleet is a set of real worker processes of one kind (``celery -A proj worker``, or the
tutorial's pika ``worker.py``) that can be paused (consumer cancelled) and resumed (consumer
started) as a whole or in part. A drain is measured by filling the queue while every worker is
paused, then resuming W of them at once, so no worker gets a head start from starting earlier.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from amqp import Message
from celery.app.control import Control
from kombu import Connection, Producer

from proj import config
from proj.bench import pika_worker
from proj.bench.tuned import SETTINGS_ENV
from proj.celery import app
from proj.harness.processes import children_of
from proj.harness.workers import LoggedProcess, WorkerProcess
from proj.tasks import work

#: The reference's queue: the tutorial's settings, kept apart from Celery's ``task_queue``.
PIKA_QUEUE = "task_queue_pika"
READY_TIMEOUT = 120
CONTROL_TIMEOUT = 30


def rss_kib(pids: list[int]) -> int:
    """Resident memory (VmRSS) of the processes, summed, in KiB, as /proc tells it."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class QueueProbe:
    """Exact queue counts by passive ``queue_declare`` (no statistics delay), on a connection of its own."""

    def __init__(self, url: str):
        self.conn = Connection(url)
        self.channel = self.conn.channel()

    def counts(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers)."""
        ok = self.channel.queue_declare(queue, passive=True)
        return ok.message_count, ok.consumer_count

    def wait(self, queue: str, predicate, timeout: float, what: str, interval: float = 0.005) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts(queue)
            if predicate(*counts):
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not seen within {timeout:.0f} s (ready, consumers = {counts})")
            time.sleep(interval)

    def purge(self, queue: str) -> None:
        self.channel.queue_purge(queue)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.release()


class Loader:
    """Fill a queue fast: one connection in confirm mode, publishes pipelined, then every confirm awaited.

    Each message is still persistent and confirmed by the broker before a drain starts; only the
    round trip per message is saved (the drain is what is measured, not this).
    """

    def __init__(self, url: str):
        self.conn = Connection(url)
        self.channel = self.conn.channel()
        self.channel.confirm_select()
        self.published = self.confirmed = 0
        self.nacked = False
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)
        publish = self.channel.basic_publish

        def counting_publish(*args, **kwargs):
            self.published += 1
            return publish(*args, **kwargs)

        self.channel.basic_publish = counting_publish

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self.confirmed = max(self.confirmed, delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self.nacked = True

    def wait_confirms(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.confirmed < self.published:
            if self.nacked:
                raise RuntimeError("the broker refused (nacked) a message while the queue was being filled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {self.confirmed} of {self.published} publishes confirmed in {timeout} s")
            with contextlib.suppress(TimeoutError, OSError):
                self.conn.drain_events(timeout=min(remaining, 1.0))

    def celery_tasks(self, messages: list[str], ignore_result: bool = True) -> None:
        """``work`` tasks exactly as ``apply_async`` builds them (persistent, to ``task_queue``)."""
        producer = Producer(self.channel, auto_declare=False)
        sent_event = app.conf.task_send_sent_event
        app.conf.task_send_sent_event = False  # filling, not producing: no task-sent event per message
        try:
            for message in messages:
                work.apply_async(args=[message], producer=producer, ignore_result=ignore_result)
        finally:
            app.conf.task_send_sent_event = sent_event
        self.wait_confirms()

    def dramatiq(self, queue: str, bodies: list[str]) -> None:
        """dramatiq's messages for ``work``, as ``work.send()`` encodes them: persistent, to its queue."""
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench.dramatiq_worker import work

        for body in bodies:
            encoded = work.message(body).encode()
            self.channel.basic_publish(Message(encoded, delivery_mode=2), exchange="", routing_key=queue)
        self.wait_confirms()

    def plain(self, queue: str, bodies: list[str]) -> None:
        """The tutorial's messages: a persistent plain-text body to the default exchange."""
        for i, body in enumerate(bodies):
            self.channel.basic_publish(
                Message(body, delivery_mode=2, message_id=str(i)), exchange="", routing_key=queue
            )
        self.wait_confirms()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.release()


class ProcessFleet:
    """What a fleet of worker processes with children (Celery's pool, dramatiq's worker process) shares."""

    workers: list

    def pids(self, n: int | None = None) -> list[int]:
        """The first ``n`` workers' main processes and their children."""
        pids = []
        for w in self.workers[:n]:
            pids += [w.pid, *children_of(w.pid)]
        return pids

    def log(self) -> str:
        return "\n".join(w.log()[-2000:] for w in self.workers)

    def stop(self) -> None:
        for w in self.workers:
            w.kill()


class CeleryFleet(ProcessFleet):
    """``n`` single-process ``celery -A proj worker -c 1`` workers, paused and resumed by remote control.

    ``settings`` (Celery settings) run the workers as ``celery -A proj.bench.tuned``, the proj app with
    those settings overridden; ``env`` and ``extra_args`` go to every worker.
    """

    kind = "celery"
    queue = config.QUEUE_NAME

    def __init__(
        self,
        name: str,
        url: str,
        log_dir: Path,
        n: int,
        *,
        seconds_per_dot: float,
        management_url: str | None = None,
        settings: dict | None = None,
        concurrency: int = 1,
        prefetch_multiplier: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        self.name, self.url, self.log_dir = name, url, Path(log_dir)
        self.options = dict(
            management_url=management_url,
            concurrency=concurrency,
            prefetch_multiplier=prefetch_multiplier,
            seconds_per_dot=seconds_per_dot,
            extra_args=extra_args,
            # WARNING is what a plain `celery -A proj worker` logs at (no per-task INFO lines).
            loglevel="WARNING",
        )
        self.env = dict(env or {})
        self.settings = settings or {}
        self.workers = [self._new(i) for i in range(n)]

    def _new(self, i: int) -> WorkerProcess:
        env = dict(self.env)
        if self.settings:
            env[SETTINGS_ENV] = json.dumps(self.settings)
        worker = WorkerProcess(f"{self.name}{i + 1}", self.url, self.log_dir, env=env, **self.options)
        if self.settings:
            worker.argv[worker.argv.index("-A") + 1] = "proj.bench.tuned"
        return worker

    def start(self) -> CeleryFleet:
        for w in self.workers:
            w.start()
        return self

    def wait_ready(self) -> None:
        for w in self.workers:
            w.wait_ready(READY_TIMEOUT)

    def restart(self, i: int) -> WorkerProcess:
        """SIGKILL worker ``i``'s whole process group and start a new one with the same name."""
        self.workers[i].kill()
        self.workers[i] = self._new(i).start()
        return self.workers[i]

    def hostnames(self, n: int | None = None) -> list[str]:
        return [w.hostname for w in self.workers[:n]]

    def _control(self, command: str, n: int | None, reply: bool) -> None:
        control = Control(app)
        # Celery's control publishes through its app's producer pool, so to the app's own broker
        # whatever connection it is given; without the pool it publishes on the connection given.
        control.mailbox.producer_pool = None
        with Connection(self.url) as conn:
            method = getattr(control, command)
            hosts = self.hostnames(n)
            replies = method(
                self.queue, destination=hosts, reply=reply, timeout=CONTROL_TIMEOUT, limit=len(hosts), connection=conn
            )
        if reply and len(replies or []) < len(self.hostnames(n)):
            raise RuntimeError(f"{command}: only {len(replies or [])} of {len(self.hostnames(n))} workers answered")

    def pause(self) -> None:
        """Every worker stops consuming (its in-flight message, if any, still finishes and is acked)."""
        self._control("cancel_consumer", None, reply=True)

    def resume(self, n: int | None = None) -> None:
        """The first ``n`` workers (all by default) start consuming, all at once."""
        self._control("add_consumer", n, reply=False)


class PikaProcess(LoggedProcess):
    """One reference worker: ``python -P proj/bench/pika_worker.py``, in its own process group.

    Run as a file, not ``-m proj.bench.pika_worker``: ``-m`` would import the package ``proj`` first, and with
    it the Celery app, into the process whose speed and memory proj's workers are measured against.
    """

    def __init__(self, name: str, url: str, log_dir: Path, *, seconds_per_dot: float, record: bool = True):
        self.name = name
        self.record_path = Path(log_dir) / f"{name}.records.json" if record else None
        argv = [
            sys.executable,
            "-P",  # proj/bench/ is not put on sys.path (its profile.py would shadow the standard library's)
            pika_worker.__file__,
            "--url",
            url,
            "--queue",
            PIKA_QUEUE,
            "--seconds-per-dot",
            str(seconds_per_dot),
            "--paused",
        ]
        if self.record_path:
            argv += ["--record", str(self.record_path)]
        super().__init__(argv, Path(log_dir) / f"{name}.log", dict(os.environ, PYTHONUNBUFFERED="1"))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        self.wait_for_line(pika_worker.READY_LINE, timeout)

    def stop(self) -> None:
        """Ctrl+C (the tutorial's way out, which also writes the records), then SIGKILL the group."""
        if self.proc is None:
            return
        self.signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.kill()


class PikaFleet:
    """``n`` reference workers, paused (SIGUSR2) and resumed (SIGUSR1) by signal."""

    kind = "pika"
    queue = PIKA_QUEUE

    def __init__(self, name: str, url: str, log_dir: Path, n: int, *, seconds_per_dot: float):
        self.url = url
        self.workers = [PikaProcess(f"{name}{i + 1}", url, log_dir, seconds_per_dot=seconds_per_dot) for i in range(n)]

    def start(self) -> PikaFleet:
        for w in self.workers:
            w.start()
        return self

    def wait_ready(self) -> None:
        for w in self.workers:
            w.wait_ready()

    def pause(self) -> None:
        for w in self.workers:
            w.signal(pika_worker.PAUSE_SIGNAL)

    def resume(self, n: int | None = None) -> None:
        for w in self.workers[:n]:
            w.signal(pika_worker.RESUME_SIGNAL)

    def pids(self, n: int | None = None) -> list[int]:
        return [w.pid for w in self.workers[:n]]

    def log(self) -> str:
        return "\n".join(w.log()[-2000:] for w in self.workers)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


def dramatiq_available() -> bool:
    """Whether the optional peer (``pip install 'dramatiq[rabbitmq]'``) can run here."""
    return importlib.util.find_spec("dramatiq") is not None and importlib.util.find_spec("pika") is not None


class DramatiqProcess(LoggedProcess):
    """One ``dramatiq dramatiq_worker --processes 1 --threads 1``: a main process and one worker process.

    The module is linked into a folder of its own and run from there (``python -P -m dramatiq``), so the
    package ``proj`` (and with it Celery) is not loaded into the peer's processes, as for the pika reference.
    """

    def __init__(self, name: str, url: str, log_dir: Path, *, seconds_per_dot: float, record: bool = True):
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench import dramatiq_worker as dw

        self.name = name
        self.record_path = Path(log_dir) / f"{name}.records.json" if record else None
        module_dir = Path(log_dir) / "dramatiq-module"
        module_dir.mkdir(parents=True, exist_ok=True)
        link = module_dir / "dramatiq_worker.py"
        if not link.exists():
            link.symlink_to(Path(dw.__file__).resolve())
        argv = [sys.executable, "-P", "-m", "dramatiq", "dramatiq_worker", "--path", str(module_dir)]
        argv += ["--processes", "1", "--threads", "1"]
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            # Named as proj's workers name it, so whatever finds a run's workers by their broker finds these too.
            CELERY_BROKER_URL=url,
            dramatiq_queue_prefetch="1",
            dramatiq_restart_delay="0",
            **{dw.URL_ENV: url, dw.SECONDS_PER_DOT_ENV: str(seconds_per_dot)},
        )
        if self.record_path:
            env[dw.RECORD_ENV] = str(self.record_path)
        super().__init__(argv, Path(log_dir) / f"{name}.log", env, cwd=module_dir)
        self.worker_pid: int | None = None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench.dramatiq_worker import READY_LINE

        self.wait_for_line(READY_LINE, timeout)
        line = next(x for x in self.log().splitlines() if x.startswith(READY_LINE))
        self.worker_pid = int(line.split()[-1])

    def signal_worker(self, signum: int) -> None:
        """To the worker process (the one consuming), not to dramatiq's main process (which would stop it)."""
        if self.alive() and self.worker_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker_pid, signum)


class DramatiqFleet(ProcessFleet):
    """``n`` dramatiq workers (one process and one thread each), paused (SIGUSR2) and resumed (SIGUSR1) by signal."""

    kind = "dramatiq"

    def __init__(self, name: str, url: str, log_dir: Path, n: int, *, seconds_per_dot: float):
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench.dramatiq_worker import QUEUE

        self.queue = QUEUE
        self.name, self.url, self.log_dir, self.spd = name, url, Path(log_dir), seconds_per_dot
        self.workers = [self._new(i) for i in range(n)]

    def _new(self, i: int) -> DramatiqProcess:
        return DramatiqProcess(f"{self.name}{i + 1}", self.url, self.log_dir, seconds_per_dot=self.spd)

    def start(self) -> DramatiqFleet:
        for w in self.workers:
            w.start()
        return self

    def wait_ready(self) -> None:
        for w in self.workers:
            w.wait_ready()

    def restart(self, i: int) -> DramatiqProcess:
        self.workers[i].kill()
        self.workers[i] = self._new(i).start()
        return self.workers[i]

    def pause(self) -> None:
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench.dramatiq_worker import PAUSE_SIGNAL

        for w in self.workers:
            w.signal_worker(PAUSE_SIGNAL)

    def resume(self, n: int | None = None) -> None:
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench.dramatiq_worker import RESUME_SIGNAL

        for w in self.workers[:n]:
            w.signal_worker(RESUME_SIGNAL)
