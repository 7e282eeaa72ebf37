"""The producer's task-sent events, published without waiting for a publisher confirm.

Celery publishes a task's task-sent event on the task's own producer, right after the task: on a
channel in confirm mode (``broker_transport_options = {"confirm_publish": True}``) that is a second
round trip for every ``.delay()``, spent on a status report. The task message keeps its confirm;
the event goes out on a second channel of the same connection that is not in confirm mode, as the
worker's task events do (proj/consumer.py). Flower still sees every task-sent event.

The private names this needs are ``proj.compat.SENT_EVENTS``, checked when the app's dispatcher is
made (a producer's first ``.delay()``); when one is missing or changed, one warning says so and the
events go Celery's way (``EventDispatcher.publish`` on the task's own producer, confirmed; one event
per message from ``send_many``).
"""

from __future__ import annotations

import weakref

from celery.events.dispatcher import EventDispatcher
from celery.utils.log import get_logger
from kombu import Producer

from proj import compat, frames

logger = get_logger(__name__)

#: One unconfirmed channel per AMQP connection (a reconnection is a new connection, with a new channel).
_producers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Event frames per event channel and type (SentEvents.publish_written).
_templates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    def publish_written(self, type: str, fields: dict, producer) -> None:
        """:meth:`publish`, the event written as ready-made frames (proj/frames.py) once the event channel's
        connection has declared the event exchange (kombu's ``Producer.publish`` encoded the same
        headers anew for every event: a third of a ``.delay()``'s own time)."""
        if not self.own_channel or compat.is_off(compat.RAW_FRAMES) or compat.is_off(compat.FAST_PATH):
            self.publish(type, fields, producer)
            return
        try:
            connection = producer.connection
            if hash(self.exchange) not in compat.declared(connection):
                self.publish(type, fields, producer)  # declares the exchange, once per connection
                return
            channel = event_producer(connection).channel
            templates = _templates.setdefault(channel, {})
            template = templates.get(type)
            if template is None:
                template = templates[type] = frames.EventTemplate(
                    self, type, channel.channel_id, connection.connection.frame_max
                )
            event = getattr(self, compat.attrs(compat.SENT_EVENTS)["EventDispatcher._prepare_event"])(type, fields)
            with self.mutex:
                frames.write(connection.connection, template.frames(event))
        except Exception as exc:
            logger.warning("task event %s not published (the task itself is queued): %r", type, exc)

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
