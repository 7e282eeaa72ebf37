"""Bad input gets one clear line and a non-zero exit, and loses nothing (README: "Bad input").

Wrong credentials, an unknown vhost and a broker that is down are in tests/test_producer.py; a
port in use in tests/test_broker_cli.py; bad messages in tests/test_dead_letters.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kombu import Connection

from proj import config
from proj.harness.workers import REPO_ROOT
from proj.management import hide_password
from proj.tasks import work

NEW_TASK = Path(sys.executable).with_name("new-task")


def new_task(*words: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(NEW_TASK), *words], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("amqp//missing-colon", "not an AMQP URL"),
        ("http://guest:s3cr3t-pw@127.0.0.1:5672//", "not an AMQP URL"),
        ("amqp://guest:s3cr3t-pw@127.0.0.1:not-a-port//", "port is not a number"),
        ("guest:s3cr3t-pw@127.0.0.1:5672", "not an AMQP URL"),
    ],
)
def test_malformed_broker_url_is_one_line_without_the_password(url, problem):
    out = new_task("Hello...", CELERY_BROKER_URL=url)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("new-task: CELERY_BROKER_URL=") and problem in line
    assert "s3cr3t-pw" not in out.stderr + out.stdout


@pytest.mark.parametrize("name", ["PROJ_SECONDS_PER_DOT", "PROJ_MAX_DELIVERIES", "PROJ_QUEUE_TYPE"])
def test_malformed_setting_is_one_line_for_the_producer_and_the_worker(name):
    value = "sideways"
    out = new_task("Hello...", **{name: value})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert name in out.stderr and "sideways" in out.stderr and "Traceback" not in out.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "worker"],
        cwd=REPO_ROOT,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode != 0 and name in worker.stderr


def test_empty_message_runs_as_no_work_and_new_task_sends_the_tutorials_default(monkeypatch):
    monkeypatch.setattr(config, "SECONDS_PER_DOT", 0)
    assert work.run("") == 0
    # new-task joins its words; none (or only empty ones) means the tutorial's "Hello World!"
    from proj.new_task import main

    sent = []
    monkeypatch.setattr("proj.new_task.publish", sent.append)
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    assert main([""]) == 0 and main([]) == 0
    assert sent == ["Hello World!", "Hello World!"]


def test_message_of_only_dots_is_that_many_units_of_work(monkeypatch):
    slept = []
    monkeypatch.setattr("proj.tasks.time.sleep", slept.append)
    monkeypatch.setattr(config, "SECONDS_PER_DOT", 0.5)
    assert work.run(".....") == 5
    assert slept == [2.5]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://u:pw@h:5672//", "amqp://u:***@h:5672//"),
        ("amqp://u:pw@h1:5672//;amqp://u:pw@h2:5673//", "amqp://u:***@h1:5672//;amqp://u:***@h2:5673//"),
        ("u:pw@h:5672", "u:***@h:5672"),
        ("amqp://h//", "amqp://h//"),
    ],
)
def test_passwords_are_hidden_in_every_form_of_url(url, shown):
    assert hide_password(url) == shown


def test_new_task_help_prints_usage_and_sends_nothing_and_after_a_double_dash_it_is_the_message(fresh_queue):
    # When new-task is asked for help, long and short
    for flag in ("--help", "-h"):
        out = new_task(flag, CELERY_BROKER_URL=fresh_queue.url)

        # Then it prints its usage, sends nothing and exits 0
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("usage: new-task") and "Sent" not in out.stdout

    # When the same word comes after "--"
    out = new_task("--", "--help", CELERY_BROKER_URL=fresh_queue.url)

    # Then it is the message: sent, and the only one in task_queue
    assert out.returncode == 0 and out.stdout.strip() == "[x] Sent '--help'", out
    with Connection(fresh_queue.url) as conn:
        channel = conn.default_channel
        assert channel.queue_declare(config.QUEUE_NAME, passive=True).message_count == 1
        message = channel.basic_get(config.QUEUE_NAME, no_ack=False)
        assert message.headers["task"] == "proj.tasks.work" and json.loads(message.body)[0] == ["--help"]
        channel.basic_reject(message.delivery_tag, requeue=True)


@pytest.mark.parametrize(
    "argv",
    [["queues"], ["dead", "list"], ["dead", "requeue", "--all"], ["lab", "round-robin"], ["demo"]],
    ids=" ".join,
)
def test_every_proj_command_prints_the_line_of_a_malformed_setting(argv):
    # When a proj command runs with a malformed setting (the line `celery` and `new-task` print)
    out = subprocess.run(
        [str(NEW_TASK.with_name("proj")), *argv],
        env={**os.environ, "PROJ_SECONDS_PER_DOT": "abc", "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then it prints that line, not nothing, and exits non-zero without a traceback
    assert out.returncode != 0
    assert "proj: PROJ_SECONDS_PER_DOT='abc' is not a valid float: fix or unset it" in out.stderr.splitlines()
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("case", ["wrong-password", "unknown-vhost"])
def test_worker_refused_by_the_broker_says_so_in_one_line_without_a_traceback(broker, case):
    # Given a broker URL with a wrong password, or a vhost the broker does not have
    url = (
        f"amqp://guest:Wr0ng-pw-71@127.0.0.1:{broker.port}//"
        if case == "wrong-password"
        else f"amqp://guest:guest@127.0.0.1:{broker.port}/no-such-vhost"
    )

    # When a worker starts against it
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "worker", "-n", "refused@%h"],
        cwd=REPO_ROOT,
        env={**os.environ, "CELERY_BROKER_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then it exits non-zero with one line naming the broker (password hidden) and what to check
    output = worker.stdout + worker.stderr
    assert worker.returncode != 0
    (line,) = [line for line in worker.stderr.splitlines() if line.startswith("proj worker:")]
    assert f"127.0.0.1:{broker.port}" in line
    if case == "wrong-password":
        assert "amqp://guest:***@" in line and "check the user name and password in CELERY_BROKER_URL" in line
    else:
        assert "no-such-vhost" in line and "check the vhost in CELERY_BROKER_URL" in line
    # And no traceback, no CRITICAL log, no password
    assert "Traceback" not in output and "CRITICAL" not in output and "Wr0ng-pw-71" not in output


def test_new_task_help_into_a_pipe_closed_early_exits_0_without_a_traceback():
    # When new-task's usage goes to a pipe whose reader is gone (`new-task --help | head -1`, head done)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    read_end, write_end = os.pipe()
    os.close(read_end)
    out = subprocess.run(
        [str(NEW_TASK), "--help"], env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
    )
    os.close(write_end)

    # Then it exits 0 and says nothing on stderr: no BrokenPipeError traceback
    assert out.returncode == 0 and out.stderr == "", out.stderr
