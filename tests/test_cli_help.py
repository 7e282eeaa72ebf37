"""The help a new user reads: whole summaries, every option explained, the same words for the same thing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJ = Path(sys.executable).with_name("proj")


def help_of(*argv: str) -> str:
    result = subprocess.run(
        [str(PROJ), *argv, "--help"],
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("group", [(), ("broker",)], ids=["proj", "proj broker"])
def test_command_lists_show_each_summary_whole_not_cut_at_80_columns(group):
    text = help_of(*group)
    commands = text[text.index("Commands:") :]
    assert "..." not in commands, commands
    if not group:
        assert "throughput, latency, dispatch, redelivery, memory." in " ".join(commands.split())


@pytest.mark.parametrize("command", ["stop", "status"])
def test_cluster_option_of_stop_and_status_names_no_option_they_lack(command):
    text = " ".join(help_of("broker", command).split())
    cluster_help = text[text.index("--cluster") :]
    assert "--port" not in cluster_help and "--management-port" not in cluster_help, cluster_help
    assert "--port" not in text


def test_every_option_of_proj_demo_is_explained():
    text = help_of("demo")
    assert re.search(r"--workers INTEGER RANGE\s+\S", text) and "[default: 2; 1<=x<=8]" in text
    workers = " ".join(text[text.index("--workers") : text.index("-h, --help")].split())
    assert "round-robin" in workers, workers


@pytest.mark.parametrize("command", ["lab", "chaos"])
def test_broker_url_is_a_url_in_every_command(command):
    assert "--broker-url URL" in help_of(command)


def test_queues_help_lists_count():
    assert "--count" in help_of("queues")
