"""``proj health``: is a worker doing the work it holds? One line, and an exit status a healthcheck can use.

A worker is unhealthy when its main process does not answer a remote-control request within
``--timeout`` seconds, or when it holds a message it is not running (reserved, not started, while a
pool process is idle) for longer than ``--stuck-after`` seconds (``PROJ_STUCK_AFTER``). Each worker's
guard (proj/guard.py) answers the ``proj_stuck`` request with what it holds.

Usage::

    proj health                          # every worker that answers
    proj health --worker worker@web-1    # only this one (a compose healthcheck: worker@$(hostname))

Exit status (proj/cli/exits.py): 0 healthy, 1 unhealthy, 2 cannot run (broker unreachable, bad option).

A worker whose guard is off (``PROJ_STUCK_AFTER=0``, or a Celery/billiard/kombu whose internals it
reads changed: proj/compat.py) still runs tasks: the line says "guard off: <why>" for it and the exit
status stays 0 unless something else is wrong, since nothing is known to be stuck; a monitor that must
have the guard can look for "guard off" in the line.
"""

from __future__ import annotations

import sys
import time

import click

from proj.cli import exits

#: Default seconds a worker has to answer: a live main process answers in milliseconds.
DEFAULT_TIMEOUT = 5.0
COMMAND = "proj_stuck"


class CannotRun(click.ClickException):
    """It cannot ask the workers (click's own ClickException would exit 1, which means unhealthy)."""

    exit_code = exits.CANNOT_RUN

    def show(self, file=None) -> None:
        click.echo(f"proj health: {self.format_message()}", err=True)


def ask(app, names: list[str], timeout: float) -> tuple[dict[str, dict], float]:
    """Every answering worker's guard report (hostname -> report), and how long the answers took."""
    from kombu.utils.url import maybe_sanitize_url

    started = time.monotonic()
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            replies = app.control.broadcast(
                COMMAND,
                destination=names or None,
                reply=True,
                timeout=timeout,
                limit=len(names) or None,
                connection=conn,
            )
    except Exception as exc:  # the broker is down, refuses us, or the URL is malformed
        url = maybe_sanitize_url(app.conf.broker_url)
        raise CannotRun(f"cannot reach the broker at {url} ({exc}): start it or fix CELERY_BROKER_URL")
    answers = {}
    for reply in replies or ():
        answers.update(reply)
    return answers, time.monotonic() - started


def verdict(answers: dict[str, dict], names: list[str], timeout: float, stuck_after: float) -> tuple[bool, str]:
    """(healthy, the one line that says why)."""
    problems = []
    for name in names:
        if name not in answers:
            problems.append(f"{name} did not answer within {timeout:g} s (its main process is stuck or gone)")
    if not names and not answers:
        problems.append(f"no worker answered within {timeout:g} s")
    for host, report in sorted(answers.items()):
        if not isinstance(report, dict) or "held" not in report:
            problems.append(f"{host} does not know {COMMAND!r} ({report}): restart it with this proj")
            continue
        for held in report["held"]:
            if held["seconds"] > stuck_after:
                problems.append(
                    f"{host} holds task {held['name']} {held['id']} without running it for {held['seconds']:.0f} s "
                    f"(over {stuck_after:g} s) while a pool process is idle"
                )
    notes = [
        f"{host}: guard {report['guard']}"
        for host, report in sorted(answers.items())
        if isinstance(report, dict) and str(report.get("guard", "on")).startswith("off")
    ]
    if problems:
        return False, "; ".join(problems + notes)
    held = sum(len(r["held"]) for r in answers.values())
    workers = ", ".join(sorted(answers))
    line = f"{workers}: healthy ({held} message(s) waiting to start, none over {stuck_after:g} s)"
    return True, "; ".join([line, *notes])


@click.command()
@click.option("--worker", "names", multiple=True, help="A worker's name (worker@host); repeat for more. Default: all.")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT, show_default=True, help="Seconds to answer."
)
@click.option(
    "--stuck-after",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a held message may wait to start [PROJ_STUCK_AFTER, or 30 if the guard is off].",
)
def health(names, timeout, stuck_after) -> None:
    """Exit 0 if the workers answer and run what they hold, 1 if not, 2 if it cannot ask them."""
    from proj import config
    from proj.celery import app

    if stuck_after is None:
        stuck_after = config.STUCK_AFTER or 30.0
    answers, _ = ask(app, list(names), timeout)
    healthy, line = verdict(answers, list(names), timeout, stuck_after)
    if healthy:
        click.echo(f" [x] {line}")
        sys.exit(exits.OK)
    click.echo(f"proj health: unhealthy: {line}", err=True)
    sys.exit(exits.FAILED)
