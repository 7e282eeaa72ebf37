"""``proj dead``: what is in ``task_queue.dead``, and putting it back once the cause is fixed.

Usage::

    proj dead list                 # reason, age, body prefix, and the count
    proj dead requeue --all        # or: proj dead requeue ID [ID ...]
    proj dead purge [--yes]        # empties it, after a confirmation prompt

Reading the queue takes each message without acknowledging it and closes the channel, so the
broker puts every message back: listing moves nothing. Requeue is copy-then-ack (proj.deadletter).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
import time
from dataclasses import dataclass

import click
from amqp.exceptions import NotFound

from proj import deadletter
from proj.celery import app
from proj.cli import exits
from proj.management import hide_password
from proj.new_task import describe_broker_error
from proj.queues import DEAD_QUEUE_NAME, QUEUE_NAME


@dataclass
class DeadLetter:
    id: str
    reason: str
    dead_at: float | None
    body: bytes
    content_type: str
    headers: dict

    @property
    def age(self) -> str:
        if not self.dead_at:
            return "?"
        seconds = max(0, time.time() - self.dead_at)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"{seconds / size:.0f}{unit}"
        return f"{seconds:.0f}s"

    def preview(self, width: int = 40) -> str:
        text = self.body.decode("utf-8", "backslashreplace")
        return repr(text if len(text) <= width else text[: width - 1] + "…")


def letter_of(message) -> DeadLetter:
    headers = dict(message.headers or {})
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    # A Celery task keeps its task id; anything else is named by a digest of its body and arrival.
    ident = headers.get("id") or hashlib.sha1(body + repr(headers.get(deadletter.DEAD_AT)).encode()).hexdigest()[:12]
    reason, dead_at = headers.get(deadletter.REASON), headers.get(deadletter.DEAD_AT)
    if reason is None and headers.get("x-death"):  # dead-lettered by the broker itself
        death = headers["x-death"][0]
        reason = f"{death.get('reason')} by RabbitMQ (from {death.get('queue')})"
        if isinstance(death.get("time"), datetime.datetime):  # an AMQP timestamp: UTC, to the second
            dead_at = death["time"].replace(tzinfo=datetime.UTC).timestamp()
    return DeadLetter(
        id=str(ident),
        reason=str(reason or "unknown"),
        dead_at=dead_at,
        body=body,
        content_type=message.content_type or "",
        headers=headers,
    )


def _connection(broker_url: str | None):
    return deadletter.confirming(broker_url or app.conf.broker_url)


def walk(conn, visit) -> int:
    """Take the dead letters that are there now, unacked, calling ``visit(message, letter)`` on each.

    Only as many as the queue held when the walk began: what arrives meanwhile (a requeued message
    that a running worker dead-letters again, say) lands behind them and is left for the next run,
    so a requeue never takes the same message twice. ``visit`` returns True to stop early. The
    messages not acked go back to the queue, in order, when the channel closes.
    """
    channel = conn.channel()
    try:
        try:  # passive: the queue's type (classic or quorum) is whatever the workers declared
            there = channel.queue_declare(DEAD_QUEUE_NAME, passive=True).message_count
        except NotFound:
            return 0
        count = 0
        while count < there:
            raw = channel.basic_get(DEAD_QUEUE_NAME, no_ack=False)
            if raw is None:  # someone else took the rest
                return count
            message = channel.message_to_python(raw)
            count += 1
            if visit(message, letter_of(message)):
                return count
        return count
    finally:
        channel.close()  # unacked messages return to the queue, in order


#: Headers a requeued letter leaves behind: proj's own, the broker's record of its death (``x-death``, and
#: ``x-first-death-*`` / ``x-last-death-*``) and a quorum queue's counters (RabbitMQ 4.3 hands on a published
#: ``x-delivery-count``, so a letter put back would otherwise come back already counted out).
STALE_HEADERS = ("x-proj-", "x-first-death-", "x-last-death-", "x-delivery-count", "x-acquired-count")


def list_letters(broker_url: str | None = None) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    with _connection(broker_url) as conn:
        walk(conn, lambda message, letter: letters.append(letter))
    return letters


def requeue(ids: set[str] | None, broker_url: str | None = None) -> list[str]:
    """Move the dead letters with these ids (all if None) back to task_queue; returns the ids moved.

    Each message that was in task_queue.dead when it began is moved at most once (see ``walk``).
    """
    moved: list[str] = []
    with _connection(broker_url) as conn:

        def visit(message, letter) -> bool:
            if ids is not None and letter.id not in ids:
                return False
            headers = {k: v for k, v in letter.headers.items() if not k.startswith(STALE_HEADERS) and k != "x-death"}
            content_type = letter.headers.get(deadletter.ORIGINAL_CONTENT_TYPE, letter.content_type) or None
            encoding = letter.headers.get(deadletter.ORIGINAL_CONTENT_ENCODING, message.content_encoding) or None
            publisher = conn.clone()
            with publisher:
                deadletter.publish_raw(
                    publisher,
                    letter.body,
                    QUEUE_NAME,
                    headers,
                    deadletter.copy_properties(message),
                    content_type,
                    encoding,
                )
            message.ack()
            moved.append(letter.id)
            return ids is not None and ids <= set(moved)  # every one named is back: stop

        walk(conn, visit)
    return moved


def purge(broker_url: str | None = None) -> int:
    with _connection(broker_url) as conn:
        channel = conn.default_channel
        try:
            channel.queue_declare(DEAD_QUEUE_NAME, passive=True)
        except NotFound:
            return 0
        return channel.queue_purge(DEAD_QUEUE_NAME) or 0


# -- the command --------------------------------------------------------------------------------


def _fail(exc: Exception) -> None:
    click.echo(f"proj dead: cannot reach {hide_password(app.conf.broker_url)}: {describe_broker_error(exc)}", err=True)
    sys.exit(exits.CANNOT_RUN)


@click.group()
def dead() -> None:
    """The dead-letter queue task_queue.dead: list, requeue, purge."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the dead letters as JSON.")
def list_command(as_json: bool) -> None:
    """Show each dead letter: id, reason, age, the start of its body; then the count."""
    try:
        letters = list_letters()
    except Exception as exc:
        _fail(exc)
    if as_json:
        rows = [
            {
                "id": d.id,
                "reason": d.reason,
                "dead_at": d.dead_at,
                "content_type": d.content_type,
                "body": d.body.decode("utf-8", "backslashreplace"),
            }
            for d in letters
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if letters:
        width = max(len(d.id) for d in letters)
        click.echo(f"{'ID':<{width}}  {'AGE':>4}  {'BODY':<42}  REASON")
        for d in letters:
            click.echo(f"{d.id:<{width}}  {d.age:>4}  {d.preview():<42}  {d.reason}")
    click.echo(f" [*] {len(letters)} message{'s' if len(letters) != 1 else ''} in {DEAD_QUEUE_NAME}")


@dead.command("requeue")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead letter.")
def requeue_command(ids: tuple[str, ...], all_: bool) -> None:
    """Put dead letters back on task_queue (once their cause is fixed)."""
    if not ids and not all_:
        click.echo("proj dead requeue: name the IDs to requeue (see `proj dead list`) or pass --all", err=True)
        sys.exit(exits.CANNOT_RUN)
    try:
        moved = requeue(None if all_ else set(ids))
    except Exception as exc:
        _fail(exc)
    missing = set(ids) - set(moved)
    click.echo(f" [x] Requeued {len(moved)} message{'s' if len(moved) != 1 else ''} to {QUEUE_NAME}")
    if missing:
        click.echo(f"proj dead requeue: no dead letter with id {', '.join(sorted(missing))}", err=True)
        sys.exit(exits.FAILED)


@dead.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(yes: bool) -> None:
    """Delete every message in task_queue.dead, for good."""
    if not yes:
        click.confirm(f"Delete every message in {DEAD_QUEUE_NAME} for good?", abort=True)
    try:
        count = purge()
    except Exception as exc:
        _fail(exc)
    click.echo(f" [x] Purged {count} message{'s' if count != 1 else ''} from {DEAD_QUEUE_NAME}")
