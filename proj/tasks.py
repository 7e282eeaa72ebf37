"""The tutorial's task: a string whose every '.' is one unit of work."""

from __future__ import annotations

import time

from celery import Task, shared_task

from . import config
from .console import say


class MessageTask(Task):
    """Refuses a non-string message at the producer, before anything is published."""

    def apply_async(self, args=None, kwargs=None, *rest, **options):
        message = (args or ())[0] if args else (kwargs or {}).get("message")
        check_message(message)
        return super().apply_async(args, kwargs, *rest, **options)


def check_message(message: object) -> str:
    if not isinstance(message, str):
        raise TypeError(
            f"proj.tasks.work takes the message as a str, got {type(message).__name__} {message!r}: "
            "pass text such as 'Hello...'"
        )
    return message


# shared_task: registered on every app, proj's and the in-process test apps alike.
@shared_task(base=MessageTask, bind=True, name="proj.tasks.work")
def work(self, message: str) -> int:
    """Sleep one unit per '.' in ``message`` and return the number of dots."""
    # A bad message that reached us anyway (another producer) fails once and is acked: a
    # TypeError raised here is a task failure, never a redelivery loop.
    check_message(message)
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
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
