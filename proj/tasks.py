"""The tutorial's task: a string whose every '.' is one unit of work.

The task only: how its messages are checked and published (``.delay()``, :func:`send_many`) is proj/producer.py,
its base class. The publish API's names are importable from here too, as they always were.
"""

from __future__ import annotations

import time

from celery import shared_task

from proj import config, deadletter
from proj.console import say
from proj.producer import (  # noqa: F401 - the publish API, importable from proj.tasks as it always was
    TASK_NAME,
    BulkPublishError,
    MessageTask,
    PublishError,
    check_message,
    send_many,
)


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
    if dots:  # time.sleep(0) would still hand the interpreter to the worker's other threads, for nothing
        time.sleep(dots * config.SECONDS_PER_DOT)
    say(" [x] Done")
    return dots
