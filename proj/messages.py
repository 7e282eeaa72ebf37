"""A task message as every producer and the worker agree on it: the task's name, the check of its body,
and the error a caller gets when the broker does not take it.

Imported by the publish API (proj/producer.py), its fast paths (proj/fastpath.py, proj/bulk.py), the task
(proj/tasks.py) and the worker's consumer, none of which it imports: the bottom of the producer's layers.
"""

from __future__ import annotations

from proj import config

#: The task's name in every message: what producers put in the ``task`` header and workers look up.
TASK_NAME = "proj.tasks.work"


class PublishError(RuntimeError):
    """The broker did not take a message: nothing was queued, and the caller must know."""


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
