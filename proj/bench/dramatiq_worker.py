"""The peer: a dramatiq worker under the tutorial's guarantees, the third contender of ``proj bench``.

Usage (what the bench runs, one per worker)::

    PROJ_DRAMATIQ_URL=amqp://... dramatiq_queue_prefetch=1 python -P -m dramatiq dramatiq_worker \\
        --path DIR --processes 1 --threads 1      # DIR holds only a link to this file

It is dramatiq as its documentation sets it up for RabbitMQ, with the guarantees proj's worker and
the pika reference have: ``RabbitmqBroker(confirm_delivery=True)`` (every publish waits for the
broker's confirm; messages are persistent, dramatiq's ``delivery_mode=2``), a durable queue of its own
(:data:`QUEUE`), prefetch 1 (``dramatiq_queue_prefetch=1`` in the environment) and the ack sent after the
actor returns (dramatiq's only mode). The actor :func:`work` sleeps ``seconds per dot`` per '.'.

Run like the pika reference, without the package ``proj`` (whose ``__init__`` loads the Celery app) in
the worker's memory: the bench links this file into a folder of its own and names it ``dramatiq_worker``.
The bench process itself imports it as ``proj.bench.dramatiq_worker`` (to encode and send messages).

Three things are added for the benchmark, none on the per-message path of a no-op or 10 ms task:

- pause and resume: SIGUSR2 pauses the worker's consumer (once the message in hand is acked,
  ``Worker.pause()``: the consumer is closed once idle) and SIGUSR1 resumes it; dramatiq's idle poll
  (``worker_timeout``, 1 s by default) is :data:`POLL_MS` and its consumer restart delay 0
  (``dramatiq_restart_delay``), so a resumed worker consumes within milliseconds, as proj's and pika's do;
- records: with ``PROJ_DRAMATIQ_RECORD=FILE``, the (message id, start, done) of each message, kept in
  memory and appended to FILE as one JSON line at each pause (as the pika reference does);
- a message of a second or more (:data:`ANNOUNCE_DOTS` dots) prints ``STARTED <id> <time>`` as it
  starts, which times the redelivery after a SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.parse

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware

QUEUE = "task_queue_dramatiq"
URL_ENV = "PROJ_DRAMATIQ_URL"
SECONDS_PER_DOT_ENV = "PROJ_DRAMATIQ_SECONDS_PER_DOT"
RECORD_ENV = "PROJ_DRAMATIQ_RECORD"
#: Printed (with the worker process's PID) once the worker consumes.
READY_LINE = " [*] dramatiq worker ready, pid"
STARTED = "STARTED"
#: Messages with at least this many dots announce their start (the redelivery's long task).
ANNOUNCE_DOTS = 100
#: Milliseconds between a paused consumer's looks at its flag (dramatiq's worker_timeout).
POLL_MS = 10
PAUSE_SIGNAL = signal.SIGUSR2
RESUME_SIGNAL = signal.SIGUSR1

SECONDS_PER_DOT = float(os.environ.get(SECONDS_PER_DOT_ENV, "1.0"))


def say(line: str) -> None:
    stream = sys.__stdout__ or sys.stdout
    stream.write(line + "\n")
    stream.flush()


class BenchControl(Middleware):
    """Pause/resume by signal, per-message records, the announce line: the bench's hooks (see the module)."""

    def __init__(self, record: str | None = None):
        self.record = record
        self.records: list[tuple[str, float, float]] = []
        self.started: dict[str, float] = {}
        self.worker = None

    def before_worker_boot(self, broker, worker) -> None:
        worker.worker_timeout = POLL_MS

    def after_worker_boot(self, broker, worker) -> None:
        self.worker = worker
        signal.signal(PAUSE_SIGNAL, lambda *_: threading.Thread(target=self._pause, daemon=True).start())
        signal.signal(RESUME_SIGNAL, lambda *_: worker.resume())
        say(f"{READY_LINE} {os.getpid()}")

    def _pause(self) -> None:
        # dramatiq's pause closes an idle consumer even while its worker thread still runs the last
        # message, whose ack then fails and blocks the thread for 5 s: wait for the work in hand first
        # (the bench pauses once its queue is empty, so nothing new arrives meanwhile).
        while self.worker.work_queue.unfinished_tasks:
            time.sleep(0.001)
        self.worker.pause()
        if self.record:
            with open(self.record, "a") as out:
                out.write(json.dumps(self.records) + "\n")
            self.records.clear()

    def before_process_message(self, broker, message) -> None:
        started = time.time()
        if self.record:
            self.started[message.message_id] = started
        if message.args and str(message.args[0]).count(".") >= ANNOUNCE_DOTS:
            say(f"{STARTED} {message.message_id} {started!r}")

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        if self.record:
            self.records.append((message.message_id, self.started.pop(message.message_id, 0.0), time.time()))


def pika_url(url: str) -> str:
    """Kombu's ``amqp://host:5672//`` names the vhost '/' with a bare slash; pika wants it quoted."""
    scheme, _, rest = url.partition("://")
    host, slash, vhost = rest.partition("/")
    return f"{scheme}://{host}/{urllib.parse.quote(vhost or '/', safe='') if slash else ''}"


def make_broker(url: str) -> RabbitmqBroker:
    """dramatiq's RabbitMQ broker with publisher confirms (persistent messages are its default)."""
    return RabbitmqBroker(url=pika_url(url), confirm_delivery=True)


broker = make_broker(os.environ.get(URL_ENV, "amqp://guest:guest@127.0.0.1:5672/%2F"))
broker.add_middleware(BenchControl(os.environ.get(RECORD_ENV)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def work(message: str) -> None:
    """The tutorial's task: one unit of sleep per '.' (no sleep call for none, as proj.tasks.work)."""
    dots = message.count(".")
    if dots:
        time.sleep(dots * SECONDS_PER_DOT)


def use(url: str) -> RabbitmqBroker:
    """In a publishing process: send ``work`` messages to ``url`` (``work.send(...)``, each confirmed)."""
    global broker
    broker = make_broker(url)
    dramatiq.set_broker(broker)
    work.broker = broker
    broker.declare_actor(work)
    return broker
