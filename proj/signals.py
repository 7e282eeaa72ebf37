"""Worker-side hooks: start-up checks, and the tutorial's ready line once the worker consumes."""

from __future__ import annotations

import sys

from celery.signals import worker_init, worker_ready
from celery.utils.log import get_logger

from proj import config
from proj.console import say

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

    from proj.new_task import describe_broker_error
    from proj.rabbit.management import hide_password

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


def ensure_dead_letter_policy(app) -> None:
    """Give task_queue its dead-letter exchange (a RabbitMQ policy), or say loudly that it has none."""
    from proj.queues import ensure_policy
    from proj.rabbit.management import Management, ManagementError

    try:
        ensure_policy(Management.for_broker(app.conf.broker_url), config.MAX_DELIVERIES)
    except ManagementError as exc:
        logger.warning(
            "could not set the dead-letter policy of %s (%s): proj's workers still dead-letter what they "
            "cannot run, but a message the broker itself drops would be lost; set PROJ_MANAGEMENT_URL",
            config.QUEUE_NAME,
            exc,
        )


@worker_ready.connect
def announce_ready(sender=None, **kwargs) -> None:
    say(" [*] Waiting for messages. To exit press CTRL+C")
