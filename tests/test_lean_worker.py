"""``python -m proj.worker``: Celery's worker command for proj, without the rest of Celery's command line in memory."""

from __future__ import annotations

import pytest
from helpers import TIMEOUT, publish

#: Loaded by `celery` for commands a worker never runs: the amqp shell, and Flower's plugin (Tornado).
NOT_NEEDED = ("prompt_toolkit", "click_repl", "flower", "tornado")


def imported(log: str) -> set[str]:
    """Top-level packages a process imported, from its ``-X importtime`` lines."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0] for line in log.splitlines() if line.startswith("import time:")
    }


@pytest.mark.parametrize("launcher", ["proj.worker", "celery"])
def test_lean_worker_runs_the_tutorial_without_loading_other_commands(fresh_queue, start_worker, launcher):
    # Given a worker started by `python -m proj.worker` (or, to compare, `celery -A proj worker`), imports traced
    worker = start_worker("lean", fresh_queue.url, wait=False, env={"PYTHONPROFILEIMPORTTIME": "1"})
    if launcher == "proj.worker":
        worker.kill()
        i = worker.argv.index("worker")
        worker.argv[1 : i + 1] = ["-m", "proj.worker"]
        worker.start()
    worker.wait_ready(TIMEOUT)

    # When it gets the tutorial's first message
    publish(fresh_queue.url, ["First message."])

    # Then it runs it as `celery -A proj worker` does
    worker.wait_for_line(" [x] Done", TIMEOUT)
    assert " [x] Received 'First message.'" in worker.log()
    # And only `celery` loaded what no worker needs
    loaded = imported(worker.log()) & set(NOT_NEEDED)
    if launcher == "proj.worker":
        assert loaded == set(), loaded
    else:
        assert loaded, "celery's command line no longer loads these: the lean launcher may be unneeded"
