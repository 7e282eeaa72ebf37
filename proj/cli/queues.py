"""``proj queues``: the tutorial's ``rabbitmqctl list_queues name messages_ready messages_unacknowledged``.

Read from RabbitMQ's management API (``PROJ_MANAGEMENT_URL``, else derived from ``CELERY_BROKER_URL``;
the same URL Flower's Broker page reads), so it works without ``rabbitmqctl``, its Erlang cookie or
root. A message stuck in ``unacked`` while no worker runs it is the tutorial's forgotten ack.

Usage::

    proj queues                    # every queue of the broker's vhost
    proj queues task_queue         # only these
    proj queues --json             # [{"name": ..., "messages_ready": ..., ...}]
    proj queues --watch            # refresh every second; Ctrl+C to stop

    name        ready  unacked  consumers
    task_queue      3        2          2

The management API refreshes its counts every ``collect_statistics_interval`` (5 s by default,
0.5 s on ``proj broker``'s node), so a count may trail the broker by that much.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from datetime import datetime

import click

from proj.rabbit.management import Management, ManagementError, configured_management_url, vhost_from_broker

EXIT_OK = 0
EXIT_UNREACHABLE = 2  # CANNOT_RUN of proj/cli/exits.py: the counts could not be read

#: The columns, as the table shows them and as the JSON names them (rabbitmqctl's own names).
COLUMNS = (
    ("name", "name"),
    ("ready", "messages_ready"),
    ("unacked", "messages_unacknowledged"),
    ("consumers", "consumers"),
)


class QueuesError(RuntimeError):
    """The queues could not be read; the message says what failed and what to do."""


def management() -> Management:
    """The management API client for the configured broker, or a QueuesError if its URL is unusable."""
    from proj.celery import app

    broker_url = app.conf.broker_url.split(";")[0]
    url = configured_management_url(broker_url)
    parts = urllib.parse.urlsplit(url)
    try:
        well_formed = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        well_formed = False
    if not well_formed:
        # Not echoed: a URL this malformed may not even show where its password is.
        raise QueuesError(
            "PROJ_MANAGEMENT_URL is not an http(s)://user:password@host:port/api/ URL: "
            "set it like http://guest:guest@127.0.0.1:15672/api/ (`proj broker start` prints it)"
        )
    return Management(url, vhost_from_broker(broker_url), timeout=3.0)


def fetch(mgmt: Management, names: tuple[str, ...] = ()) -> list[dict]:
    """One row per queue of the vhost (or of ``names``, in that order), with the table's columns."""
    try:
        listed = mgmt.request("GET", f"queues/{urllib.parse.quote(mgmt.vhost, safe='')}")
    except ManagementError as exc:
        raise QueuesError(_advice(str(exc))) from exc
    if listed is None:
        raise QueuesError(f"the broker has no virtual host {mgmt.vhost!r}: check the vhost in CELERY_BROKER_URL")
    rows = {
        q["name"]: {
            "name": q["name"],
            "messages_ready": int(q.get("messages_ready") or 0),
            "messages_unacknowledged": int(q.get("messages_unacknowledged") or 0),
            "consumers": int(q.get("consumers") or 0),
        }
        for q in listed
    }
    if not names:
        return [rows[name] for name in sorted(rows)]
    missing = [name for name in names if name not in rows]
    if missing:
        raise QueuesError(f"no queue named {', '.join(missing)} in vhost {mgmt.vhost!r} (`proj queues` lists them)")
    return [rows[name] for name in names]


def _advice(error: str) -> str:
    if "HTTP 401" in error:
        return f"{error}: check the user and password in PROJ_MANAGEMENT_URL (or CELERY_BROKER_URL)"
    if "cannot reach" in error:
        return (
            f"{error}: is RabbitMQ running with its management plugin? (`proj broker start` prints PROJ_MANAGEMENT_URL)"
        )
    return error


def render_table(rows: list[dict]) -> str:
    """An aligned table: names left-aligned, counts right-aligned, like ``rabbitmqctl list_queues``."""
    header = [title for title, _ in COLUMNS]
    body = [[str(row[key]) for _, key in COLUMNS] for row in rows]
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    return "\n".join(line(cells) for cells in [header, *body])


def _show(rows: list[dict], as_json: bool, watching: bool) -> None:
    if as_json:
        # Watching: one JSON document per line and refresh, for `jq` and friends.
        click.echo(json.dumps(rows) if watching else json.dumps(rows, indent=2))
    else:
        click.echo(render_table(rows))


def _fail(message: str) -> int:
    click.echo(f"proj queues: {message}", err=True)
    return EXIT_UNREACHABLE


def _watch(mgmt: Management, names: tuple[str, ...], as_json: bool, interval: float, count: int | None) -> int:
    """Redraw every ``interval`` seconds; an outage shows one line and the watch goes on."""
    tty = sys.stdout.isatty() and not as_json
    status = EXIT_OK
    shown = 0
    next_at = time.monotonic()
    try:
        while count is None or shown < count:
            try:
                rows, error = fetch(mgmt, names), None
            except QueuesError as exc:
                rows, error = None, str(exc)
            if tty:
                click.echo("\x1b[H\x1b[2J", nl=False)
                click.echo(f"Every {interval:g}s: proj queues    {datetime.now():%H:%M:%S}\n")
            elif shown and not as_json:
                click.echo()
            if error is None:
                _show(rows, as_json, watching=True)
                status = EXIT_OK
            else:
                click.echo(f"proj queues: {error}", err=True)
                status = EXIT_UNREACHABLE
            shown += 1
            if count is not None and shown >= count:
                break
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:
        pass
    return status


@click.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the queues as JSON.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl+C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, hidden=True, help="Seconds between refreshes.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop watching after N refreshes.")
def queues(names, as_json, watch, interval, count) -> None:
    """The tutorial's `rabbitmqctl list_queues name messages_ready messages_unacknowledged`.

    Reads RabbitMQ's management API at PROJ_MANAGEMENT_URL (default: derived from CELERY_BROKER_URL,
    port 15672). NAMES limits the table to those queues.
    """
    try:
        mgmt = management()
        if watch:
            sys.exit(_watch(mgmt, tuple(names), as_json, interval, count))
        rows = fetch(mgmt, tuple(names))
    except QueuesError as exc:
        sys.exit(_fail(str(exc)))
    _show(rows, as_json, watching=False)
    sys.exit(EXIT_OK)
