"""``proj queues``: the tutorial's ``rabbitmqctl list_queues name messages_ready messages_unacknowledged``.

``ready`` and ``consumers`` are exact at the moment of the call, as ``rabbitmqctl`` gives them: a
passive ``queue.declare`` on ``CELERY_BROKER_URL`` answers both. ``unacked`` has no such answer over
AMQP, so it comes from RabbitMQ's management API (``PROJ_MANAGEMENT_URL``, else derived from
``CELERY_BROKER_URL``; the same URL Flower's Broker page reads), whose statistics trail the queue by
a few seconds (2 to 5 s measured on RabbitMQ 3.10, even at ``collect_statistics_interval = 500``).
When they visibly trail (their ready or consumer count is not the exact one), the unacked count is
marked ``~`` and a note says so. With the management plugin's metrics collection off
(``management_agent.disable_metrics_collector = true``, which RabbitMQ 4.3 deprecates the collection for)
the API has no message counts at all: unacked is then ``?`` (``null`` in JSON) and a note says why, rather
than a 0 that looks real. A message stuck in ``unacked`` while no worker runs it is the
tutorial's forgotten ack. Celery's own queues (``celeryev.*``, ``*.pidbox``, result reply queues)
are left out unless ``--all``.

Usage::

    proj queues                    # the vhost's queues, Celery's internal ones left out
    proj queues --all              # with them
    proj queues task_queue         # only these
    proj queues --json             # [{"name": ..., "messages_ready": ..., ...}]
    proj queues --watch            # refresh every second; Ctrl+C to stop

    name             ready  unacked  consumers
    task_queue           3        2          2
    task_queue.dead      0        0          0
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
from datetime import datetime

import click
from amqp.exceptions import ChannelError, NotFound
from kombu import Connection

from proj.celery import app
from proj.cli import exits
from proj.management import (
    Management,
    ManagementError,
    configured_management_url,
    hide_password,
    vhost_from_broker,
)
from proj.new_task import describe_broker_error

#: Celery's own queues: task events (``celeryev.<uuid>``), remote control (``<worker>.celery.pidbox``,
#: ``reply.celery.pidbox``), ``rpc://`` result replies (one per client, named by a UUID), server-named.
INTERNAL_QUEUE = re.compile(
    r"^(celeryev\..*|.*\.pidbox|amq\.gen-.*|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)
#: The mark of an unacked count whose statistics visibly trail the queue.
TRAILING = "~"
#: The note under a table whose unacked counts RabbitMQ does not collect.
METRICS_OFF_NOTE = (
    "? unacked unknown: RabbitMQ's management metrics collection is off "
    "(management_agent.disable_metrics_collector), so its API counts no messages (ready and consumers are exact)"
)

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


class Exact:
    """Exact ready and consumer counts, from passive ``queue.declare`` on one AMQP connection (kept while watching)."""

    def __init__(self, broker_url: str):
        self.broker_url = broker_url
        self.connection = None

    def counts(self, names: list[str]) -> dict[str, tuple[int, int] | None]:
        """(ready, consumers) per queue; None for a queue that does not exist; absent if it cannot be read."""
        try:
            if self.connection is None:
                self.connection = Connection(self.broker_url, connect_timeout=3)
                self.connection.ensure_connection(max_retries=1, timeout=3)
            found: dict[str, tuple[int, int] | None] = {}
            channel = self.connection.channel()
            try:
                for name in names:
                    try:
                        ok = channel.queue_declare(name, passive=True)
                        found[name] = (ok.message_count, ok.consumer_count)
                    except NotFound:
                        found[name] = None
                        channel = self.connection.channel()  # the error closed the channel
                    except ChannelError:  # another connection's exclusive queue: the statistics will do
                        channel = self.connection.channel()
            finally:
                channel.close()
            return found
        except Exception as exc:
            self.close()
            raise QueuesError(
                f"cannot read the queues at {hide_password(self.broker_url)}: {describe_broker_error(exc)}"
            ) from exc

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:  # already gone
                pass
            self.connection = None


def fetch(mgmt: Management, exact: Exact, names: tuple[str, ...] = (), show_all: bool = False) -> list[dict]:
    """One row per queue of the vhost (or of ``names``, in that order), with the table's columns.

    ``ready`` and ``consumers`` are exact; ``unacked`` is the management API's, with
    ``unacked_may_trail`` true when that API's ready or consumer count is not the exact one, and None
    (not trailing) when the broker collects no message counts.
    """
    try:
        listed = mgmt.request("GET", f"queues/{urllib.parse.quote(mgmt.vhost, safe='')}")
        metrics_off = metrics_collection_off(mgmt)
    except ManagementError as exc:
        raise QueuesError(_advice(str(exc))) from exc
    if listed is None:
        raise QueuesError(f"the broker has no virtual host {mgmt.vhost!r}: check the vhost in CELERY_BROKER_URL")
    stats = {q["name"]: q for q in listed}
    if names:
        wanted = list(names)
    else:
        wanted = sorted(name for name in stats if show_all or not INTERNAL_QUEUE.match(name))
    counts = exact.counts(wanted)
    missing = [name for name in wanted if name in counts and counts[name] is None]
    if names and missing:
        raise QueuesError(f"no queue named {', '.join(missing)} in vhost {mgmt.vhost!r} (`proj queues` lists them)")
    rows = []
    for name in wanted:
        if name in counts and counts[name] is None:  # deleted since it was listed
            continue
        q = stats.get(name)  # None: declared a moment ago, not in the statistics yet
        seen = (int(q.get("messages_ready") or 0), int(q.get("consumers") or 0)) if q else None
        ready, consumers = counts.get(name) or seen or (0, 0)
        if metrics_off:
            rows.append(
                {
                    "name": name,
                    "messages_ready": ready,
                    "messages_unacknowledged": None,
                    "consumers": consumers,
                    "unacked_may_trail": False,
                }
            )
            continue
        rows.append(
            {
                "name": name,
                "messages_ready": ready,
                "messages_unacknowledged": int(q.get("messages_unacknowledged") or 0) if q else None,
                "consumers": consumers,
                "unacked_may_trail": seen != (ready, consumers) or name not in counts,
            }
        )
    return rows


def metrics_collection_off(mgmt: Management) -> bool:
    """Whether the management plugin collects no statistics (its queues then carry no message counts)."""
    return (mgmt.request("GET", "overview") or {}).get("disable_stats") is True


def _advice(error: str) -> str:
    if "HTTP 401" in error:
        return f"{error}: check the user and password in PROJ_MANAGEMENT_URL (or CELERY_BROKER_URL)"
    if "cannot reach" in error:
        return (
            f"{error}: is RabbitMQ running with its management plugin? (`proj broker start` prints PROJ_MANAGEMENT_URL)"
        )
    return error


def render_table(rows: list[dict]) -> str:
    """An aligned table: names left-aligned, counts right-aligned, like ``rabbitmqctl list_queues``.

    An unacked count whose statistics visibly trail is marked ``~``, and a note under the table says so.
    """

    def unacked(row: dict) -> str:
        n = row["messages_unacknowledged"]
        return ("?" if n is None else str(n)) + (TRAILING if row["unacked_may_trail"] else "")

    header = [title for title, _ in COLUMNS]
    body = [[row["name"], str(row["messages_ready"]), unacked(row), str(row["consumers"])] for row in rows]
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    lines = [line(cells) for cells in [header, *body]]
    if any(row["messages_unacknowledged"] is None and not row["unacked_may_trail"] for row in rows):
        lines.append(METRICS_OFF_NOTE)
    if any(row["unacked_may_trail"] for row in rows):
        lines.append(
            f"{TRAILING} unacked comes from RabbitMQ's statistics, a few seconds behind on the queues marked "
            "(ready and consumers are exact)"
        )
    return "\n".join(lines)


def _show(rows: list[dict], as_json: bool, watching: bool) -> None:
    if as_json:
        # Watching: one JSON document per line and refresh, for `jq` and friends.
        click.echo(json.dumps(rows) if watching else json.dumps(rows, indent=2))
    else:
        click.echo(render_table(rows))


def _fail(message: str) -> int:
    click.echo(f"proj queues: {message}", err=True)
    return exits.CANNOT_RUN


def _watch(
    mgmt: Management,
    exact: Exact,
    names: tuple[str, ...],
    show_all: bool,
    as_json: bool,
    interval: float,
    count: int | None,
) -> int:
    """Redraw every ``interval`` seconds; an outage shows one line and the watch goes on."""
    tty = sys.stdout.isatty() and not as_json
    status = exits.OK
    shown = 0
    next_at = time.monotonic()
    try:
        while count is None or shown < count:
            try:
                rows, error = fetch(mgmt, exact, names, show_all), None
            except QueuesError as exc:
                rows, error = None, str(exc)
            if tty:
                click.echo("\x1b[H\x1b[2J", nl=False)
                click.echo(f"Every {interval:g}s: proj queues    {datetime.now():%H:%M:%S}\n")
            elif shown and not as_json:
                click.echo()
            if error is None:
                _show(rows, as_json, watching=True)
                status = exits.OK
            else:
                click.echo(f"proj queues: {error}", err=True)
                status = exits.CANNOT_RUN
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
@click.option("--all", "show_all", is_flag=True, help="Also Celery's own queues (celeryev.*, *.pidbox, replies).")
@click.option("--json", "as_json", is_flag=True, help="Print the queues as JSON.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl+C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, hidden=True, help="Seconds between refreshes.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop watching after N refreshes.")
def queues(names, show_all, as_json, watch, interval, count) -> None:
    """The tutorial's `rabbitmqctl list_queues name messages_ready messages_unacknowledged`.

    ready and consumers are exact (a passive queue.declare on CELERY_BROKER_URL); unacked comes from
    RabbitMQ's management API at PROJ_MANAGEMENT_URL (default: derived from CELERY_BROKER_URL, port
    15672), marked ~ when its statistics are visibly behind, ? when RabbitMQ collects none. NAMES limits
    the table to those queues.
    """
    try:
        mgmt = management()
    except QueuesError as exc:
        sys.exit(_fail(str(exc)))
    exact = Exact(app.conf.broker_url)
    try:
        if watch:
            sys.exit(_watch(mgmt, exact, tuple(names), show_all, as_json, interval, count))
        rows = fetch(mgmt, exact, tuple(names), show_all)
    except QueuesError as exc:
        sys.exit(_fail(str(exc)))
    finally:
        exact.close()
    _show(rows, as_json, watching=False)
    sys.exit(exits.OK)
