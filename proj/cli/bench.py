"""``proj bench``: the work queue against the tutorial's raw pika worker, side by side, on a private broker.

Usage::

    proj bench                 # every section, under 10 minutes
    proj bench --quick         # every section, smaller, under 2 minutes
    proj bench --json --out results/
    proj bench --cluster 3     # one classic node against a 3-node cluster with a quorum task_queue
    proj bench --soak 600      # memory under a steady load for 10 minutes: RSS slope per 1,000 tasks
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from proj.cli.exits import CANNOT_RUN, INTERRUPTED


@click.command()
@click.option("--quick", is_flag=True, help="Every section with fewer tasks and runs (under 2 minutes).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead of the table.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write bench.json and bench.md into this folder.",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0.05, max=10.0),
    default=1.0,
    show_default=True,
    help="Multiply task counts and durations (smaller for a smoke run, larger for steadier figures).",
)
@click.option(
    "--variants",
    is_flag=True,
    help="Instead: drain throughput of the shipped settings against one change at a time (events, pool, ...).",
)
@click.option(
    "--variant",
    "variant_names",
    multiple=True,
    help="With --variants: only this one (repeatable), beside the default, pika and dramatiq.",
)
@click.option(
    "--profile",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Instead: profile one worker's per-task path with py-spy (pip install py-spy); samples go here.",
)
@click.option(
    "--cluster",
    "cluster_size",
    type=click.IntRange(min=3, max=7),
    default=None,
    help="Instead: one classic node against a cluster of N nodes with a quorum task_queue (publish, drain, memory).",
)
@click.option(
    "--soak",
    "soak_seconds",
    type=click.FloatRange(min=30),
    default=None,
    help="Instead: a steady load for SECONDS on proj's worker and pika's, RSS slope per 1,000 tasks of each.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the broker's data and the workers' logs here (default: a temporary folder, removed at the end).",
)
def bench(
    quick: bool,
    as_json: bool,
    out: Path | None,
    scale: float,
    variants: bool,
    variant_names: tuple[str, ...],
    profile: Path | None,
    cluster_size: int | None,
    soak_seconds: float | None,
    work_dir: Path | None,
) -> None:
    """Measure Celery against the tutorial's pika worker: throughput, latency, dispatch, redelivery, memory."""
    from proj.bench import cluster as cluster_mod
    from proj.bench import profile as profile_mod
    from proj.bench import report
    from proj.bench import soak as soak_mod
    from proj.bench import variants as variants_mod
    from proj.bench.run import Plan, run
    from proj.rabbit.node import BrokerError

    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"cannot write to --out {out}: {exc.strerror}; pick a folder you can write to")
    if sum((variants, profile is not None, cluster_size is not None, soak_seconds is not None)) > 1:
        _fail("--variants, --profile, --cluster and --soak are different runs: pick one")
    if profile is not None:
        try:
            profile_mod.py_spy()
        except RuntimeError as exc:
            _fail(str(exc))
    plan = Plan.make(quick, scale)
    try:
        if soak_seconds is not None:
            figures = soak_mod.run(plan, soak_seconds, work_dir)
        elif cluster_size is not None:
            figures = cluster_mod.run(plan, cluster_size, work_dir)
        elif profile is not None:
            figures = profile_mod.run(plan, profile, work_dir)
        elif variants:
            figures = variants_mod.run(plan, list(variant_names) or None, work_dir=work_dir)
        else:
            figures = run(plan, work_dir)
    except BrokerError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("proj bench: interrupted; every worker and the broker were stopped", err=True)
        sys.exit(INTERRUPTED)
    except (RuntimeError, TimeoutError) as exc:
        _fail(f"a measurement failed: {str(exc).splitlines()[0]}")
    figures["quick"] = quick
    figures["scale"] = scale
    if soak_seconds is not None:
        table = soak_mod.markdown(figures)
    elif cluster_size is not None:
        table = cluster_mod.markdown(figures)
    elif profile is not None:
        table = profile_mod.markdown(figures)
    elif variants:
        table = variants_mod.markdown(figures)
    else:
        figures["targets"] = report.targets(figures)
        table = report.markdown(figures)
    text = json.dumps(figures, indent=2)
    if out is not None:
        (out / "bench.json").write_text(text + "\n")
        (out / "bench.md").write_text(table)
    click.echo(text if as_json else table.rstrip("\n"))


def _fail(message: str) -> None:
    """It cannot run (bad options, no broker, a measurement that broke): one line, exit status 2.

    The bench checks nothing: a missed target is a figure in its table, not a failure."""
    click.echo(f"proj bench: {message}", err=True)
    sys.exit(CANNOT_RUN)
