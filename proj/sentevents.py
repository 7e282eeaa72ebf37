"""The producer's task-sent events, published without waiting for a publisher confirm.

Celery publishes a task's task-sent event on the task's own producer, right after the task: on a
channel in confirm mode (``broker_transport_options = {"confirm_publish": True}``) that is a second
round trip for every ``.delay()``, spent on a status report. The task message keeps its confirm;
the event goes out on a second channel of the same connection that is not in confirm mode, as the
worker's task events do (proj/consumer.py). Flower still sees every task-sent event.

``.delay()``'s fast path (proj/fastpath.py) goes further: its task-sent events wait in the process's buffer
for up to SENT_FLUSH_INTERVAL and go out together, as one message (a list of events, as a worker's task events
come), from a thread of their own on a connection of their own (:class:`Batcher`). One message per event was a
second message for the broker to route on every ``.delay()``: ``proj bench --quick``, ``.delay()`` one at a time,
1,416 msgs/s with it, 1,922 without any task-sent event. Flower sees each event at most SENT_FLUSH_INTERVAL
later; the events still buffered when the process exits are sent at exit.

The private names this needs are ``proj.compat.SENT_EVENTS``, checked when the app's dispatcher is
made (a producer's first ``.delay()``); when one is missing or changed, one warning says so and the
events go Celery's way (``EventDispatcher.publish`` on the task's own producer, confirmed; one event
per message from ``send_many``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref

from celery.events.dispatcher import EventDispatcher
from celery.utils.log import get_logger
from kombu import Producer

from proj import compat

logger = get_logger(__name__)

#: Seconds a task-sent event of ``.delay()`` may wait in its process's buffer (Flower sees it this much later).
SENT_FLUSH_INTERVAL = 0.05
#: Events per message at most: a fuller buffer is sent at once, by the caller.
SENT_BUFFER_LIMIT = 500

#: One unconfirmed channel per AMQP connection (a reconnection is a new connection, with a new channel).
_producers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def event_producer(connection) -> Producer:
    """A producer on a channel of ``connection`` (a kombu Connection) whose publishes wait for no confirm."""
    amqp_connection = connection.connection
    producer = _producers.get(amqp_connection)
    if producer is None or not producer.channel.is_open:
        channel = connection.channel()
        # amqp opens every channel of a confirm_publish connection in confirm mode, lazily, at its
        # first publish; this one publishes plainly.
        channel.basic_publish = getattr(channel, compat.attrs(compat.SENT_EVENTS)["Channel._basic_publish"])
        # Kept with its channel: building a Producer per event was a tenth of a .delay()'s own time.
        producer = _producers[amqp_connection] = Producer(channel, auto_declare=False)
    return producer


class SentEvents(EventDispatcher):
    """Celery's event dispatcher, publishing on :func:`event_producer` instead of the task's channel.

    An event that cannot be published is logged, not raised: the task it reports on is queued and
    confirmed already, and a caller told otherwise would send it again.
    """

    #: Whether SENT_EVENTS' names are usable (proj.compat): else Celery's own publish on the task's producer.
    own_channel = True

    def publish(self, type, fields, producer, blind=False, **kwargs):
        kwargs.update(retry=False, retry_policy=None)
        try:
            if self.own_channel:
                producer = event_producer(producer.connection)
            return super().publish(type, fields, producer, blind=blind, **kwargs)
        except Exception as exc:
            logger.warning("task event %s not published (the task itself is queued): %r", type, exc)
            return None

    def publish_batched(self, type: str, fields: dict, producer) -> None:
        """:meth:`publish`, by way of the process's :class:`Batcher`: sent with the others of the next
        SENT_FLUSH_INTERVAL, in one message, on the batcher's own connection (Celery's way on ``producer``
        when SENT_EVENTS is off)."""
        if not self.own_channel:
            self.publish(type, fields, producer)
            return
        event = getattr(self, compat.attrs(compat.SENT_EVENTS)["EventDispatcher._prepare_event"])(type, fields)
        batcher(self).add(event)

    def publish_many(self, type: str, fields: list[dict], connection, per_message: int) -> None:
        """Events of many tasks, ``per_message`` to an event message (Celery's receivers, Flower's too,
        take a list of events, as a worker's buffered task events come)."""
        if not self.own_channel:  # Celery's way: one event per message
            try:
                producer = Producer(connection.default_channel, auto_declare=False)
                for f in fields:
                    EventDispatcher.publish(self, type, f, producer, retry=False)
            except Exception as exc:
                logger.warning("%d %s events not published (their tasks are queued): %r", len(fields), type, exc)
            return
        a = compat.attrs(compat.SENT_EVENTS)
        events = [getattr(self, a["EventDispatcher._prepare_event"])(type, f) for f in fields]
        publish = getattr(self, a["EventDispatcher._publish"])
        try:
            producer = event_producer(connection)
            for i in range(0, len(events), per_message):
                publish(events[i : i + per_message], producer, routing_key=f"{type.split('-')[0]}.multi")
        except Exception as exc:
            logger.warning("%d %s events not published (their tasks are queued): %r", len(events), type, exc)


def dispatcher(app) -> SentEvents:
    """The app's dispatcher for task-sent events (``apply_async(event_dispatcher=...)``)."""
    found = getattr(app, "_proj_sent_events", None)
    if found is None:
        found = app._proj_sent_events = SentEvents(app=app, enabled=False, buffer_while_offline=False)
        found.own_channel = compat.usable(compat.SENT_EVENTS, compat.sent_events_problem)
    return found


class Batcher:
    """Task-sent events of one process, sent together every SENT_FLUSH_INTERVAL from a thread of their own.

    The thread publishes on a connection of its own (no publisher confirms, no heartbeats: it sits idle between
    bursts), so it never writes on a connection a caller's thread is using. A batch that cannot be published is
    tried once more on a new connection, then dropped with one warning line (events are status reports: the
    tasks themselves are queued and confirmed already).
    """

    def __init__(self, dispatcher: SentEvents):
        self.dispatcher = dispatcher
        self.pid = os.getpid()
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()  # one publisher at a time (the thread, a caller with a full buffer, exit)
        self.wake = threading.Event()
        self.connection = None
        self.thread: threading.Thread | None = None

    def add(self, event: dict) -> None:
        with self.lock:
            self.events.append(event)
            count = len(self.events)
        if count >= SENT_BUFFER_LIMIT:
            self.flush()
        elif count == 1:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="proj-sent-events", daemon=True)
                self.thread.start()
                atexit.register(self.flush)
            self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            time.sleep(SENT_FLUSH_INTERVAL)  # the batching delay itself: what arrives meanwhile goes along
            self.flush()

    def flush(self) -> None:
        with self.flush_lock:
            with self.lock:
                events, self.events = self.events, []
            if not events:
                return
            for attempt in (1, 2):
                try:
                    self._publish(events)
                    return
                except Exception as exc:  # noqa: BLE001 - the broker or the connection: dropped, tried anew
                    self._drop_connection()
                    if attempt == 2:
                        logger.warning(
                            "%d task-sent events not published (their tasks are queued): %r", len(events), exc
                        )

    def _publish(self, events: list[dict]) -> None:
        if self.connection is None:
            options = {"confirm_publish": False}
            self.connection = self.dispatcher.app.connection_for_write(heartbeat=0, transport_options=options)
        # Bounded: a process exiting with events buffered while the broker is away waits a connection timeout
        # or two, not kombu's default back-off.
        self.connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2)
        publish = getattr(self.dispatcher, compat.attrs(compat.SENT_EVENTS)["EventDispatcher._publish"])
        with self.dispatcher.mutex:
            publish(events, event_producer(self.connection), routing_key="task.multi")

    def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.collect()
            except Exception:  # noqa: BLE001 - it is being dropped either way
                pass


def batcher(dispatcher: SentEvents) -> Batcher:
    """The process's batcher of ``dispatcher`` (a forked child starts its own: the parent's thread is not there)."""
    found = getattr(dispatcher, "_proj_batcher", None)
    if found is None or found.pid != os.getpid():
        found = dispatcher._proj_batcher = Batcher(dispatcher)
    return found
