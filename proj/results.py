"""Task results over RabbitMQ itself: Celery's ``rpc://`` backend, its reply queue declared without a round trip.

Before it sends a task whose result is wanted, Celery declares the sender's reply queue (auto-delete,
so kombu never caches that declaration) and waits for the broker's declare-ok: a second round trip for
every ``.delay()``, on top of the task's publisher confirm (``proj bench``: 378 against 589
``.delay()`` calls/s with ``ignore_result``). Here the declaration goes out with ``nowait`` on the same
channel, just before the task: the broker handles a channel's frames in order, so the reply queue
exists before the task is even routed, and the task's confirm comes after both. A declaration the
broker refuses closes the channel, and the task's publish then fails loudly, as it would have.

Whether the process must skip the declaration (a pool process: Celery's ``task_join_will_block``) is a
private name of Celery's (``proj.compat.REPLY_DECLARE``); without it, Celery's own declaration is used.
"""

from __future__ import annotations

import weakref

from amqp import spec
from celery.backends.rpc import RPCBackend as CeleryRPCBackend

from proj import compat, frames


class RPCBackend(CeleryRPCBackend):
    """``rpc://`` (one reply queue per client process, results sent only to the task's sender)."""

    #: Celery's rpc backend sends a result up to 21 times (max_retries 20), each send waiting up to
    #: PROJ_PUBLISH_TIMEOUT for its confirm. A result whose reply queue is on a node that froze or was cut off
    #: from its cluster is never confirmed: a pool process was seen held for minutes after its task was done
    #: (RabbitMQ 4.3, tests/test_cluster.py), with the message unacked meanwhile. Three sends, then Celery logs
    #: the error and the task's message is acked: the task ran; only its sender, gone with that node, misses it.
    retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reply_queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._declare_frames: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def declare_frame(self, channel) -> bytes | None:
        """The reply queue's nowait ``queue.declare`` on ``channel`` as a ready-made frame, for a sender
        that writes the task's frames itself (proj/fastpath.py writes both with one system call): what
        kombu's ``Queue.declare(nowait=True)`` sends for this queue, which is one queue.declare on the
        default exchange. None where kombu would send more (an exchange or bindings to declare)."""
        found = self._declare_frames.get(channel)
        if found is None:
            queue = self.binding
            if queue.no_declare or (queue.exchange is not None and queue.exchange.name) or queue.bindings:
                return None
            # kombu's Queue.queue_declare: the arguments as the transport's channel prepares them.
            arguments = channel.prepare_queue_arguments(
                queue.queue_arguments or {},
                expires=queue.expires,
                message_ttl=queue.message_ttl,
                max_length=queue.max_length,
                max_length_bytes=queue.max_length_bytes,
                max_priority=queue.max_priority,
            )
            args = (0, queue.name, False, queue.durable, queue.exclusive, queue.auto_delete, True, arguments)
            found = self._declare_frames[channel] = frames.method_frame(
                channel.channel_id, spec.Queue.Declare, "BsbbbbbF", args
            )
        return found

    def on_task_call(self, producer, task_id):
        will_block = compat.task_join_will_block()
        if will_block is None:  # off (proj.compat): Celery's declaration, waiting for its declare-ok
            return super().on_task_call(producer, task_id)
        # As Celery: a pool process (task_join_will_block) has its reply queue declared already.
        if will_block():
            return
        channel = producer.channel
        try:
            # The bound queue kept per channel: binding a new one per task was a tenth of a .delay()'s own time.
            reply_queue = self._reply_queues.get(channel)
            if reply_queue is None:
                reply_queue = self._reply_queues[channel] = self.binding(channel)
            reply_queue.declare(nowait=True)
        except producer.connection.connection_errors + producer.connection.channel_errors:
            # Celery's own path: waits for the declare-ok and retries with the connection's policy.
            super().on_task_call(producer, task_id)
