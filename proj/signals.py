"""Worker-side hooks: start-up checks, and the tutorial's ready line once the worker consumes."""

from __future__ import annotations

import sys
import threading
import time

from celery.signals import worker_init, worker_ready
from celery.utils.log import get_logger

from proj import config
from proj.console import READY_LINE, say

logger = get_logger(__name__)


def refuse(line: str) -> None:
    """Stop the worker at start-up with one line and exit status 1."""
    print(f"proj worker: {line}", file=sys.stderr, flush=True)
    raise SystemExit(1)


@worker_init.connect
def check_broker_login(sender=None, **kwargs) -> None:
    """A broker that refuses the login or the vhost stops the worker with one line, not Celery's traceback.

    Celery treats both as unrecoverable and ends with a CRITICAL log and some 80 lines of traceback. Any
    other connection error (a broker not up yet) is left to Celery's own connection retry.
    """
    from amqp.exceptions import AccessRefused, NotAllowed

    from proj.management import hide_password
    from proj.new_task import describe_broker_error

    app = sender.app if sender is not None else None
    if app is None or app.conf.broker_url.split("://")[0] not in ("amqp", "pyamqp"):
        return
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except (AccessRefused, NotAllowed) as exc:
        refuse(f"{hide_password(app.conf.broker_url)} refused the worker: {describe_broker_error(exc)}")
    except Exception:  # not reachable (yet): Celery's own connection retry takes over
        return


@worker_init.connect
def check_before_consuming(sender=None, **kwargs) -> None:
    # A task still running when RabbitMQ's consumer_timeout fires would be redelivered and run twice.
    if config.TASK_TIME_LIMIT >= config.BROKER_CONSUMER_TIMEOUT:
        refuse(
            f"the task time limit ({config.TASK_TIME_LIMIT:g} s, PROJ_TASK_TIME_LIMIT) is not below RabbitMQ's "
            f"consumer_timeout ({config.BROKER_CONSUMER_TIMEOUT:g} s, PROJ_BROKER_CONSUMER_TIMEOUT): lower the "
            "limit, or raise consumer_timeout on the broker and set PROJ_BROKER_CONSUMER_TIMEOUT to it"
        )
    app = sender.app if sender is not None else None
    if app is not None and app.conf.broker_url.split("://")[0] in ("amqp", "pyamqp"):
        check_queue_declaration(app)


def check_queue_declaration(app) -> None:
    """Declare task_queue as configured; a conflicting existing queue stops the worker with one line.

    An unreachable broker is not an error here: the worker retries its connection as usual.
    """
    from amqp.exceptions import PreconditionFailed

    from proj.queues import explain_mismatch

    (queue,) = app.conf.task_queues
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            queue.bind(conn.default_channel).declare()
    except PreconditionFailed as exc:
        refuse(explain_mismatch(exc.reply_text) or f"RabbitMQ refused to declare {queue.name}: {exc.reply_text}")
    except Exception:  # broker not reachable yet: Celery's own connection retry takes over
        return
    ensure_dead_letter_policy(app)


#: Seconds the worker waits for RabbitMQ to show its dead-letter policy on task_queue before saying it is
#: not in effect: the management API shows a queue's policy with its statistics, refreshed every
#: collect_statistics_interval (5 s by default), so two of those and some slack.
POLICY_CHECK_TIMEOUT = 15.0

#: The management API through which the policy was set, until the check below has run.
_policy_to_check = None


def ensure_dead_letter_policy(app) -> None:
    """Give task_queue its dead-letter exchange (RabbitMQ policies), or say loudly that it has none."""
    global _policy_to_check
    from proj.management import Management, ManagementError
    from proj.queues import ensure_policy

    management = Management.for_broker(app.conf.broker_url)
    try:
        ensure_policy(management, config.MAX_DELIVERIES)
    except ManagementError as exc:
        logger.warning(
            "could not set the dead-letter policy of %s (%s): proj's workers still dead-letter what they "
            "cannot run, but a message the broker itself drops would be lost; set PROJ_MANAGEMENT_URL",
            config.QUEUE_NAME,
            exc,
        )
        return
    _policy_to_check = management


def check_policy_in_effect(management, timeout: float = POLICY_CHECK_TIMEOUT, interval: float = 0.25) -> bool:
    """Wait until RabbitMQ shows our dead-letter policy on task_queue; else say so in one line. True if it does.

    A policy RabbitMQ finds inapplicable, or one of higher priority matching task_queue, leaves the queue
    without a dead-letter exchange: what the broker itself dead-letters (an expired message, a reject
    without requeue) would vanish instead of reaching task_queue.dead.
    """
    from proj.management import ManagementError
    from proj.queues import POLICY_NAMES, policy_problem

    deadline = time.monotonic() + timeout
    while True:
        try:
            queue = management.queue(config.QUEUE_NAME)
        except ManagementError as exc:
            logger.warning("could not check the dead-letter policy of %s: %s", config.QUEUE_NAME, exc)
            return False
        problem = policy_problem(queue)
        if problem is None:
            logger.info("Dead-letter policy %s in effect on %s", queue.get("policy"), config.QUEUE_NAME)
            return True
        if time.monotonic() > deadline:
            logger.error(
                "the dead-letter policy is not in effect on %s (%s): a message RabbitMQ itself dead-letters "
                "(expired, rejected without requeue) would be lost, not moved to %s; look for a policy of "
                "higher priority than %s matching %s (rabbitmqctl list_policies)",
                config.QUEUE_NAME,
                problem,
                config.DEAD_QUEUE_NAME,
                " and ".join(POLICY_NAMES),
                config.QUEUE_NAME,
            )
            return False
        time.sleep(interval)


@worker_ready.connect
def announce_ready(sender=None, **kwargs) -> None:
    global _policy_to_check
    say(READY_LINE)
    if _policy_to_check is not None:
        # In the background: the answer may take a statistics interval or two, and consuming need not wait.
        management, _policy_to_check = _policy_to_check, None
        check = threading.Thread(target=check_policy_in_effect, args=(management,), name="proj-policy-check")
        check.daemon = True
        check.start()
