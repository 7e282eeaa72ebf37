"""``.delay()``'s fast path: the task message written as ready-made frames, then its confirm awaited.

Celery's ``send_task`` rebuilds the task's twenty headers, routes it, serializes it and hands it through
kombu's producer to amqp's frame writer on every call: about 1.3 ms of Python per ``.delay()``, where
the broker's whole confirmed round trip takes 0.5 ms (``proj bench``, README "Performance"). For the
plain call, ``work.delay(message)`` or ``work.apply_async([message])`` with no option but
``task_id``, ``ignore_result``, ``producer`` or ``connection``, proj writes the very frames Celery's path
would write (proj/frames.py, whose encoding is checked against amqp's), on the same channel of the same
producer, waits for the broker's confirm with amqp's own wait, and then does what Celery does after a
publish: the rpc reply queue (declared before the task), the task-sent event for Flower, the
``AsyncResult``. ``tests/test_fastpath.py`` checks the broker holds the same message either way.

Celery's path is taken for anything else: any other option (``countdown``, ``queue``, ``link``,
``headers``, ...), a call made inside a task (its parent and root ids), task routes, publish signal
receivers, eager mode, a channel whose connection has not yet declared ``task_queue`` or selected
confirms (the first message on every connection goes Celery's way, which does both), and a
connection that failed: it is closed, never reused with a confirm in flight, and the message goes
through Celery's path under the same id, which reconnects and sends it again, as Celery's own retry
does after a connection error (one task that may run twice, which acks late already allows).

The private names it reads are ``proj.compat.FAST_PATH`` (and RAW_FRAMES, CONFIRMS), checked at the
process's first ``.delay()`` (its app) and first connection; when one is missing or changed, one warning
says so and every call takes Celery's path. So does any failure the fast path did not foresee, from
building or checking the message template to writing it: the message goes Celery's way under the same
id (after frames were written the connection is closed first, as for a connection error: at most the
same task delivered twice, never a second task). Only a nack (sent again by proj.tasks) and a confirm
timeout (the call's PROJ_PUBLISH_TIMEOUT is over) are raised as they are, and nothing is sent again once
the broker has confirmed the message.
"""

from __future__ import annotations

import os
import weakref
from contextlib import nullcontext

from amqp.exceptions import MessageNacked
from celery import signals
from celery.utils.log import get_logger

from proj import compat, config, confirms, frames, sentevents
from proj.messages import TASK_NAME

logger = get_logger(__name__)

#: The apply_async options the fast path knows (proj's MessageTask sets the first four itself).
PLAIN_OPTIONS = frozenset(
    {
        "confirm_timeout",
        "time_limit",
        "soft_time_limit",
        "event_dispatcher",
        "task_id",
        "ignore_result",
        "producer",
        "connection",
    }
)

#: Templates per amqp channel: {(pid, reply_to, ignore_result): frames.Template}.
_templates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: The Celery settings the fast path reads on every call.
SETTINGS = (
    "task_always_eager",
    "task_routes",
    "task_protocol",
    "task_compression",
    "task_serializer",
    "task_send_sent_event",
)


def settings(app) -> dict:
    """SETTINGS as ``app.conf`` has them now, read in a microsecond instead of 18 each.

    ``app.conf`` looks every key up under its old and new names in three maps; the values below the
    changes (proj.config, Celery's defaults) do not change once the app is configured, so they are read
    once, and only ``app.conf.changes`` (``app.conf.x = y`` at run time, as tests and ``proj bench`` do)
    is looked at per call.
    """
    a = compat.attrs(compat.FAST_PATH)
    conf = app.conf
    maps = getattr(conf, a["Settings.maps"])
    if len(maps) < 2:  # still pending: reading one setting configures the app
        conf.task_protocol
        conf = app.conf
        maps = getattr(conf, a["Settings.maps"])
    source, below = app.__dict__.get("_proj_fast_settings") or (None, None)
    if source is not maps[1]:  # first call, or a new configuration (app.config_from_object)
        source = maps[1]
        below = {key: next((m[key] for m in maps[1:] if key in m), None) for key in SETTINGS}
        app._proj_fast_settings = source, below
    changes = getattr(conf, a["Settings.changes"])
    return {key: changes.get(key, value) for key, value in below.items()}


class Unavailable(Exception):
    """Not for the fast path this time: send the message through Celery's own path."""


def usable(app) -> bool:
    """Whether the fast path is on in this process (its private names checked once, proj.compat)."""
    return (
        compat.usable(compat.FAST_PATH, lambda: compat.fast_path_problem(app))
        and confirms.usable()
        and not compat.is_off(compat.RAW_FRAMES)
    )


def eligible(task, args, kwargs, rest, options) -> bool:
    """True for a plain one-message call that Celery's path would send to task_queue unchanged."""
    if rest or kwargs or not isinstance(args, (list, tuple)) or len(args) != 1:
        return False
    if not PLAIN_OPTIONS.issuperset(options):
        return False
    if options.get("time_limit") is not None or options.get("soft_time_limit") is not None:
        return False
    try:
        return _eligible(task, options)
    except Exception as exc:  # noqa: BLE001 - a library that changed: Celery's path, from now on
        compat.turned_off(compat.FAST_PATH, f"checking a call failed: {exc!r}")
        return False


def _eligible(task, options) -> bool:
    app = task.app
    if not usable(app):
        return False
    if options.get("event_dispatcher") is not sentevents.dispatcher(app):
        return False
    conf = settings(app)
    if conf["task_always_eager"] or conf["task_routes"] or conf["task_protocol"] != 2 or conf["task_compression"]:
        return False
    exec_options = {k: v for k, v in compat.exec_options(task).items() if v is not None and k not in options}
    if exec_options not in ({}, {"serializer": "json"}) or conf["task_serializer"] != "json":
        return False
    if signals.before_task_publish.receivers or signals.after_task_publish.receivers or signals.task_sent.receivers:
        return False
    return app.current_worker_task is None


def send(task, message: str, options):
    """Publish one task message and wait for its confirm; the AsyncResult, as Celery's ``send_task``.

    Raises MessageNacked on a basic.nack (proj.tasks sends it again), Unavailable when Celery's path
    must send it (nothing was written, or the connection failed and was closed).
    """
    app = task.app
    task_id = options["task_id"]
    ignore_result = options.get("ignore_result")
    if ignore_result is None:
        ignore_result = task.ignore_result
    producer, connection = options.get("producer"), options.get("connection")
    if producer is not None:
        acquired = nullcontext(producer)
    elif connection is not None:
        acquired = nullcontext(app.amqp.Producer(connection, auto_declare=False))
    else:
        acquired = app.producer_pool.acquire(block=True)
    with acquired as P:
        conn = P.connection
        if conn is None or not conn.connected:
            raise Unavailable("not connected yet")
        channel = P.channel
        amqp_conn = conn.connection
        written = False
        try:
            if not (
                frames.usable(amqp_conn)
                and confirms.usable(channel)
                and compat.usable(
                    compat.FAST_PATH, lambda: compat.fast_path_problem(connection=conn), stage="connection"
                )
            ):
                raise Unavailable("off (proj.compat)")
            _ready(conn, channel, app.amqp.queues[config.QUEUE_NAME], pooled=producer is None and connection is None)
            template = _template(app, channel, amqp_conn.frame_max, app.thread_oid, ignore_result)
            argsrepr = template.argsrepr(message)
            data = template.frames(task_id, message, argsrepr)
            if not ignore_result:
                # Celery declares the sender's reply queue before every task with a result (auto-delete:
                # it may be gone): proj's rpc backend has the declaration as a frame, written with the task's.
                declare = getattr(app.backend, "declare_frame", None)
                will_block = compat.task_join_will_block()
                declare = declare(channel) if declare is not None and will_block and not will_block() else None
                if declare is None:
                    app.backend.on_task_call(P, task_id)
                else:
                    data = declare + data
            written = True  # from here on, some frames may have reached the broker
            frames.write(amqp_conn, data)
            confirms.wait_for_confirm(channel, options.get("confirm_timeout"))
        except (MessageNacked, Unavailable):
            raise
        except confirms.ConfirmTimeout:
            _close(conn)  # a late confirm must not be taken for another message's
            # A failover list: the next connection goes to the next node (one that does not confirm may be cut
            # off from its cluster's majority); proj.producer sends again there while the call's bound lasts.
            conn.maybe_switch_next()
            raise
        except Exception as exc:
            broken = isinstance(exc, conn.connection_errors + conn.channel_errors + (OSError,))
            if not broken:
                # Not a broker's failure: the fast path itself (a library that changed). Off from now on.
                compat.turned_off(compat.FAST_PATH, f"a publish failed: {exc!r}")
            if written or broken:
                # A confirm may still be in flight: this connection must not wait for another message's.
                _close(conn)
            raise Unavailable(f"fast path failed: {exc!r}") from exc
        # Confirmed: the message is queued, and nothing below may send it again.
        if settings(app)["task_send_sent_event"]:
            try:
                options["event_dispatcher"].publish_batched("task-sent", template.sent_event(task_id, argsrepr), P)
            except Exception as exc:  # noqa: BLE001 - the task is queued: its status report must not fail the call
                logger.warning("task-sent event of %s not published (the task itself is queued): %r", task_id, exc)
    result = task.AsyncResult(task_id)
    result.ignored = ignore_result
    return result


#: Consecutive calls that found a connection not ready (Celery's path ran in between, which declares
#: task_queue and selects confirms): past UNREADY_LIMIT, kombu or amqp no longer record it as proj reads it.
_unready: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
UNREADY_LIMIT = 3


def _ready(conn, channel, queue, pooled: bool = True) -> None:
    """Raise Unavailable unless ``conn`` has declared task_queue and ``channel`` selected confirms.

    Only the app's own pooled producers count towards turning the fast path off: a caller's producer
    or connection (its own channel, perhaps without confirms or declarations) may never be ready, and
    says nothing about the libraries.
    """
    selected = getattr(channel, compat.attrs(compat.CONFIRMS)["Channel._confirm_selected"], False)
    if selected and hash(queue) in compat.declared(conn):
        _unready.pop(conn, None)
        return
    if not pooled:
        raise Unavailable("the caller's producer: task_queue not declared on it, or confirms not selected")
    seen = _unready[conn] = _unready.get(conn, 0) + 1
    if seen > UNREADY_LIMIT:
        compat.turned_off(
            compat.FAST_PATH,
            f"after {UNREADY_LIMIT} sends through Celery's path the connection still shows task_queue undeclared "
            "(kombu's declared_entities keyed otherwise?) or confirms unselected",
        )
    raise Unavailable("task_queue not declared on this connection, or confirms not selected")


def _template(app, channel, frame_max: int, reply_to: str, ignore_result: bool) -> frames.Template:
    per_channel = _templates.setdefault(channel, {})
    key = (os.getpid(), reply_to, bool(ignore_result))
    template = per_channel.get(key)
    if template is None:
        template = per_channel[key] = frames.Template(
            app, TASK_NAME, channel.channel_id, frame_max, reply_to=reply_to, ignore_result=bool(ignore_result)
        )
    return template


def _close(conn) -> None:
    """Drop the connection's socket and state; kombu reconnects it on its next use (Celery's path)."""
    try:
        conn.collect()
    except Exception:  # noqa: BLE001 - it is being dropped either way
        pass
