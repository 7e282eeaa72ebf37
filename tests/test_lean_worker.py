"""``python -m proj.worker``: Celery's worker command for proj, without the rest of Celery's command line in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TIMEOUT, publish

from proj.lean import worker_options

#: Loaded by `celery` for commands a worker never runs: the amqp shell, and Flower's plugin (Tornado).
NOT_NEEDED = ("prompt_toolkit", "click_repl", "flower", "tornado")


def imported(log: str) -> set[str]:
    """Top-level packages the running interpreter imported, from its ``-X importtime`` lines (a process that
    replaced itself with ``exec`` printed two lists, each under its own header: the last one is the running one)."""
    lines = log.split("import time: self [us]")[-1].splitlines()
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines if line.startswith("import time:")}


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("launcher", ["proj.worker", "celery", "celery, PROJ_LEAN_WORKER=0"])
def test_lean_worker_runs_the_tutorial_without_loading_other_commands(fresh_queue, start_worker, launcher):
    # Given a worker started by `python -m proj.worker` or `celery -A proj worker` (as is, or told to stay
    # Celery's own process), imports traced
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    if launcher.endswith("=0"):
        env["PROJ_LEAN_WORKER"] = "0"
    worker = start_worker("lean", fresh_queue.url, wait=False, env=env)
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
    # And the process running it (the one started: `celery -A proj worker` replaced itself, same PID) is
    # `python -m proj.worker` with the same worker options, without what no worker needs in memory
    running, loaded = command_line(worker.pid), imported(worker.log()) & set(NOT_NEEDED)
    if launcher.endswith("=0"):
        assert "proj.worker" not in running, running
        assert loaded, "celery's command line no longer loads these: the lean launcher may be unneeded"
    else:
        assert running[1:3] == ["-m", "proj.worker"] and running[-4:] == worker.argv[-4:], running
        assert loaded == set(), loaded


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["celery", "-A", "proj", "worker", "-n", "w1@%h", "-l", "INFO"], ["-n", "w1@%h", "-l", "INFO"]),
        (["celery", "--app=proj", "-b", "amqp://h//", "--skip-checks", "worker"], []),
        (["celery", "-A", "proj.celery:app", "worker", "-c", "2"], ["-c", "2"]),
        (["celery", "-A", "proj.bench.tuned", "worker"], None),  # another app module: Celery's own process
        (["celery", "-q", "-A", "proj", "worker"], None),  # an option the relaunch would drop
        (["celery", "--workdir", "/srv", "-A", "proj", "worker"], None),
        (["celery", "-A", "proj", "inspect", "ping"], None),  # not the worker
    ],
)
def test_the_relaunch_takes_the_worker_options_of_celery_a_proj_worker_only(argv, options):
    assert worker_options(argv) == options
