"""``proj queues`` for real: the tutorial's ``rabbitmqctl list_queues name messages_ready
messages_unacknowledged``, read from the session node's management API by the installed command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pika
import pytest
from helpers import TIMEOUT, publish, queue_depth, wait_until

from proj import config
from proj.cli import exits
from proj.cli.queues import METRICS_OFF_NOTE
from proj.rabbit.node import free_port, private_node

PROJ = Path(sys.executable).with_name("proj")
#: A password no output may show.
SECRET = "Qu3ues-s3cret-81f2"


def run_queues(*args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PROJ), "queues", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def queues_env(broker_url: str, management_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROJ_MANAGEMENT_URL"}
    env["CELERY_BROKER_URL"] = broker_url
    if management_url is not None:
        env["PROJ_MANAGEMENT_URL"] = management_url
    return env


@pytest.fixture
def env(fresh_queue) -> dict[str, str]:
    return queues_env(fresh_queue.url, fresh_queue.management_url)


def task_queue_row(env: dict[str, str]) -> dict | None:
    result = run_queues(config.QUEUE_NAME, "--json", env=env)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    return row


def counts(row: dict) -> tuple[int, int, int]:
    return row["messages_ready"], row["messages_unacknowledged"], row["consumers"]


def test_queues_shows_ready_unacked_and_consumers_as_an_aligned_table(env, fresh_queue, start_worker):
    # Given three tasks queued and one worker holding one of them (one long task each: prefetch 1)
    publish(fresh_queue.url, ["Table task " + "." * 600] * 3)
    start_worker("queues-w1", fresh_queue.url)
    wait_until(lambda: counts(task_queue_row(env)) == (2, 1, 1), TIMEOUT, "2 ready, 1 unacked, 1 consumer")

    # When `proj queues` prints its table (again while RabbitMQ's statistics still trail: its unacked
    # count is then marked ~, which tests/test_queues.py checks on its own below)
    def table():
        result = run_queues(env=env)
        assert result.returncode == 0, result.stderr
        header, *rows = [line for line in result.stdout.rstrip("\n").split("\n") if not line.startswith("~ ")]
        row = next(line for line in rows if line.split()[0] == config.QUEUE_NAME)
        return (header, rows) if row.split()[1:] == ["2", "1", "1"] else None

    # Then it has the tutorial's columns, and task_queue's row says 2 ready, 1 unacked, 1 consumer
    header, rows = wait_until(table, TIMEOUT, "task_queue's row: 2 ready, 1 unacked, 1 consumer")
    assert header.split() == ["name", "ready", "unacked", "consumers"]
    # And every row is aligned under the header: names flush left, counts flush right
    ends = [m.end() for m in re.finditer(r"\S+", header)]
    for line in rows:
        assert [m.end() for m in re.finditer(r"\S+", line)][1:] == ends[1:], (header, line)
        assert len(line) == len(header)


def test_queues_json_lists_every_queue_of_the_vhost_with_rabbitmqctls_names(env, fresh_queue):
    # Given two tasks queued and no worker
    publish(fresh_queue.url, ["Json task.", "Json task.."])
    wait_until(lambda: counts(task_queue_row(env)) == (2, 0, 0), TIMEOUT, "2 ready messages")

    # When `proj queues --json` is run
    result = run_queues("--json", env=env)

    # Then it is a JSON list with rabbitmqctl's column names, task_queue among the queues
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    by_name = {row["name"]: row for row in rows}
    assert isinstance(by_name[config.QUEUE_NAME].pop("unacked_may_trail"), bool)
    assert by_name[config.QUEUE_NAME] == {
        "name": config.QUEUE_NAME,
        "messages_ready": 2,
        "messages_unacknowledged": 0,
        "consumers": 0,
    }
    assert [row["name"] for row in rows] == sorted(by_name)


def test_queues_watch_refreshes_every_interval_and_sees_the_queue_change(env, fresh_queue, start_worker):
    # Given one task queued and no worker yet
    publish(fresh_queue.url, ["Watch task " + "." * 600])
    wait_until(lambda: counts(task_queue_row(env)) == (1, 0, 0), TIMEOUT, "1 ready message")

    # When `proj queues --watch` runs while a worker starts and takes the task
    watch = subprocess.Popen(
        [str(PROJ), "queues", config.QUEUE_NAME, "--json", "--watch", "--count", "600", "--interval", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        seen: list[tuple[int, int, int]] = []
        assert watch.stdout is not None
        first = watch.stdout.readline()
        seen.append(counts(json.loads(first)[0]))
        start_worker("watch-w1", fresh_queue.url)
        for line in watch.stdout:
            seen.append(counts(json.loads(line)[0]))
            if seen[-1] == (0, 1, 1):
                break
    finally:
        watch.kill()
        watch.wait(10)

    # Then each refresh printed one JSON line, first with the message ready, later held by the worker
    assert seen[0] == (1, 0, 0)
    assert seen[-1] == (0, 1, 1), seen


def test_queues_watch_stops_after_count_refreshes_with_one_table_each(env, fresh_queue):
    # Given the work queue
    publish(fresh_queue.url, ["Count task."])

    # When the watch is bounded to three refreshes
    result = run_queues(config.QUEUE_NAME, "--watch", "--count", "3", "--interval", "0.2", env=env)

    # Then it prints three tables and exits 0
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("name") == 3
    assert result.stdout.count(config.QUEUE_NAME) == 3


def test_queues_with_an_unreachable_management_api_prints_one_line_and_exits_2(fresh_queue):
    # Given a management URL where nothing listens, with a password in it
    port = free_port(avoid=(15672,))
    env = queues_env(fresh_queue.url, f"http://guest:{SECRET}@127.0.0.1:{port}/api/")

    # When `proj queues` is run
    result = run_queues(env=env)

    # Then one line on stderr says what failed and what to do, exit 2; no traceback, no password
    assert result.returncode == exits.CANNOT_RUN
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("proj queues: cannot reach the management API at ") and f":{port}/api/" in line
    assert "is RabbitMQ running" in line
    assert SECRET not in result.stderr and "Traceback" not in result.stderr


def test_queues_watch_with_the_management_api_unreachable_keeps_saying_so_and_exits_2(fresh_queue):
    # Given a management URL where nothing listens
    env = queues_env(fresh_queue.url, f"http://guest:{SECRET}@127.0.0.1:{free_port(avoid=(15672,))}/api/")

    # When the watch runs two refreshes
    result = run_queues("--watch", "--count", "2", "--interval", "0.1", env=env)

    # Then each refresh says it in one line, and the exit status is 2 (it cannot run)
    assert result.returncode == exits.CANNOT_RUN
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("proj queues: cannot reach") for line in lines), lines
    assert SECRET not in result.stderr + result.stdout


def test_queues_with_a_wrong_password_says_to_check_it_without_printing_it(fresh_queue):
    # Given the node's management API and a wrong password
    env = queues_env(fresh_queue.url, f"http://guest:{SECRET}@127.0.0.1:{fresh_queue.management_port}/api/")

    # When `proj queues` is run
    result = run_queues(env=env)

    # Then one line says the login was refused and what to check, without the password
    assert result.returncode == exits.CANNOT_RUN
    (line,) = result.stderr.strip().splitlines()
    assert "HTTP 401" in line and "check the user and password in PROJ_MANAGEMENT_URL" in line
    assert SECRET not in result.stderr + result.stdout


def test_queues_derives_the_management_url_from_the_broker_url_when_it_is_not_set(fresh_queue):
    # Given only CELERY_BROKER_URL, on a host where no management API answers (TEST-NET-1)
    env = queues_env(f"amqp://guest:{SECRET}@192.0.2.1:5672//", None)

    # When `proj queues` is run
    result = run_queues(env=env)

    # Then it tried the broker's host on port 15672 (the derived URL), said so in one line, exit 2
    assert result.returncode == exits.CANNOT_RUN
    (line,) = result.stderr.strip().splitlines()
    assert "http://192.0.2.1:15672/api/" in line
    assert SECRET not in result.stderr


def test_queues_names_a_missing_queue_and_exits_2(env):
    # When `proj queues` is asked for a queue that does not exist
    result = run_queues("no_such_queue", env=env)

    # Then it says so in one line
    assert result.returncode == exits.CANNOT_RUN
    assert result.stderr.strip() == "proj queues: no queue named no_such_queue in vhost '/' (`proj queues` lists them)"


def test_queues_rejects_a_management_url_that_is_not_http(fresh_queue):
    # Given PROJ_MANAGEMENT_URL without a scheme
    env = queues_env(fresh_queue.url, f"guest:{SECRET}@127.0.0.1:{fresh_queue.management_port}")

    # When `proj queues` is run
    result = run_queues(env=env)

    # Then one line names the variable and shows the expected form, without the password
    assert result.returncode == exits.CANNOT_RUN
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("proj queues: PROJ_MANAGEMENT_URL is not an http(s)://") and "set it like http://" in line
    assert SECRET not in line


# -- Exact counts, Celery's queues left out (issue 11, defect 4) --------------------------------


def test_queues_counts_ready_and_consumers_exactly_right_after_a_publish_and_a_worker_start(
    env, fresh_queue, start_worker
):
    # Given three long tasks just published, no worker
    publish(fresh_queue.url, ["Exact task " + "." * 600] * 3)

    # When `proj queues` runs at once
    row = task_queue_row(env)

    # Then it counts the three as ready, as rabbitmqctl list_queues would, with no consumer
    assert (row["messages_ready"], row["consumers"]) == (3, 0), row

    # And right after a worker is ready (it takes one task, prefetch 1), it counts that consumer
    start_worker("exact-w1", fresh_queue.url)
    row = task_queue_row(env)
    assert row["consumers"] == 1, row
    assert row["messages_ready"] in (2, 3), row  # 3 until the broker has delivered the first one


def test_queues_leaves_out_celerys_own_queues_unless_asked_for_all(env, fresh_queue, mgmt, start_worker, recorder):
    # Given a running worker (its remote-control queue) and an event receiver (its celeryev queue)
    start_worker("internal-w1", fresh_queue.url)

    def internal_queues_listed():
        names = {q["name"] for q in mgmt.queues()}
        pidbox = any(n.endswith(".pidbox") for n in names)
        return pidbox and any(n.startswith("celeryev.") for n in names) and names

    wait_until(internal_queues_listed, what="the worker's pidbox queue and a celeryev queue listed")

    # When `proj queues` runs, and `proj queues --all`
    shown = {row["name"] for row in json.loads(run_queues("--json", env=env).stdout)}
    everything = run_queues("--all", "--json", env=env)

    # Then the first shows task_queue and its dead letters but none of Celery's own queues
    assert {config.QUEUE_NAME, config.DEAD_QUEUE_NAME} <= shown
    assert not [n for n in shown if n.startswith("celeryev.") or n.endswith(".pidbox")], shown
    # And --all shows them too
    assert everything.returncode == 0, everything.stderr
    all_names = {row["name"] for row in json.loads(everything.stdout)}
    assert any(n.startswith("celeryev.") for n in all_names) and any(n.endswith(".pidbox") for n in all_names)


# -- With the management plugin's metrics collection off (RabbitMQ 4.3 deprecates it; issue 21) ------------


@pytest.fixture(scope="module")
def node_without_metrics(tmp_path_factory):
    """A private node whose management plugin collects no statistics: its API lists queues without counts."""
    node = private_node(
        tmp_path_factory.mktemp("rabbitmq-no-metrics"),
        extra_config=("management_agent.disable_metrics_collector = true",),
    ).start()
    try:
        yield node
    finally:
        node.stop()


def test_queues_says_unacked_is_unknown_when_the_broker_collects_no_metrics(node_without_metrics):
    # Given a node with metrics collection off, three messages in task_queue and a consumer holding one unacked
    node = node_without_metrics
    publish(node.url, ["No metrics " + "." * 600] * 3, queue_type="classic")
    connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(config.QUEUE_NAME, lambda *delivery: None)  # never acks
        wait_until(lambda: connection.process_data_events(0.1) or queue_depth(node.url) == 2, what="one delivered")

        # When `proj queues` runs, as JSON and as the table
        env = queues_env(node.url, node.management_url)
        row = task_queue_row(env)
        table = run_queues(env=env)
    finally:
        connection.close()

    # Then ready and consumers are exact, and unacked is unknown (null), not a 0 that looks real
    assert row == {
        "name": config.QUEUE_NAME,
        "messages_ready": 2,
        "messages_unacknowledged": None,
        "consumers": 1,
        "unacked_may_trail": False,
    }
    # And the table shows "?" there, with one line saying why
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if line.split()[0] == config.QUEUE_NAME)
    assert line.split()[1:] == ["2", "?", "1"]
    assert [line for line in table.stdout.splitlines() if "metrics collection is off" in line] == [METRICS_OFF_NOTE]
