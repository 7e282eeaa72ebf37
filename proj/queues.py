"""Where messages live: ``task_queue`` and its dead-letter queue ``task_queue.dead``.

``task_queue`` is declared exactly as the tutorials declare it, so their unchanged programs and
ours agree on it: durable (``PROJ_QUEUE_TYPE=classic``, the default, as in the seed tutorial) or
a quorum queue (``PROJ_QUEUE_TYPE=quorum``, as the current upstream tutorial declares it). Its
dead-lettering into ``task_queue.dead`` comes from a RabbitMQ *policy*, not from queue arguments:
an argument the tutorial's ``queue_declare`` does not pass would make RabbitMQ refuse that
declaration (PRECONDITION_FAILED). Whoever declares ``task_queue`` (a producer or a worker)
declares ``task_queue.dead`` first, and workers set the policy at start.
"""

from __future__ import annotations

import re

from kombu import Exchange, Queue

QUEUE_NAME = "task_queue"
DEAD_QUEUE_NAME = f"{QUEUE_NAME}.dead"
QUEUE_TYPES = ("classic", "quorum")

#: What to change when RabbitMQ refuses a declaration because one argument differs.
SETTING_FOR_ARGUMENT = {
    "x-queue-type": "PROJ_QUEUE_TYPE",
    "durable": "the other program (task_queue is always durable in proj)",
}
#: The policy that gives task_queue its dead-letter exchange (and, for quorum queues, a backstop
#: delivery limit one above the one proj's workers enforce with a reason).
POLICY_NAME = "proj-task-queue"


class WorkQueue(Queue):
    """``task_queue``: declaring it declares its dead-letter queue first."""

    # kombu copies a queue (to bind it to a channel) through its attrs: keep ours among them.
    attrs = Queue.attrs + (("dead_letter_queue", None),)
    dead_letter_queue: Queue | None = None

    def declare(self, nowait=False, channel=None):
        if self.dead_letter_queue is not None:
            self.dead_letter_queue.bind(channel or self.channel).declare(nowait=nowait)
        return super().declare(nowait=nowait, channel=channel)


def queue_arguments(queue_type: str) -> dict:
    """The arguments the tutorials pass: none for the classic queue, the type for a quorum queue."""
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"PROJ_QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def policy(max_deliveries: int) -> dict:
    """The body of PUT /api/policies/{vhost}/proj-task-queue."""
    return {
        "pattern": f"^{re.escape(QUEUE_NAME)}$",
        "apply-to": "queues",
        "priority": 1,
        "definition": {
            "dead-letter-exchange": "",
            "dead-letter-routing-key": DEAD_QUEUE_NAME,
            # Quorum queues count deliveries themselves; classic queues ignore this key.
            "delivery-limit": max_deliveries,
        },
    }


def ensure_policy(management, max_deliveries: int) -> None:
    """Set task_queue's dead-letter policy through the management API (raises ManagementError)."""
    import urllib.parse

    vhost = urllib.parse.quote(management.vhost, safe="")
    management.request("PUT", f"policies/{vhost}/{POLICY_NAME}", policy(max_deliveries))


def dead_letter_queue(queue_type: str) -> Queue:
    args = {"x-queue-type": "quorum"} if queue_type == "quorum" else {}
    return Queue(DEAD_QUEUE_NAME, Exchange(""), routing_key=DEAD_QUEUE_NAME, durable=True, queue_arguments=args)


def work_queue(queue_type: str) -> WorkQueue:
    return WorkQueue(
        QUEUE_NAME,
        Exchange("", type="direct"),
        routing_key=QUEUE_NAME,
        durable=True,
        queue_arguments=queue_arguments(queue_type),
        dead_letter_queue=dead_letter_queue(queue_type),
    )


_INEQUIVALENT = re.compile(r"inequivalent arg '(?P<arg>[^']+)' for queue '(?P<queue>[^']+)'.*?received (?P<got>.+)$")


def explain_mismatch(reply_text: str) -> str | None:
    """One line for RabbitMQ's PRECONDITION_FAILED on a queue declaration, or None if it is not one."""
    m = _INEQUIVALENT.search(reply_text or "")
    if not m:
        return None
    arg, queue = m["arg"], m["queue"]
    setting = SETTING_FOR_ARGUMENT.get(arg, "the queue's declaration")
    return (
        f"queue '{queue}' already exists with a different '{arg}' ({m['got']}): change {setting} to match it, "
        f"or move its messages and delete the queue (rabbitmqctl delete_queue {queue})"
    )
