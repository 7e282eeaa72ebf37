"""The producer's task-sent events, published without waiting for a publisher confirm.

Celery publishes a task's task-sent event on the task's own producer, right after the task: on a
channel in confirm mode (``broker_transport_options = {"confirm_publish": True}``) that is a second
round trip for every ``.delay()``, spent on a status report. The task message keeps its confirm;
the event goes out on a second channel of the same connection that is not in confirm mode, as the
worker's task events do (proj/consumer.py). Flower still sees every task-sent event.
"""

from __future__ import annotations

import weakref

from celery.events.dispatcher import EventDispatcher
from celery.utils.log import get_logger
from kombu import Producer

from proj import frames

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
        channel.basic_publish = channel._basic_publish
        # Kept with its channel: building a Producer per event was a tenth of a .delay()'s own time.
        producer = _producers[amqp_connection] = Producer(channel, auto_declare=False)
    return producer


class SentEvents(EventDispatcher):
    """Celery's event dispatcher, publishing on :func:`event_producer` instead of the task's channel.

    An event that cannot be published is logged, not raised: the task it reports on is queued and
    confirmed already, and a caller told otherwise would send it again.
    """

    def publish(self, type, fields, producer, blind=False, **kwargs):
        kwargs.update(retry=False, retry_policy=None)
        try:
            return super().publish(type, fields, event_producer(producer.connection), blind=blind, **kwargs)
        except Exception as exc:
            logger.warning("task event %s not published (the task itself is queued): %r", type, exc)
            return None

    def publish_written(self, type: str, fields: dict, producer) -> None:
        """:meth:`publish`, the event written as ready-made frames (proj/frames.py) once the event channel's
        connection has declared the event exchange (kombu's ``Producer.publish`` encoded the same
        headers anew for every event: a third of a ``.delay()``'s own time)."""
        try:
            connection = producer.connection
            if hash(self.exchange) not in connection.declared_entities:
                self.publish(type, fields, producer)  # declares the exchange, once per connection
                return
            channel = event_producer(connection).channel
            templates = _templates.setdefault(channel, {})
            template = templates.get(type)
            if template is None:
                template = templates[type] = frames.EventTemplate(
                    self, type, channel.channel_id, connection.connection.frame_max
                )
            event = self._prepare_event(type, fields)
            with self.mutex:
                frames.write(connection.connection, template.frames(event))
        except Exception as exc:
            logger.warning("task event %s not published (the task itself is queued): %r", type, exc)

    def publish_many(self, type: str, fields: list[dict], connection, per_message: int) -> None:
        """Events of many tasks, ``per_message`` to an event message (Celery's receivers, Flower's too,
        take a list of events, as a worker's buffered task events come)."""
        events = [self._prepare_event(type, f) for f in fields]
        try:
            producer = event_producer(connection)
            for i in range(0, len(events), per_message):
                self._publish(events[i : i + per_message], producer, routing_key=f"{type.split('-')[0]}.multi")
        except Exception as exc:
            logger.warning("%d %s events not published (their tasks are queued): %r", len(events), type, exc)


def dispatcher(app) -> SentEvents:
    """The app's dispatcher for task-sent events (``apply_async(event_dispatcher=...)``)."""
    found = getattr(app, "_proj_sent_events", None)
    if found is None:
        found = app._proj_sent_events = SentEvents(app=app, enabled=False, buffer_while_offline=False)
    return found
