"""``proj chaos --compose``: proj chaos's count over node faults on the compose cluster (proj/chaos/compose.py).

Usage::

    ./dev.sh images
    proj chaos --compose --tasks 3000 --faults 20 --workers 3
"""

from __future__ import annotations

import sys


def chaos_compose(tasks, workers, faults, seed, seconds_per_dot, out, other_broker: bool, as_json: bool) -> None:
    """Run it, print proj chaos's summary and the containers' figures, and exit with proj chaos's statuses."""
    from proj.cli import tools

    tools.require("chaos", "yaml")  # proj/harness/compose.py reads and writes compose files
    from proj.chaos.compose import ComposeChaos, ComposeSettings
    from proj.chaos.compose import summary as compose_summary
    from proj.cli.chaos import _refuse, run_and_report, summary

    if other_broker:
        _refuse("--compose runs its own compose cluster and node faults: leave out --cluster, --broker-url, --fault")
    settings = ComposeSettings(
        tasks=tasks, workers=workers, faults=faults, seed=seed, seconds_per_dot=seconds_per_dot, out=out
    )
    run = ComposeChaos(settings, out=sys.stderr if as_json else sys.stdout)
    run_and_report(run, run.run, as_json, lambda report: [*summary(report), *compose_summary(report)])
