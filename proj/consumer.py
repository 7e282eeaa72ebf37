"""The worker's message intake: what happens to a delivery before Celery runs it.

Celery's own consumer deletes what it cannot run (an undecodable body is acked, a ``text/plain``
body too) and redelivers a task that kills its worker forever. This subclass, installed with
``worker_consumer = "proj.consumer:Consumer"``, changes exactly that:

- a plain-text message with no content type, as the tutorial's pika ``new_task.py`` sends it, runs
  as ``proj.tasks.work`` on the same delivery (acked after the work, redelivered if the worker dies);
- anything else a worker cannot run goes to ``task_queue.dead`` with the reason in its headers;
- a message delivered ``PROJ_MAX_DELIVERIES`` times without an ack is dead-lettered too (quorum
  queues count deliveries themselves; for classic queues the count travels in a header);
- replies to remote-control commands (``celery inspect``, Flower) never make the event loop wait on
  the connection it consumes from (:class:`Control`).

Celery's private names these need are in ``proj.compat`` (DELAYED_DELIVERY, CONTROL_REPLIES,
LOOP_THREAD, STUCK_GUARD), checked as the worker starts: a step swapped in only if Celery's step of that
name is among its default steps (a renamed step is reported, not silently left alone), the loop's thread
only if kombu's hub records it. Each one missing is one warning line and Celery's own behaviour.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

from amqp.exceptions import ResourceLocked
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.control import Control as CeleryControl
from celery.worker.consumer.delayed_delivery import DelayedDelivery as CeleryDelayedDelivery
from kombu import Exchange, Producer
from kombu.utils.url import maybe_sanitize_url

from proj import compat, config, deadletter, guard, reader, threads
from proj.messages import TASK_NAME

logger = get_logger(__name__)

#: Seconds a blocking read or write on the event connection may take (a close-ok, a full socket buffer)
#: before the worker gives that connection up: a broker answers in milliseconds unless it is frozen.
EVENTS_SOCKET_TIMEOUT = 5

#: Seconds a task event may wait in the worker's buffer, so that one message carries many (Flower
#: and ``proj lab`` see them this much later, at most).
EVENT_FLUSH_INTERVAL = 0.05

#: Task events one message may carry: Celery's dispatcher publishes its buffer when 24 are in it (every
#: eight no-op tasks, a JSON encoding and a publish each time); within EVENT_FLUSH_INTERVAL a worker's events
#: rarely reach this many, so the timer sends them, in one message (about 300 bytes per event).
EVENT_BUFFER_LIMIT = 500


def tutorial_text(message) -> str | None:
    """The text of a message from a tutorial producer (no Celery headers, no content type), else None."""
    if (message.headers or {}).get("task") or message.content_type:
        return None
    body = message.body
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        return None


def as_celery_message(message, text: str) -> None:
    """Rewrite a tutorial message, in place, as Celery's protocol 2 message for ``work(text)``.

    The delivery (and so its delivery tag, ack and redelivery) stays the same message.
    """
    task_id = (message.properties or {}).get("message_id") or str(uuid.uuid4())
    headers = dict(message.headers or {})
    headers.update(
        {
            "lang": "py",
            "task": TASK_NAME,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": repr((text,)),
            "kwargsrepr": "{}",
            "origin": "tutorial producer (plain text)",
            "ignore_result": True,
        }
    )
    message.headers = headers
    message.body = json.dumps([[text], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message.content_type = "application/json"
    message.content_encoding = "utf-8"


def deliveries(message) -> int:
    """How many times this message has been delivered, this delivery included.

    A quorum queue counts earlier failed deliveries in ``x-delivery-count``: every return on RabbitMQ
    3.10-4.2; on 4.3 a basic.reject (Celery's, when a pool process dies) or a consumer gone with the message
    unacked (a worker killed), not a basic.nack; ``x-acquired-count`` (4.3) counts every handing-out, nacks
    included, and is not used here. On a first delivery (not ``redelivered``) the queue has counted nothing:
    a counter the message carries then is its publisher's (a dead letter put back, measured on 4.3.6: the
    broker hands the published value on), not this queue's.
    """
    headers = message.headers or {}
    redelivered = bool((message.delivery_info or {}).get("redelivered"))
    if "x-delivery-count" in headers:  # quorum queue
        return int(headers["x-delivery-count"]) + 1 if redelivered else 1
    count = int(headers.get(deadletter.DELIVERIES, 1))
    return count + 1 if redelivered else count


class DelayedDelivery(CeleryDelayedDelivery):
    """Celery's native delayed delivery (quorum queues), set up through the node the worker is connected to.

    Celery declares its delayed-delivery exchanges and queues through every URL of a failover list at
    each (re)connection, and retries a dead node for about 15 s before the worker consumes again. In a
    cluster they are cluster-wide: the node the worker has just connected to is enough, and it is up.
    """

    def start(self, c):
        a = compat.attrs(compat.DELAYED_DELIVERY)
        getattr(self, a["DelayedDelivery._validate_configuration"])(c.app)
        url = c.connection.as_uri(include_password=True)
        try:
            getattr(self, a["DelayedDelivery._setup_delayed_delivery"])(c, url)
        except Exception as exc:
            logger.warning("Native delayed delivery not set up through %s: %s", maybe_sanitize_url(url), exc)


class Control(CeleryControl):
    """Celery's remote control (``celery inspect``/``control``, Flower), its replies sent like events.

    Celery replies on the channel the commands arrive on, in the event loop, with a publisher confirm
    (proj's ``confirm_publish``) and, the first time, a ``reply.celery.pidbox`` exchange.declare: two
    blocking waits on the consumer's own connection. A command that arrives during the wait is run, and
    replied to, inside it; with a burst of commands (Flower's refresh sends eight at once) on a loaded
    machine the worker was seen blocked in two nested declares for over 16 s: no heartbeat, so RabbitMQ
    closed the connection ("missed heartbeats from client") and redelivered the task it held, and Flower
    showed the worker offline (tests/test_flower.py failed in CI; py-spy showed the nesting). Replies
    go out on the event connection instead, which nothing consumes from: unconfirmed (a reply is a
    status report: one lost is a command that times out, as with any node that does not answer), the
    exchange declared once per connection, so the loop never waits on its own connection for them.
    """

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        # Celery's step starts its box with ``self.start`` (an attribute it sets to ``box.start``).
        self.start_box, self.start = self.start, self.start_waiting_for_lock
        if not compat.usable(compat.CONTROL_REPLIES, lambda: compat.control_problem(self), stage="box"):
            return  # Celery's replies, on the consumer's connection
        a = compat.attrs(compat.CONTROL_REPLIES)
        node = getattr(self, a["Control.box"]).node
        celery_reply = getattr(node, a["Node.reply"])
        setattr(
            node, a["Node.reply"], lambda *args, **kw: reply_on_event_connection(c, node, celery_reply, *args, **kw)
        )

    def start_waiting_for_lock(self, c):
        """Celery's start, waiting out a control queue still held by the connection this worker just lost.

        The worker's control queue (``NAME.celery.pidbox``) is exclusive to its connection. When the node
        that held the connection dies, the cluster frees the queue once it has seen that connection go; a
        worker that fails over within milliseconds asks for it first and gets RESOURCE_LOCKED (405, a
        channel error), which Celery's consumer treats as unrecoverable: the worker exits. On RabbitMQ 4.3
        clusters the queue stays locked until the killed node is back (seen: minutes). The declare is
        tried again for :data:`CONTROL_QUEUE_LOCKED_WAIT` seconds; past that the worker goes on without
        remote control (one warning: ``celery inspect`` and Flower's worker list do not reach it, its task
        events still flow), and takes it up again at its next connection.
        """
        # A worker that left a node cut off from the majority (proj/majority.py) knows the queue stays locked
        # for as long as the partition lasts: it does not wait for it.
        wait = 0.0 if getattr(c, "proj_left_cut_off_node", False) else CONTROL_QUEUE_LOCKED_WAIT
        c.proj_left_cut_off_node = False
        deadline = time.monotonic() + wait
        pause = 0.1
        while True:
            try:
                return self.start_box(c)
            except ResourceLocked as exc:
                if time.monotonic() + pause > deadline:
                    logger.warning(
                        "remote control is off until the next connection: the control queue is still locked "
                        "by the connection this worker lost (%s); tasks are consumed as usual",
                        exc,
                    )
                    return None
                logger.info("control queue locked by a lost connection, trying again in %.1f s: %s", pause, exc)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)


#: Seconds a worker waits for its exclusive control queue to be freed by the cluster before reconnecting:
#: well under two heartbeats (PROJ_BROKER_HEARTBEAT, 8 s), during which the broker does not hear from it.
CONTROL_QUEUE_LOCKED_WAIT = 6.0


def reply_on_event_connection(c, node, celery_reply, data, exchange, routing_key, ticket, **kwargs) -> None:
    """Publish a remote-control reply on the worker's event connection (Celery's way if it has none).

    The message is kombu's ``Mailbox._publish_reply``'s (same exchange, headers, serializer); that method
    is not called because it publishes with ``retry=True``, which reconnects, inside the event loop, for
    as long as the broker is away.
    """
    dispatcher = getattr(c, "event_dispatcher", None)
    connection = getattr(dispatcher, "connection", None)
    if connection is None:
        return celery_reply(data, exchange, routing_key, ticket, **kwargs)
    mailbox = node.mailbox
    try:
        if not connection.connected:  # never reconnect from here: the consumer's restart makes a new one
            raise ConnectionError("the event connection is down")
        reply_exchange = Exchange(exchange, "direct", durable=False, delivery_mode="transient")
        Producer(connection.default_channel, auto_declare=False).publish(
            data,
            exchange=reply_exchange,
            routing_key=routing_key,
            declare=[reply_exchange],
            headers={"ticket": ticket, "clock": mailbox.clock.forward()},
            serializer=mailbox.serializer,
        )
    except Exception as exc:  # the caller sees this node not answer, as when its connection is down
        logger.warning("remote control reply %s not sent: %r", ticket, exc)
    return None


#: Celery's consumer steps proj replaces: Internal -> proj's step.
REPLACED_STEPS = (("DELAYED_DELIVERY", "proj.consumer:DelayedDelivery"), ("CONTROL_REPLIES", "proj.consumer:Control"))


def proj_steps(celery_steps: list[str]) -> list[str]:
    """Celery's default consumer steps with proj's in place of those it replaces (each usable one)."""
    steps = list(celery_steps)
    for name, replacement in REPLACED_STEPS:
        internal = getattr(compat, name)
        if compat.usable(internal, lambda i=internal: compat.step_problem(i, celery_steps, CeleryDelayedDelivery)):
            steps[steps.index(internal.names[0])] = replacement
    return steps


class Consumer(CeleryConsumer):
    """Celery's consumer with an intake that runs tutorial text and never deletes a message."""

    class Blueprint(CeleryConsumer.Blueprint):
        def __init__(self, *args, **kwargs):
            # Worker start: each of Celery's steps proj replaces must be there by the name checked.
            self.default_steps = proj_steps(CeleryConsumer.Blueprint.default_steps)
            super().__init__(*args, **kwargs)

    def connect(self):
        """Celery's connection for consuming, read on the event loop by proj's reader (proj/reader.py)."""
        conn = self.connection_for_read(heartbeat=self.amqheartbeat)
        if self.hub:
            reader.register(conn, self.hub)
        return conn

    def register_with_event_loop(self, hub):
        """Celery's registration, then the stuck-message fix and guard (proj/guard.py)."""
        super().register_with_event_loop(hub)
        if self.event_dispatcher is not None:
            self.event_dispatcher.buffer_limit = EVENT_BUFFER_LIMIT
        self._loop_thread_known = compat.usable(compat.LOOP_THREAD, lambda: compat.loop_thread_problem(hub))
        guard.arm_start_deadlines(self.controller.pool, hub, self)
        guard.guard_of(self).register_with_event_loop(hub)

    def create_task_handler(self, *args, **kwargs):
        on_celery_message = super().create_task_handler(*args, **kwargs)
        quorum = config.QUEUE_TYPE == "quorum"

        def on_task_received(message):
            text = tutorial_text(message)
            if text is not None:
                as_celery_message(message, text)
            n = deliveries(message)
            if n > config.MAX_DELIVERIES:
                return self.dead_letter(
                    message,
                    f"delivered {n - 1} times without being acknowledged (its worker died each time): "
                    f"a poison task, stopped at PROJ_MAX_DELIVERIES={config.MAX_DELIVERIES}",
                )
            if not quorum and (message.delivery_info or {}).get("redelivered"):
                # A classic queue keeps no count: put a copy back carrying it, ack this one.
                headers = dict(message.headers or {}, **{deadletter.DELIVERIES: n})
                deadletter.republish(self.app, message, headers)
                return None
            return on_celery_message(message)

        return on_task_received

    _loop_thread_known = False

    def _on_loop_thread(self) -> bool:
        """True when called by the event loop's own thread (kombu 5.7's Hub records it as it starts)."""
        ident = self._loop_ident
        if ident is None:
            if not (self._loop_thread_known and self.hub is not None):
                return False
            ident = self._loop_ident = compat.loop_thread(self.hub)
        return ident == threading.get_ident()

    #: The event loop's thread, once it runs (the worker's main thread: it stays the same for the worker's life).
    _loop_ident: int | None = None

    def call_soon_ack(self, p, *args, **kwargs):
        """Send an ack (or reject) at once when the event loop's own thread asks for it.

        Celery hands it to ``hub.call_soon``. With ``-P solo`` the task runs, and its ack is queued, inside
        the loop's read callback, itself often a ready callback (kombu re-queues the reader after every
        read); kombu's loop then polls up to the next timer (1-2 s) before it looks at its ready list
        again, and with prefetch 1 the broker sends nothing until that ack arrives: 1-2 tasks/s. Celery
        already sends it at once when there is no hub; on the loop's thread that is as safe. Another
        thread (Celery's ``-P threads``) still goes through ``call_soon``, which wakes the loop; a task thread of
        proj's threads pool (proj/threads.py) sends it itself (py-amqp writes each frame under a lock).
        """
        if not self._on_loop_thread() and not threads.on_task_thread():
            return super().call_soon_ack(p, *args, **kwargs)
        try:
            p(*args, **kwargs)
        except Exception as exc:  # as Celery's own immediate path: logged, the loop goes on
            logger.exception("ack failed: %r", exc)
        return p

    def on_send_event_buffered(self):
        """Flush buffered task events within EVENT_FLUSH_INTERVAL, in one message, not one per event.

        Celery flushes on the loop's next turn: with one task at a time that is a publish (a message, a
        system call) per event, three per task, and the worker's main process spent most of its time
        there (proj bench --profile: 29% of its samples in the flush). A timer on the loop's own thread
        batches every event of the interval into one message (Celery's dispatcher also flushes at once
        when 24 are buffered), and the loop's poll wakes up for that timer: a solo worker's events are
        not left waiting for the next heartbeat. A task thread of proj's threads pool asks the loop for that timer
        (one wake-up per interval, not per event); another thread (Celery's ``-P threads``) keeps Celery's path.
        """
        if self.hub is None:
            return super().on_send_event_buffered()
        on_loop = self._on_loop_thread()
        if not on_loop and not threads.on_task_thread():
            return super().on_send_event_buffered()
        now = time.monotonic()
        # A timer dropped with a broken connection's loop must not hold the events for good: schedule
        # again when the last one is overdue.
        if self._events_flush_due is None or now > self._events_flush_due + EVENT_FLUSH_INTERVAL * 10:
            self._events_flush_due = now + EVENT_FLUSH_INTERVAL
            if on_loop:
                self.hub.call_later(EVENT_FLUSH_INTERVAL, self._flush_events_timed)
            else:
                self.hub.call_soon(self.hub.call_later, EVENT_FLUSH_INTERVAL, self._flush_events_timed)
        return None

    _events_flush_due: float | None = None

    def _flush_events_timed(self):
        self._events_flush_due = None
        self.flush_events()

    def flush_events(self):
        """Send the buffered task events now (what Celery's private ``_flush_events`` does)."""
        if self.event_dispatcher:
            self.event_dispatcher.flush()

    def shutdown(self):
        """Send the events still buffered (the last tasks' succeeded) before Celery closes the dispatcher."""
        try:
            self.flush_events()
        except Exception as exc:  # the connection may be gone: Celery's own close ignores that too
            logger.warning("task events not flushed at shutdown: %r", exc)
        return super().shutdown()

    def connection_for_write(self, url=None, heartbeat=None):
        """The event dispatcher's connection (this method's only caller in Celery 5.7), without confirms.

        Task events are status reports for Flower and the event stream, not work: waiting for the broker
        to confirm each of them (three per task) cost the worker's main process a round trip apiece.
        Task messages, results, dead letters and every producer keep their confirms.
        proj bench --variants, W = 2: no-op tasks drained 1.43x faster (583 -> 835/s), 10 ms tasks 1.04x.

        Its socket reads and writes time out (EVENTS_SOCKET_TIMEOUT): when the worker's node freezes,
        Celery's consumer restart first closes the old event connection and waits for the frozen
        node's close-ok, with no timeout of its own: the worker failed over, then sat there for good.
        """
        timeout = EVENTS_SOCKET_TIMEOUT
        options = {"confirm_publish": False, "read_timeout": timeout, "write_timeout": timeout}
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options=options)
        )

    def dead_letter(self, message, reason: str) -> None:
        logger.error("Moved a message to %s: %s", config.DEAD_QUEUE_NAME, reason)
        deadletter.dead_letter(self.app, message, reason)

    # Celery's handlers for what it cannot run, each of which would ack (delete) or reject.

    def on_decode_error(self, message, exc):
        kind = message.content_type or "no content type"
        self.dead_letter(
            message,
            f"cannot decode the body ({kind}): {exc}; only JSON task messages and "
            "plain text without a content type are run",
        )

    def on_unknown_message(self, body, message):
        self.dead_letter(message, "not a task message: no task name in its headers or body")

    def on_unknown_task(self, body, message, exc):
        name = (message.headers or {}).get("task") or "?"
        self.dead_letter(message, f"unregistered task {name!r}: no worker here runs it")

    def on_invalid_task(self, body, message, exc):
        self.dead_letter(message, f"invalid task message: {exc}")
