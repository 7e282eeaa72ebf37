"""One exit-status table for every command (README, "Exit statuses"; proj/cli/exits.py):
0 it did what it was asked, 1 what it checks does not hold, 2 bad usage or it cannot run.

Each command is run for real, as a user runs it: with a malformed setting, with bad usage, against a
broker that is not there; and, where the command checks something, in a state where the check fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TIMEOUT

from proj.cli.exits import CANNOT_RUN, FAILED, OK
from proj.rabbit.node import free_port

BIN = Path(sys.executable).parent

#: Every command, with arguments that would make it do real work if it could run.
COMMANDS = {
    "proj queues": ["proj", "queues"],
    "proj dead list": ["proj", "dead", "list"],
    "proj dead requeue": ["proj", "dead", "requeue", "--all"],
    "proj dead purge": ["proj", "dead", "purge", "--yes"],
    "proj demo": ["proj", "demo"],
    "proj lab": ["proj", "lab", "round-robin"],
    "proj chaos": ["proj", "chaos", "--tasks", "1", "--faults", "0"],
    "proj bench": ["proj", "bench", "--quick"],
    "new-task": ["new-task", "Hello..."],
}


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PROJ_", "CELERY_"))}
    full_env.update(env)
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        stdin=subprocess.DEVNULL,
    )


def nowhere() -> str:
    """A broker URL with nothing listening (a free port, never 5672)."""
    return f"amqp://guest:guest@127.0.0.1:{free_port(avoid=(5672, 15672))}//"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_with_a_malformed_setting_prints_it_in_one_line_and_exits_2(command):
    # When a command runs with a malformed PROJ_* setting
    result = run(COMMANDS[command], PROJ_SECONDS_PER_DOT="abc", CELERY_BROKER_URL=nowhere())

    # Then it exits 2 (cannot run) with the one line that names the setting, and no traceback
    assert result.returncode == CANNOT_RUN, (result.returncode, result.stdout, result.stderr)
    assert "proj: PROJ_SECONDS_PER_DOT='abc' is not a valid float: fix or unset it" in result.stderr.splitlines()
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["proj", "no-such-command"],
        ["proj", "lab", "no-such-scenario"],
        ["proj", "broker", "start", "--port", "not-a-port"],
        ["proj", "chaos", "--fault", "node-kill"],
        ["proj", "bench", "--variants", "--profile", "/tmp/x"],
        ["proj", "dead", "requeue"],
        ["proj", "queues", "--count", "0"],
    ],
    ids=lambda argv: " ".join(argv[:3]),
)
def test_bad_usage_exits_2(argv):
    result = run(argv)
    assert result.returncode == CANNOT_RUN, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "command", ["proj queues", "proj dead list", "proj dead requeue", "proj dead purge", "proj lab", "new-task"]
)
def test_a_broker_that_is_not_there_exits_2(command):
    url = nowhere()
    env = {"CELERY_BROKER_URL": url, "PROJ_PUBLISH_TIMEOUT": "2"}
    argv = COMMANDS[command] + (["--broker-url", url] if command == "proj lab" else [])
    result = run(argv, **env)
    assert result.returncode == CANNOT_RUN, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_broker_commands_exit_2_when_they_cannot_run_and_status_1_when_no_node_runs(tmp_path):
    empty = tmp_path / "empty"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        # A start on a taken port cannot run
        start = run(["proj", "broker", "start", "--data-dir", str(tmp_path / "n"), "--port", port])
        restart = run(["proj", "broker", "restart", "--data-dir", str(tmp_path / "n"), "--port", port])
    # A cluster command without a cluster cannot run
    kill = run(["proj", "broker", "kill-node", "1", "--data-dir", str(empty)])
    start_node = run(["proj", "broker", "start-node", "1", "--data-dir", str(empty)])
    # status checks that a node runs: it does not
    status = run(["proj", "broker", "status", "--data-dir", str(empty)])
    # stop of a node that does not run: nothing runs afterwards, as asked
    stop = run(["proj", "broker", "stop", "--data-dir", str(empty)])

    for result in (start, restart, kill, start_node):
        assert result.returncode == CANNOT_RUN, (result.args, result.stdout, result.stderr)
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert status.returncode == FAILED, status.stdout
    assert stop.returncode == OK, stop.stderr


def test_dead_requeue_of_an_id_that_is_not_there_exits_1(fresh_queue):
    result = run(["proj", "dead", "requeue", "no-such-id"], CELERY_BROKER_URL=fresh_queue.url)
    assert result.returncode == FAILED, (result.stdout, result.stderr)
    assert "no dead letter with id no-such-id" in result.stderr


def test_help_exits_0():
    for argv in (["proj", "--help"], ["proj", "lab", "--help"], ["new-task", "--help"]):
        result = run(argv)
        assert result.returncode == OK, (argv, result.stderr)
        assert result.stdout.lower().startswith("usage:"), result.stdout
