"""The publish API: how a task message reaches RabbitMQ, checked, confirmed, bounded and loud.

:class:`MessageTask` is the base of the task (proj/tasks.py builds ``work`` on it): ``.delay()`` and
``.apply_async()`` check the message, publish it (proj/fastpath.py when it can, Celery's path otherwise) and
wait for the broker's confirm, sending a nacked message again within PROJ_PUBLISH_TIMEOUT.
:func:`send_many` publishes many at once (proj/bulk.py). :class:`PublishError`, :func:`check_message` and
:data:`TASK_NAME` come from proj/messages.py, which every producer path shares.

The layers, each importing only those below it: proj.tasks (the task) -> proj.producer (this module) ->
proj.bulk, proj.fastpath (the fast paths) -> proj.frames, proj.sentevents, proj.confirms (the wire) ->
proj.messages, proj.config. tests/test_imports.py checks that no module of proj imports one that imports it.
"""

from __future__ import annotations

import time

from amqp.exceptions import MessageNacked, PreconditionFailed
from celery import Task
from celery.utils.threads import bound_open_broker_sockets
from kombu.exceptions import OperationalError
from kombu.utils.uuid import uuid

from proj import config, confirms, fastpath, majority, queues, sentevents
from proj.bulk import BulkPublishError, Failure, send_many
from proj.management import hide_password
from proj.messages import TASK_NAME, PublishError, check_message

__all__ = (
    "TASK_NAME",
    "BulkPublishError",
    "Failure",
    "MessageTask",
    "PublishError",
    "check_message",
    "send_many",
)


class MessageTask(Task):
    """Checks a message at the producer and makes every publish confirmed, bounded and loud.

    Refused before anything is published: a non-string message (TypeError), a message over
    PROJ_MAX_MESSAGE_BYTES (ValueError). Refused by the broker: PublishError naming the queue
    (a basic.nack that lasts, for example a full queue with x-overflow reject-publish; or a
    task_queue that exists with other arguments).

    A nack is sent again under the same task id until PROJ_PUBLISH_TIMEOUT has passed: a quorum
    queue nacks for about a second while it elects a new leader after a node dies, and the caller
    should not see that. The same id makes a message that was taken after all (a nack does not
    prove it was not) one task delivered twice, which acks late already allows, never two tasks.
    ``retry=False`` (Celery's option: no retry when the connection fails) also sends a nacked
    message once: a caller that re-sends by itself (proj chaos's publisher) sees every nack.
    """

    def apply_async(self, args=None, kwargs=None, *rest, **options):
        message = (args or ())[0] if args else (kwargs or {}).get("message")
        check_message(message)
        options.setdefault("confirm_timeout", config.PUBLISH_TIMEOUT)
        # Celery would copy the producer's task_time_limit into the message, where it overrides the
        # worker's: the limit that must hold is the worker's (checked against its broker's consumer_timeout).
        options.setdefault("time_limit", None)
        options.setdefault("soft_time_limit", None)
        # The task-sent event (Flower's "sent") waits for no confirm of its own: proj/sentevents.py.
        options.setdefault("event_dispatcher", sentevents.dispatcher(self.app))
        if not options.get("task_id"):
            options["task_id"] = uuid()
        started = time.monotonic()
        # A failover list: PROJ_PUBLISH_TIMEOUT for each of up to NODES_TRIED nodes (see nodes_tried).
        nodes = nodes_tried(self.app, options)
        bound = config.PUBLISH_TIMEOUT * nodes
        # retry=False: the first nack is the caller's (it re-sends by itself, and counts it).
        deadline = started + (0.0 if options.get("retry") is False else bound)
        pause, sends = NACK_RETRY_FIRST_PAUSE, 0
        while True:
            try:
                # Every confirm of this call, Celery's re-sends included, within the bound.
                with confirms.deadline(started + bound):
                    return self._publish_once(args, kwargs, rest, options, nodes)
            except _Nacked as nacked:
                sends += 1
                if time.monotonic() + pause > deadline:
                    raise PublishError(
                        f"RabbitMQ refused the message for queue {nacked.queue!r} (basic.nack), sent {sends} "
                        f"time(s) over {time.monotonic() - started:.1f} s (PROJ_PUBLISH_TIMEOUT="
                        f"{config.PUBLISH_TIMEOUT:g}): the queue may be full (x-max-length with x-overflow "
                        "reject-publish), have no leader (a quorum queue without a majority of its nodes) "
                        "or the broker be out of resources"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, NACK_RETRY_MAX_PAUSE)

    def _publish_once(self, args, kwargs, rest, options, nodes: int = 1):
        queue = options.get("queue") or config.QUEUE_NAME
        queue = getattr(queue, "name", queue)
        try:
            if fastpath.eligible(self, args, kwargs, rest, options):
                try:
                    return fastpath.send(self, args[0], options)
                except MessageNacked:
                    raise
                except confirms.ConfirmTimeout:
                    if not confirms.time_left():
                        raise
                    # a failover list: the fast path closed that connection and moved it to the next node
                except Exception:  # noqa: BLE001 - fastpath.Unavailable, or anything it did not foresee
                    pass  # Celery's path, same id: it connects, declares task_queue, selects confirms or reconnects
            if nodes > 1:
                return self._apply_async_bounded(args, kwargs, rest, options)
            return super().apply_async(args, kwargs, *rest, **options)
        except (MessageNacked, OperationalError, confirms.ConfirmTimeout) as exc:
            if _caused_by(exc, MessageNacked):
                raise _Nacked(queue) from None
            if _caused_by(exc, confirms.ConfirmTimeout):
                # sent, never confirmed (the fast path's, or Celery's wrapped by kombu): it may yet be taken
                # once a blocked connection is read again, so the caller gets its id
                raise PublishError(
                    f"{confirms.TIMED_OUT}; the task may still run once (its id: {options['task_id']})"
                ) from None
            # the broker could not be reached within PROJ_PUBLISH_TIMEOUT
            conn = options.get("connection")
            url = conn.as_uri() if conn is not None else self.app.conf.broker_url
            raise PublishError(f"could not publish to {hide_password(url)}: {exc}") from exc
        except PreconditionFailed as exc:
            raise PublishError(queues.explain_mismatch(exc.reply_text) or exc.reply_text) from None

    def _apply_async_bounded(self, args, kwargs, rest, options):
        """Celery's path on a failover list: every wait bounded by PROJ_PUBLISH_TIMEOUT, then the next node.

        Celery waits for each declare-ok without a timeout, and kombu's retry closes a connection politely
        (a channel close, then a connection close, each waiting for its close-ok) before it moves to the
        next node. A RabbitMQ 4.x node cut off from the majority of its cluster answers neither: it takes
        a new queue's declaration (the rpc reply queue's) and answers only when its metadata store gives up,
        30 s later (measured, 4.3.6), and the channel waits behind it. Here the socket's reads are bounded,
        and a connection that failed is dropped without a word (``collect``) and moved to the next node of
        the list (``maybe_switch_next``), where the message is sent again under the same id.
        """
        with self.app.producer_pool.acquire(block=True) as producer:
            conn = producer.connection
            while True:
                try:
                    conn.ensure_connection(timeout=max(confirms.time_left() or 0.0, 0.1))
                    bound_open_broker_sockets(conn, config.PUBLISH_TIMEOUT)
                    if producer.channel is not conn.default_channel:
                        producer.revive(conn.default_channel)
                    return super().apply_async(args, kwargs, *rest, **{**options, "producer": producer, "retry": False})
                except (OperationalError, *conn.recoverable_connection_errors) as exc:
                    if _caused_by(exc, MessageNacked) or not confirms.time_left():
                        raise
                    conn.collect()  # no close-ok waited for from a node that may not answer
                    conn.maybe_switch_next()


#: At most this many nodes of a failover list are tried by one ``.delay()``, PROJ_PUBLISH_TIMEOUT each.
NODES_TRIED = 3


def nodes_tried(app, options) -> int:
    """How many nodes one publish may try: one, unless the broker URL is a failover list (a cluster) and
    the caller let Celery retry. A node cut off from its cluster's majority (RabbitMQ 4.x keeps its clients)
    never confirms: the publish then moves to the next node within PROJ_PUBLISH_TIMEOUT, so a ``.delay()``
    started on such a node is confirmed by the majority within NODES_TRIED x PROJ_PUBLISH_TIMEOUT."""
    if options.get("retry") is False or options.get("connection") is not None or options.get("producer") is not None:
        return 1
    return max(1, min(len(majority.broker_urls(app, write=True)), NODES_TRIED))


#: Pauses between sends of a nacked message: 0.1 s, doubling up to 1 s, within PROJ_PUBLISH_TIMEOUT.
NACK_RETRY_FIRST_PAUSE = 0.1
NACK_RETRY_MAX_PAUSE = 1.0


class _Nacked(Exception):
    """A basic.nack: worth sending the same message again until the publish timeout."""

    def __init__(self, queue: str):
        super().__init__(queue)
        self.queue = queue


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
