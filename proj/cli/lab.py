"""``proj lab SCENARIO``: run one of the tutorial's experiments (or all) and report it.

Exit status (proj/cli/exits.py): 0 every verdict holds; 1 a verdict did not hold; 2 the broker could not
be started or reached, or a scenario could not run; 130 interrupted (everything started is stopped first).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from proj.cli.exits import CANNOT_RUN, FAILED, INTERRUPTED, OK

SCENARIO_NAMES = ("round-robin", "fair-dispatch", "redelivery", "durability")
DEFAULT_SECONDS_PER_DOT = 0.1


def echo(line: str = "") -> None:
    click.echo(line)


def fail(line: str) -> None:
    click.echo(f"proj lab: {line}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario", type=click.Choice([*SCENARIO_NAMES, "all"]), metavar="SCENARIO")
@click.option("--workers", type=click.IntRange(2, 8), default=2, show_default=True, help="Workers per scenario.")
@click.option(
    "--seconds-per-dot",
    type=click.FloatRange(0.01, 10),
    default=DEFAULT_SECONDS_PER_DOT,
    show_default=True,
    help="Work time of one '.' (small, so `all` takes under a minute).",
)
@click.option("--real-time", is_flag=True, help="The tutorial's one second per '.'.")
@click.option(
    "--broker-url",
    default=None,
    metavar="URL",
    help="Run against this broker instead of a private one started for the run (durability is then skipped).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("lab-out"),
    show_default=True,
    help="Where the charts (PNG, HTML), the JSON records and the worker logs go.",
)
@click.option(
    "--kill",
    type=click.Choice(["worker", "pool-child"]),
    default="worker",
    show_default=True,
    help="redelivery: kill the worker's main process, or only the pool child running the task.",
)
@click.option(
    "--signal",
    "kill_signal",
    type=click.Choice(["KILL", "QUIT"]),
    default="KILL",
    show_default=True,
    help="redelivery: SIGKILL (a crash) or SIGQUIT (Celery's cold shutdown) to the worker.",
)
@click.pass_context
def lab(ctx, scenario, workers, seconds_per_dot, real_time, broker_url, out_dir, kill, kill_signal) -> None:
    """Run a tutorial experiment on a real broker with real workers, and report it.

    \b
    SCENARIO is one of:
      round-robin    N workers, unlimited prefetch, the tutorial's five messages: who got which
      fair-dispatch  heavy/light workload, unlimited prefetch then prefetch 1: makespans vs lower bound
      redelivery     a long task's worker is killed mid-task; the message is redelivered and completes
      durability     tasks enqueued with no worker, the broker restarted, queue depth before/after
      all            every scenario in turn, one summary at the end

    Exit status: 0 every verdict holds, 1 a verdict did not hold, 2 the broker could not be
    started or reached, 130 interrupted.
    """
    if real_time:
        if ctx.get_parameter_source("seconds_per_dot") is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("give --real-time or --seconds-per-dot, not both")
        seconds_per_dot = 1.0
    if kill == "pool-child" and kill_signal == "QUIT":
        raise click.UsageError("--signal QUIT is a cold shutdown of the worker: use it with --kill worker")
    from proj.lab.scenarios import Options

    options = Options(workers=workers, kill=kill, signal=kill_signal)
    sys.exit(run(scenario, options, seconds_per_dot=seconds_per_dot, broker_url=broker_url, out_dir=out_dir))


class Interrupted(BaseException):
    """SIGTERM, handled like Ctrl+C: stop what was started, then exit."""


def _on_sigterm(signum, frame):
    raise Interrupted()


def run(scenario: str, options, *, seconds_per_dot: float, broker_url: str | None, out_dir: Path) -> int:
    """Run ``scenario`` (or all of them) and report; returns the exit status."""
    from kombu.exceptions import OperationalError

    from proj.lab import report
    from proj.lab.scenarios import CANNOT_RESTART, SCENARIOS
    from proj.lab.session import Lab, LabError, no_interrupts
    from proj.management import hide_password
    from proj.new_task import describe_broker_error

    if scenario == "durability" and broker_url:
        fail(CANNOT_RESTART)
        return CANNOT_RUN
    names = list(SCENARIO_NAMES) if scenario == "all" else [scenario]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot write to --out {out_dir}: {exc.strerror}")
        return CANNOT_RUN

    began = time.monotonic()
    session = Lab(broker_url=broker_url, seconds_per_dot=seconds_per_dot, out_dir=out_dir, echo=echo)
    results: list[dict] = []
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        session.open()
        for name in names:
            echo()
            result = SCENARIOS[name](session, options)
            results.append(result)
            paths = report.write_files(result, out_dir)
            for line in report.console(result):
                echo(line)
            echo(f"   chart: {paths.get('html')}" + (f", {paths['png']}" if "png" in paths else ""))
    except LabError as exc:
        fail(str(exc))
        return CANNOT_RUN
    except (OSError, OperationalError) as exc:  # the broker went away mid-run
        fail(f"lost the broker at {hide_password(session.url)}: {describe_broker_error(exc)}")
        return CANNOT_RUN
    except (KeyboardInterrupt, Interrupted):
        echo()
        echo(" [*] Interrupted: stopping the workers" + (" and the broker" if session.private else ""))
        return INTERRUPTED
    finally:
        with no_interrupts():
            session.close()
        signal.signal(signal.SIGTERM, old_term)

    elapsed = time.monotonic() - began
    if scenario == "all":
        index = report.write_index(results, out_dir, elapsed)
        echo()
        echo(f" == summary: {len(results)} scenarios in {elapsed:.1f} s")
        for r in results:
            for line in report.summary_lines(r):
                echo(line)
        echo(f" [*] Charts and records: {index} (open it in a browser), {out_dir}/*.png, {out_dir}/*.json")
    ok = all(report.holds(r) for r in results)
    return OK if ok else FAILED
