"""``proj chaos``: numbered tasks, random faults, and a count of every task.

Usage::

    proj chaos                                  # 500 tasks, 3 workers, 10 faults, private broker
    proj chaos --tasks 5000 --faults 50 --seed 7 --json
    ./dev.sh images && proj chaos --compose --tasks 3000 --faults 20 --workers 3   # node faults on containers

The run is proj/chaos/run.py's (worker processes, a private node or cluster, or a given broker), or with
``--compose`` proj/chaos/compose.py's (the compose cluster profile's containers): the same publisher,
monitor, schedule, checker and report, so the same summary and exit statuses.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from proj.chaos.schedule import KINDS, NODE_KILL, RESTART_BROKER
from proj.chaos.state import ChaosError
from proj.cli import tools
from proj.cli.exits import CANNOT_RUN, FAILED, INTERRUPTED, OK


@click.command()
@click.option("--tasks", type=click.IntRange(1, 99_999), default=500, show_default=True, help="Numbered tasks.")
@click.option("--workers", type=click.IntRange(1, 16), default=3, show_default=True, help="Worker processes.")
@click.option("--faults", type=click.IntRange(0), default=10, show_default=True, help="Faults to inject.")
@click.option("--seed", type=int, default=None, help="Seed of the fault schedule and the messages [random].")
@click.option(
    "--seconds-per-dot", type=click.FloatRange(0), default=0.01, show_default=True, help="Work time of one '.'."
)
@click.option(
    "--broker-url",
    default=None,
    metavar="URL",
    help="Use this running broker (its task_queue empty and idle) instead of a private node; no broker restarts.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run dir: ledger.sqlite, report.json, schedule.json, worker and broker logs [a new temp dir].",
)
@click.option(
    "--cluster",
    type=click.IntRange(3, 7),
    default=None,
    help="Run against a private RabbitMQ cluster of N nodes (quorum task_queue, workers spread over the nodes).",
)
@click.option(
    "--fault",
    "fault_kinds",
    multiple=True,
    type=click.Choice([k.replace("_", "-") for k in KINDS]),
    help="Draw faults of this kind only (repeatable) [every kind that applies].",
)
@click.option(
    "--stuck-after",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a worker may hold a message without starting it (or not answer) before the run ends with that "
    "verdict [PROJ_STUCK_AFTER + max(10, PROJ_STUCK_AFTER/2); 30 with the guard off].",
)
@click.option(
    "--race-ready",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="A stopped worker is started again once task_queue holds this many ready messages (0: at once).",
)
@click.option(
    "--worker-app", default="proj", show_default=True, hidden=True, help="The Celery app the workers run (tests)."
)
@click.option(
    "--compose",
    is_flag=True,
    help="Node faults (crash, freeze, isolate, partition) on the compose cluster profile's containers; "
    "needs ./dev.sh images.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (progress goes to stderr).")
def chaos(
    tasks,
    workers,
    faults,
    seed,
    seconds_per_dot,
    broker_url,
    out,
    cluster,
    fault_kinds,
    stuck_after,
    race_ready,
    worker_app,
    compose,
    as_json,
) -> None:
    """Publish numbered tasks, kill workers and restart the broker at random, then count every task.

    Faults: SIGKILL a worker, SIGKILL a pool child, SIGQUIT (cold shutdown), SIGTERM (warm
    shutdown), broker restart. A stopped worker is started again while task_queue is full, so its
    first delivery races its start. Exit status 0 only if no task was lost, none ran unpublished, every
    duplicate run is explained by a fault, no worker held a message without starting it past
    --stuck-after, and task_queue ends empty; 1 if not; 2 if it could not run.
    """
    if compose:
        chaos_compose(
            tasks, workers, faults, seed, seconds_per_dot, out, bool(cluster or broker_url or fault_kinds), as_json
        )
    # Here, not at the top: `proj --help` imports this module to list the commands, and the run's
    # modules (workers, broker, watch) would add a tenth of a second to it.
    from proj.chaos.run import Chaos, Settings

    kinds = tuple(k.replace("-", "_") for k in fault_kinds)
    if cluster and broker_url:
        _refuse("--cluster starts a private cluster: leave out --broker-url")
    if NODE_KILL in kinds and not cluster:
        _refuse("--fault node-kill needs a cluster: add --cluster 3")
    if RESTART_BROKER in kinds and (cluster or broker_url):
        _refuse("--fault restart-broker restarts the run's own single node: leave out --cluster and --broker-url")
    settings = Settings(
        cluster=cluster or 0,
        kinds=kinds,
        tasks=tasks,
        workers=workers,
        faults=faults,
        seed=seed,
        seconds_per_dot=seconds_per_dot,
        broker_url=broker_url,
        out=out,
        stuck_after=stuck_after,
        race_ready=race_ready,
        worker_app=worker_app,
    )
    run = Chaos(settings, out=sys.stderr if as_json else sys.stdout)
    run_and_report(run, lambda: run.run().to_dict(), as_json, summary)


def chaos_compose(tasks, workers, faults, seed, seconds_per_dot, out, other_broker: bool, as_json: bool) -> None:
    """``--compose``: run it, print proj chaos's summary and the containers' figures, exit with proj chaos's
    statuses."""
    if other_broker:
        _refuse("--compose runs its own compose cluster and node faults: leave out --cluster, --broker-url, --fault")
    tools.require("chaos", "yaml")  # proj/harness/compose.py reads and writes compose files
    # Here, not at the top: it needs the tooling extra (yaml), checked just above.
    from proj.chaos.compose import ComposeChaos, ComposeSettings
    from proj.chaos.compose import summary as compose_summary

    settings = ComposeSettings(
        tasks=tasks, workers=workers, faults=faults, seed=seed, seconds_per_dot=seconds_per_dot, out=out
    )
    run = ComposeChaos(settings, out=sys.stderr if as_json else sys.stdout)
    run_and_report(run, run.run, as_json, lambda report: [*summary(report), *compose_summary(report)])


def run_and_report(run, carry_out, as_json: bool, lines) -> None:
    """Carry a run out, print its report (JSON, or ``lines(report)``) and exit by the exit-status table.

    ``carry_out()`` returns the report in its JSON form, as report.json holds it.
    """
    # SIGTERM (timeout, docker stop, a CI runner) ends the run like Ctrl+C: everything started is stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = carry_out()
    except ChaosError as exc:
        where = f" (run dir {run.run_dir})" if run.run_dir else ""
        click.echo(f"proj chaos: {exc}{where}", err=True)
        sys.exit(CANNOT_RUN)
    except KeyboardInterrupt:
        click.echo(f"proj chaos: interrupted; what ran is in {run.run_dir}", err=True)
        sys.exit(INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in lines(report):
            click.echo(line)
    sys.exit(OK if report["ok"] else FAILED)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _refuse(line: str) -> None:
    click.echo(f"proj chaos: {line}", err=True)
    sys.exit(CANNOT_RUN)


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f} s"


def summary(report: dict) -> list[str]:
    """The figures, as lines for a terminal."""
    from proj.chaos.watch import describe  # here, not at the top: see chaos() (`proj --help` start-up)

    lat = report["redelivery_latency"]
    q = report.get("queue") or {}
    faults = ", ".join(f"{k} {n}" for k, n in sorted(report["faults"].items())) or "none"
    lines = [
        "",
        f" [x] published {report['published']} (confirmed), completed {report['completed']}",
        f" [x] lost {report['lost']}, unexpected {report['unexpected']}, duplicated {report['duplicated']} "
        f"({report['duplicated_explained']} explained, {report['duplicated_unexplained']} unexplained)",
        f" [x] faults injected {report['faults_total']}: {faults}"
        + (f"; {len(report['faults_skipped'])} skipped" if report["faults_skipped"] else ""),
        f" [x] redelivery latency (fault -> task started again, {lat['count']} tasks): "
        f"p50 {_s(lat['p50'])}, p99 {_s(lat['p99'])}",
        f" [x] throughput {report['throughput']} tasks/s over {report['work_seconds']} s; "
        f"elapsed {report['elapsed']} s",
        f" [x] task_queue: {q.get('ready')} ready, {q.get('unacked')} unacked"
        + (f"; {q['dead_letters']} in the dead-letter queue" if q.get("dead_letters") else ""),
    ]
    starts = report["worker_starts"]
    if starts:
        raced = sum(1 for st in starts if st["raced"])
        lines.append(
            f" [x] worker restarts {report['worker_restarts']}: {raced} raced a full task_queue "
            f"(ready when they said ready: {', '.join(str(st['ready_at_ready']) for st in starts)})"
        )
    w = report["watch"]
    if w:
        lines.append(
            f" [x] held without starting: longest {w['longest_hold_seconds']:.1f} s (bound {w['bound']:g} s, "
            f"{w['asks']} asks of proj_stuck, {w['failed_asks']} failed)"
        )
    if q.get("other_queues"):
        others = ", ".join(f"{name} {n}" for name, n in q["other_queues"].items())
        lines.append(f" [!] messages in other queues: {others}")
    if report.get("broker_restarts"):
        lines.append(f" [*] broker restarts {report['broker_restarts']}")
    if report["republished"]:
        lines.append(f" [*] {report['republished']} publishes retried after a broker error (each may run twice)")
    if report["lost_ids"]:
        lines.append(f" [!] lost: {', '.join(report['lost_ids'])}")
    if report["unexpected_ids"]:
        lines.append(f" [!] unexpected: {', '.join(report['unexpected_ids'])}")
    for dup in report["unexplained"]:
        lines.append(f" [!] unexplained duplicate: {dup['task_id']} done {dup['done']} times")
    if report["mismatched"]:
        lines.append(f" [!] {report['mismatched']} tasks ran with another message than published")
    for held in report["held"]:
        lines.append(f" [!] held: {describe(held, report['stuck_after'])}")
    if report["guard_actions"]:
        lines.append(f" [!] the workers' guards acted {len(report['guard_actions'])} times (nothing lost):")
        lines.extend(f"     {line}" for line in report["guard_actions"])
    for err in report["errors"]:
        lines.append(f" [!] {err}")
    if report.get("publisher_failure"):
        lines.append(f" [!] {report['publisher_failure']}")
    lines.append(f" [*] run dir: {report['run_dir']} (ledger.sqlite, report.json, chaos.log, workers/)")
    if report["ok"]:
        lines.append(" OK: every task accounted for")
    elif report["held"]:
        lines.append(" FAILED: a worker held a message without starting it (see above and report.json)")
    else:
        lines.append(" FAILED: see above and report.json")
    return lines
