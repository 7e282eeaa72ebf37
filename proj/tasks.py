"""The tutorial's task: a string whose every '.' is one unit of work."""

from __future__ import annotations

import time

from celery import Task, shared_task

from proj import config, confirms, deadletter, fastpath, queues, sentevents
from proj.console import say

#: The task's name in every message: what producers put in the ``task`` header and workers look up.
TASK_NAME = "proj.tasks.work"


class PublishError(RuntimeError):
    """The broker did not take a message: nothing was queued, and the caller must know."""


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
            from kombu.utils.uuid import uuid

            options["task_id"] = uuid()
        started = time.monotonic()
        # retry=False: the first nack is the caller's (it re-sends by itself, and counts it).
        deadline = started + (0.0 if options.get("retry") is False else config.PUBLISH_TIMEOUT)
        pause, sends = NACK_RETRY_FIRST_PAUSE, 0
        while True:
            try:
                # Every confirm of this call, Celery's re-sends included, within PROJ_PUBLISH_TIMEOUT.
                with confirms.deadline(started + config.PUBLISH_TIMEOUT):
                    return self._publish_once(args, kwargs, rest, options)
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

    def _publish_once(self, args, kwargs, rest, options):
        queue = options.get("queue") or config.QUEUE_NAME
        queue = getattr(queue, "name", queue)
        from amqp.exceptions import MessageNacked, PreconditionFailed
        from kombu.exceptions import OperationalError

        try:
            if fastpath.eligible(self, args, kwargs, rest, options):
                try:
                    return fastpath.send(self, args[0], options)
                except (MessageNacked, confirms.ConfirmTimeout):
                    raise
                except Exception:  # noqa: BLE001 - fastpath.Unavailable, or anything it did not foresee
                    pass  # Celery's path, same id: it connects, declares task_queue, selects confirms or reconnects
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
            from proj.management import hide_password

            conn = options.get("connection")
            url = conn.as_uri() if conn is not None else self.app.conf.broker_url
            raise PublishError(f"could not publish to {hide_password(url)}: {exc}") from exc
        except PreconditionFailed as exc:
            raise PublishError(queues.explain_mismatch(exc.reply_text) or exc.reply_text) from None


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


def check_message(message: object) -> str:
    if not isinstance(message, str):
        raise TypeError(
            f"{TASK_NAME} takes the message as a str, got {type(message).__name__} {message!r}: "
            "pass text such as 'Hello...'"
        )
    size = len(message.encode("utf-8", "surrogatepass"))
    if size > config.MAX_MESSAGE_BYTES:
        raise ValueError(
            f"message is {size} bytes, over PROJ_MAX_MESSAGE_BYTES={config.MAX_MESSAGE_BYTES}: store large "
            "data elsewhere and send a reference"
        )
    return message


def was_redelivered(request) -> bool:
    """True if the broker delivered this message before (RabbitMQ's flag, or the delivery count
    that proj.consumer carries on the copies it republishes from a classic queue)."""
    if (request.delivery_info or {}).get("redelivered"):
        return True
    return int(request.get(deadletter.DELIVERIES) or 1) > 1


# shared_task: registered on every app, proj's and the in-process test apps alike.
@shared_task(base=MessageTask, bind=True, name=TASK_NAME)
def work(self, message: str) -> int:
    """Sleep one unit per '.' in ``message`` and return the number of dots."""
    # A bad message that reached us anyway (another producer) fails once and is acked: a
    # TypeError raised here is a task failure, never a redelivery loop.
    check_message(message)
    redelivered = was_redelivered(self.request)
    if redelivered:
        say(f" [x] Received {message!r} (redelivered)")
        # Flower and `proj lab` see redeliveries on the event stream, next to task-started.
        self.send_event("task-redelivered", redelivered=True)
    else:
        say(f" [x] Received {message!r}")
    dots = message.count(".")
    time.sleep(dots * config.SECONDS_PER_DOT)
    say(" [x] Done")
    return dots


def send_many(messages, broker_url: str | None = None) -> list[str]:
    """Many tasks at once, confirmed as a batch: see proj/bulk.py."""
    from proj.bulk import send_many

    return send_many(messages, broker_url)
