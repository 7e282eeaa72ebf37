"""``proj health``: a worker holding a message it does not run, or not answering, is unhealthy.

Real workers on the session's broker: a healthy one, a test build whose pool never runs the message it
holds (tests/stuck_build.py, its guard set far away so it stays stuck), and one whose main process is
stopped. One line either way; exit 0 healthy, 1 unhealthy, 2 cannot ask.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import TIMEOUT, publish, wait_until
from stuck_build import build_worker

from proj import config
from proj.harness.workers import REPO_ROOT


def proj_health(url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CELERY_BROKER_URL=url)
    return subprocess.run(
        [sys.executable, "-m", "proj", "health", "--timeout", "3", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def stuck_worker(fresh_queue, tmp_path):
    worker = build_worker(
        "stuck", fresh_queue.url, tmp_path / "workers", "swallow-first-job", env={"PROJ_STUCK_AFTER": "600"}
    ).start()
    try:
        yield worker.wait_ready(TIMEOUT)
    finally:
        worker.kill()


def test_a_worker_that_runs_what_it_holds_is_healthy(fresh_queue, start_worker):
    # Given a worker
    worker = start_worker("fine", fresh_queue.url)

    # When its health is asked for
    result = proj_health(fresh_queue.url, "--worker", worker.hostname)

    # Then it is healthy, in one line
    assert result.returncode == 0, result
    assert worker.hostname in one_line(result) and "healthy" in one_line(result)


def test_a_worker_holding_a_message_it_does_not_run_turns_unhealthy(fresh_queue, mgmt, stuck_worker):
    # Given a worker whose pool never runs the first message, healthy while it holds nothing
    assert proj_health(fresh_queue.url, "--worker", stuck_worker.hostname).returncode == 0

    # When it reserves a message and does not start it
    (task_id,) = publish(fresh_queue.url, ["Stuck."])
    stuck_worker.wait_for_line("the pool swallowed a job", TIMEOUT)

    # Then it turns unhealthy once the message has waited longer than the bound, naming the task
    def unhealthy():
        result = proj_health(fresh_queue.url, "--worker", stuck_worker.hostname, "--stuck-after", "1")
        return result if result.returncode == 1 else None

    result = wait_until(unhealthy, TIMEOUT, "proj health says unhealthy")
    line = one_line(result)
    assert task_id in line and "without running it" in line
    # and nothing was lost: the broker still holds the message for it
    wait_until(lambda: mgmt.counts(config.QUEUE_NAME) == (0, 1), TIMEOUT, "the message unacked on the broker")


def test_a_worker_whose_main_process_does_not_answer_is_unhealthy(fresh_queue, start_worker):
    # Given a worker whose main process is stopped
    worker = start_worker("frozen", fresh_queue.url)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        # When its health is asked for
        result = proj_health(fresh_queue.url, "--worker", worker.hostname)
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    # Then it is unhealthy: it did not answer
    assert result.returncode == 1, result
    assert "did not answer" in one_line(result)


def test_health_says_it_cannot_run_without_a_broker(tmp_path):
    from proj.rabbit.node import free_port

    result = proj_health(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    assert result.returncode == 2
    assert one_line(result).startswith("proj health: cannot reach the broker")


def test_celery_inspect_knows_the_guards_command_and_the_worker_answers_it(fresh_queue, start_worker):
    # Given a worker
    worker = start_worker("asked", fresh_queue.url)

    # When Celery's own CLI asks it what it holds without running it
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "inspect", "proj_stuck", "-d", worker.hostname, "-j"],
        cwd=REPO_ROOT,
        env=dict(os.environ, CELERY_BROKER_URL=fresh_queue.url),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    # Then the command is known to the client and the worker answers: nothing held
    assert result.returncode == 0, result.stderr
    import json

    answer = json.loads(result.stdout)[worker.hostname]
    assert answer["held"] == [] and answer["stuck_after"] == config.STUCK_AFTER
