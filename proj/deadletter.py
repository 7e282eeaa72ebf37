"""Moving messages between ``task_queue`` and ``task_queue.dead`` without ever losing one.

Every move is copy-then-ack: the copy is published with publisher confirms, and only once the
broker has confirmed it is the original acked. A crash in between leaves two copies (at least
once), never none.

Headers a dead letter carries (besides the original message's own):

- ``x-proj-dead-reason``: why no worker could run it, in words;
- ``x-proj-dead-at``: when (seconds since the epoch);
- ``x-proj-dead-by``: which worker moved it;
- ``x-proj-original-content-type`` / ``-encoding``: the original properties, restored on requeue.
"""

from __future__ import annotations

import socket
import time

from celery.utils.log import get_logger
from kombu import Connection

from proj.queues import DEAD_QUEUE_NAME, QUEUE_NAME

logger = get_logger(__name__)

REASON = "x-proj-dead-reason"
DEAD_AT = "x-proj-dead-at"
DEAD_BY = "x-proj-dead-by"
ORIGINAL_CONTENT_TYPE = "x-proj-original-content-type"
ORIGINAL_CONTENT_ENCODING = "x-proj-original-content-encoding"
#: Deliveries so far of a classic-queue message, carried by its republished copies.
DELIVERIES = "x-proj-deliveries"

#: Properties copied from the original message (RabbitMQ's basic properties).
_COPIED = ("delivery_mode", "priority", "correlation_id", "reply_to", "message_id", "timestamp", "type", "app_id")


def copy_properties(message) -> dict:
    props = message.properties or {}
    return {k: props[k] for k in _COPIED if props.get(k) is not None}


def publish_raw(
    connection: Connection,
    body: bytes,
    routing_key: str,
    headers: dict,
    properties: dict,
    content_type: str | None,
    content_encoding: str | None,
    timeout: float = 10,
) -> None:
    """Publish ``body`` unchanged through the default exchange, persistent, and wait for the confirm."""
    channel = connection.default_channel
    props = {"delivery_mode": 2, **properties}
    msg = channel.prepare_message(
        body if isinstance(body, bytes) else str(body).encode(),
        props.pop("priority", None),
        content_type or None,
        content_encoding or None,
        headers,
        props,
    )
    if not content_type:
        msg.properties.pop("content_type", None)
        msg.properties.pop("content_encoding", None)
    channel.basic_publish(msg, exchange="", routing_key=routing_key, mandatory=False, confirm_timeout=timeout)


def confirming(connection_or_url) -> Connection:
    """A connection whose channels use publisher confirms."""
    if isinstance(connection_or_url, Connection):
        connection_or_url = connection_or_url.as_uri(include_password=True)
    return Connection(connection_or_url, transport_options={"confirm_publish": True})


def dead_letter(app, message, reason: str) -> bool:
    """Copy ``message`` to task_queue.dead with ``reason``, then ack it. False (and no ack) on failure."""
    headers = {k: v for k, v in (message.headers or {}).items()}
    headers.update(
        {
            REASON: reason,
            DEAD_AT: time.time(),
            DEAD_BY: socket.gethostname(),
            ORIGINAL_CONTENT_TYPE: message.content_type or "",
            ORIGINAL_CONTENT_ENCODING: message.content_encoding or "",
        }
    )
    return _move(app, message, DEAD_QUEUE_NAME, headers, message.content_type, message.content_encoding)


def republish(app, message, headers: dict) -> bool:
    """Put a copy of ``message`` (with ``headers``) back on task_queue, then ack the original."""
    return _move(app, message, QUEUE_NAME, headers, message.content_type, message.content_encoding)


def _move(app, message, routing_key: str, headers: dict, content_type, content_encoding) -> bool:
    try:
        with confirming(app.connection_for_write()) as conn:
            publish_raw(
                conn, message.body, routing_key, headers, copy_properties(message), content_type, content_encoding
            )
    except Exception as exc:  # the broker is gone or refused: keep the original, unacked
        logger.error("could not move message to %s (left unacked, it will come back): %s", routing_key, exc)
        return False
    message.ack()
    return True
