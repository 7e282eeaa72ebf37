"""Many tasks at once: published pipelined on one channel, returned only when the broker confirmed each.

Usage::

    from proj.tasks import send_many
    ids = send_many(["First message.", "Second message..", "Third message..."])

``.delay()`` waits for the broker's confirm of each message before it sends the next, one round trip
per message. Here every message is published (persistent, to ``task_queue``, exactly as ``.delay()``
builds it) without waiting, the confirms are collected as they arrive, and the call returns the task
ids in order once every message is confirmed. A message the broker refuses (basic.nack, e.g. a full
queue with x-overflow reject-publish) or does not confirm within ``PROJ_PUBLISH_TIMEOUT`` is reported
by its position (1-based) and id in :class:`BulkPublishError`; nothing is ever published twice here.
Task-sent events (Flower's "sent") go out for every confirmed task, a batch per event message.
Results are not stored (``ignore_result``): the ids are what the caller keeps.

The messages are Celery's own (protocol 2, the headers and properties ``.delay()`` sends), encoded
once as a template and filled in per task by proj/frames.py, and written a hundred to a system call:
Celery's per-message path cost several times the broker's own work. Celery's ``before_task_publish``
and ``after_task_publish`` signals are not sent for them (proj connects neither). Where the frames
cannot be written (``proj.compat.RAW_FRAMES`` off: one warning says why), each message is Celery's own,
published through kombu's producer on the same channel, its confirms collected the same way.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

from proj import config, frames, queues, sentevents
from proj.tasks import TASK_NAME, PublishError, check_message

#: Messages published but not yet confirmed, at most: the publisher reads confirms before it sends more.
WINDOW = 2000
#: Messages per socket write: fewer system calls, and the broker reads them as one stream.
WRITE_BATCH = 100
#: Task-sent events per event message (Celery's receivers, Flower's too, take a list of events).
EVENTS_PER_MESSAGE = 100


@dataclasses.dataclass(frozen=True)
class Failure:
    """One message the broker did not take: its 1-based position in the batch, its task id, why."""

    position: int
    task_id: str
    reason: str

    def __str__(self) -> str:
        return f"message {self.position} (id {self.task_id}): {self.reason}"


class BulkPublishError(PublishError):
    """Some messages of a batch were not confirmed; ``failures`` names each, the others are queued."""

    def __init__(self, failures: list[Failure], ids: list[str]):
        self.failures = failures
        self.ids = ids
        failed = {f.position for f in failures}
        #: Ids of the messages the broker confirmed (queued, durable), in order.
        self.confirmed = [task_id for i, task_id in enumerate(ids, 1) if i not in failed]
        super().__init__(
            f"{len(failures)} of {len(ids)} messages not confirmed by the broker (the other "
            f"{len(self.confirmed)} are queued); first: {failures[0]}"
        )


class _Confirms:
    """Publisher confirms of one channel: which delivery tags the broker acked or nacked."""

    def __init__(self, channel):
        self.acked_upto = 0  # every tag <= this one is settled (acked or nacked)
        self.settled: set[int] = set()  # settled one at a time above acked_upto
        self.nacked: set[int] = set()
        channel.events["basic_ack"].add(self.on_ack)
        channel.events["basic_nack"].add(self.on_nack)

    def on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def on_nack(self, tag: int, multiple: bool) -> None:
        first = self.acked_upto + 1 if multiple else tag
        self.nacked.update(t for t in range(first, tag + 1) if t not in self.settled)
        self._settle(tag, multiple)

    def _settle(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.acked_upto = max(self.acked_upto, tag)
            self.settled = {t for t in self.settled if t > tag}
        else:
            self.settled.add(tag)
        while self.acked_upto + 1 in self.settled:
            self.acked_upto += 1
            self.settled.discard(self.acked_upto)

    def done(self, tag: int) -> bool:
        return tag <= self.acked_upto or tag in self.settled

    def unsettled(self, published: int) -> int:
        return published - self.acked_upto - len(self.settled)


def send_many(messages: Iterable[str], broker_url: str | None = None) -> list[str]:
    """Publish every message as ``proj.tasks.work``; return their task ids once all are confirmed.

    Raises TypeError/ValueError (naming the position) before anything is published if a message is
    not text or too large; PublishError if the broker cannot be reached (nothing was sent);
    BulkPublishError naming each message that was refused or not confirmed (the others are queued).
    """
    from celery.utils import uuid

    from proj.celery import app

    messages = list(messages)
    for position, message in enumerate(messages, 1):
        try:
            check_message(message)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"message {position}: {exc}") from None
    ids = [uuid() for _ in messages]
    if not messages:
        return ids
    with app.connection_for_write(url=broker_url, transport_options={"confirm_publish": False}) as conn:
        try:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=config.PUBLISH_TIMEOUT)
        except Exception as exc:
            from proj.management import hide_password

            raise PublishError(f"could not publish to {hide_password(conn.as_uri())}: {exc}") from exc
        failures = _publish_all(app, conn, messages, ids)
    if failures:
        raise BulkPublishError(failures, ids)
    return ids


def _publish_all(app, conn, messages: list[str], ids: list[str]) -> list[Failure]:
    """Publish, collect confirms, send task-sent events for the confirmed; the failures, by position."""
    from amqp.exceptions import PreconditionFailed

    channel = conn.channel()
    try:
        # Declared as Celery's send_task_message does before publishing: to the default exchange, a
        # message for a queue that does not exist is confirmed and dropped.
        app.amqp.queues[config.QUEUE_NAME].bind(channel).declare()
    except PreconditionFailed as exc:  # task_queue exists with other arguments
        raise PublishError(queues.explain_mismatch(exc.reply_text) or exc.reply_text) from None
    except conn.connection_errors + conn.channel_errors + (OSError,) as exc:
        raise PublishError(f"could not declare {config.QUEUE_NAME} (nothing was sent): {exc}") from exc
    channel.confirm_select()
    confirms = _Confirms(channel)
    amqp_conn = conn.connection
    template = _template(app, channel, amqp_conn)
    reprs = [template.argsrepr(message) for message in messages]
    pending: list[bytes] = []  # frames not written yet: one write (one system call) per WRITE_BATCH messages

    def write() -> None:
        data = b"".join(pending)
        pending.clear()
        frames.write(amqp_conn, data)

    published = 0  # messages handed to the socket (some of a failed write may have reached the broker)
    lost: str | None = None  # why publishing or confirming stopped early
    deadline = time.monotonic() + config.PUBLISH_TIMEOUT
    try:
        for task_id, message, argsrepr in zip(ids, messages, reprs, strict=True):
            if confirms.unsettled(published) >= WINDOW:
                write()
                while confirms.unsettled(published) >= WINDOW and lost is None:
                    deadline, lost = _read_confirms(conn, confirms, published, deadline)
            if lost is not None:
                break
            if isinstance(template, _CeleryMessages):
                template.publish(task_id, message)
            else:
                pending.append(template.frames(task_id, message, argsrepr))
            published += 1
            if len(pending) >= WRITE_BATCH:
                write()
        if pending:
            write()
        deadline = time.monotonic() + config.PUBLISH_TIMEOUT
        while lost is None and confirms.unsettled(published):
            deadline, lost = _read_confirms(conn, confirms, published, deadline)
    except conn.connection_errors + conn.channel_errors + (OSError,) as exc:
        lost = f"the channel or the connection failed ({exc!r}): it may or may not be queued"
    failures = []
    for position, task_id in enumerate(ids, 1):
        if position in confirms.nacked:
            failures.append(Failure(position, task_id, _NACKED))
        elif position > published:
            failures.append(Failure(position, task_id, f"not sent: publishing stopped, {lost}"))
        elif not confirms.done(position):
            failures.append(Failure(position, task_id, f"not confirmed: {lost}"))
    events = [
        template.sent_event(ids[i - 1], reprs[i - 1])
        for i in range(1, published + 1)
        if confirms.done(i) and i not in confirms.nacked
    ]
    if events:
        sentevents.dispatcher(app).publish_many("task-sent", events, conn, EVENTS_PER_MESSAGE)
    return failures


def _template(app, channel, amqp_conn):
    """The messages' frames (proj/frames.py), or Celery's messages through kombu when frames are off."""
    from proj import compat

    if frames.usable(amqp_conn):
        try:
            return frames.Template(app, TASK_NAME, channel.channel_id, amqp_conn.frame_max)
        except Exception as exc:  # noqa: BLE001 - the template's check failed: a library that changed
            compat.turned_off(compat.RAW_FRAMES, f"the task message template failed: {exc!r}")
    return _CeleryMessages(app, channel)


class _CeleryMessages:
    """Celery's task messages published one by one through kombu's producer (no confirm wait here)."""

    def __init__(self, app, channel):
        from celery.utils.saferepr import saferepr
        from kombu import Producer

        self.app = app
        self.producer = Producer(channel, auto_declare=False)
        self._saferepr = saferepr
        self.sent: dict[str, dict] = {}

    def argsrepr(self, message: str) -> str:
        return self._saferepr([message], self.app.amqp.argsrepr_maxsize, maxlevels=self.app.conf.task_repr_maxlevels)

    def publish(self, task_id: str, message: str) -> None:
        headers, properties, body, sent_event = self.app.amqp.create_task_message(
            task_id, TASK_NAME, [message], {}, create_sent_event=True, ignore_result=True
        )
        queue = config.QUEUE_NAME
        self.sent[task_id] = dict(sent_event, queue=queue, exchange="", routing_key=queue)
        self.producer.publish(
            body, exchange="", routing_key=queue, serializer="json", headers=headers, delivery_mode=2, **properties
        )

    def sent_event(self, task_id: str, argsrepr: str) -> dict:
        return self.sent[task_id]


_NACKED = (
    "refused by RabbitMQ (basic.nack): the queue may be full (x-max-length with x-overflow reject-publish) "
    "or the broker out of resources"
)


def _read_confirms(conn, confirms: _Confirms, published: int, deadline: float) -> tuple[float, str | None]:
    """Read what the broker sent until a confirm arrives; a new deadline, or why no confirm came."""
    before = confirms.unsettled(published)
    while confirms.unsettled(published) == before:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return deadline, f"no confirm from RabbitMQ within PROJ_PUBLISH_TIMEOUT={config.PUBLISH_TIMEOUT:g} s"
        try:
            conn.drain_events(timeout=min(remaining, 1.0))
        except TimeoutError:
            pass
    # Every confirm moves the deadline: a large batch is bounded per confirm, not as a whole.
    return time.monotonic() + config.PUBLISH_TIMEOUT, None
