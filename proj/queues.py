"""Where messages live: ``task_queue`` and its dead-letter queue ``task_queue.dead``.

``task_queue`` is declared exactly as the tutorials declare it, so their unchanged programs and
ours agree on it: durable (``PROJ_QUEUE_TYPE=classic``, the default, as in the seed tutorial) or
a quorum queue (``PROJ_QUEUE_TYPE=quorum``, as the current upstream tutorial declares it). Its
dead-lettering into ``task_queue.dead`` comes from RabbitMQ *policies* (one per queue type, each
with only the keys that type accepts), not from queue arguments:
an argument the tutorial's ``queue_declare`` does not pass would make RabbitMQ refuse that
declaration (PRECONDITION_FAILED). Whoever declares ``task_queue`` (a producer or a worker)
declares ``task_queue.dead`` first, and workers set the policies at start and check that one is in effect.
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

#: The policies that give task_queue its dead-letter exchange, one per queue type, each with only the
#: keys that type accepts. RabbitMQ applies the highest-priority policy *applicable* to a queue, and
#: 3.10 finds a policy holding a key a classic queue does not know (``delivery-limit``) inapplicable
#: as a whole: a classic task_queue gets the classic policy, a quorum one the quorum policy (whose
#: delivery limit is the broker's own backstop to the one proj's workers enforce with a reason).
CLASSIC_POLICY_NAME = "proj-task-queue-classic"
QUORUM_POLICY_NAME = "proj-task-queue-quorum"
POLICY_NAMES = (CLASSIC_POLICY_NAME, QUORUM_POLICY_NAME)
#: The single policy of earlier versions, inapplicable to a classic queue on RabbitMQ 3.10: removed.
LEGACY_POLICY_NAME = "proj-task-queue"

#: What every one of our policies gives task_queue: the broker dead-letters into task_queue.dead.
DEAD_LETTERING = {"dead-letter-exchange": "", "dead-letter-routing-key": DEAD_QUEUE_NAME}


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


def policies(max_deliveries: int) -> dict[str, dict]:
    """The bodies of PUT /api/policies/{vhost}/{name}, by name."""

    def body(priority: int, definition: dict) -> dict:
        return {
            "pattern": f"^{re.escape(QUEUE_NAME)}$",
            "apply-to": "queues",
            "priority": priority,
            "definition": definition,
        }

    return {
        CLASSIC_POLICY_NAME: body(1, dict(DEAD_LETTERING)),
        # Higher priority: where it applies (a quorum queue) it wins; where it does not, the classic one does.
        QUORUM_POLICY_NAME: body(2, {**DEAD_LETTERING, "delivery-limit": max_deliveries}),
    }


def ensure_policy(management, max_deliveries: int) -> None:
    """Set task_queue's dead-letter policies through the management API (raises ManagementError)."""
    for name, body in policies(max_deliveries).items():
        management.put_policy(name, body)
    management.delete_policy(LEGACY_POLICY_NAME)


def policy_problem(queue: dict | None) -> str | None:
    """Why task_queue, as the management API shows it, is not dead-lettered by our policy; None if it is.

    ``queue`` is the API's record of task_queue; its ``policy`` fields come with the queue's
    statistics, so a queue declared or a policy set a moment ago may not show them yet.
    """
    if queue is None:
        return f"{QUEUE_NAME} does not exist"
    applied = queue.get("policy") or None
    effective = queue.get("effective_policy_definition") or {}
    if all(effective.get(key) == value for key, value in DEAD_LETTERING.items()):
        return None
    if applied is None:
        return "no policy applies to it"
    return f"policy {applied!r} applies to it instead, without our dead-letter exchange"


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
