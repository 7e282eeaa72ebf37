"""``proj chaos --compose``: proj chaos's count over node faults on the compose cluster (proj/chaos/compose.py).

Usage::

    ./dev.sh images
    proj chaos --compose --tasks 3000 --faults 20 --workers 3
"""

from __future__ import annotations

import json
import signal
import sys

import click

from proj.cli.exits import CANNOT_RUN, FAILED, INTERRUPTED, OK


def chaos_compose(tasks, workers, faults, seed, seconds_per_dot, out, other_broker: bool, as_json: bool) -> None:
    """Run it, print proj chaos's summary and the containers' figures, and exit with proj chaos's statuses."""
    from proj.chaos.compose import ComposeChaos, ComposeSettings
    from proj.chaos.compose import summary as compose_summary
    from proj.chaos.state import ChaosError
    from proj.cli.chaos import _interrupt, _refuse, summary

    if other_broker:
        _refuse("--compose runs its own compose cluster and node faults: leave out --cluster, --broker-url, --fault")
    settings = ComposeSettings(
        tasks=tasks, workers=workers, faults=faults, seed=seed, seconds_per_dot=seconds_per_dot, out=out
    )
    run = ComposeChaos(settings, out=sys.stderr if as_json else sys.stdout)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run.run()
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
        for line in [*summary(report), *compose_summary(report)]:
            click.echo(line)
    sys.exit(OK if report["ok"] else FAILED)
