"""Flower for real: ``celery -A proj flower`` (with this repository's flowerconfig.py) against the session's
RabbitMQ node and two real workers, read through its REST API and in a real headless Chromium.

One scenario per module (starting Flower, two workers and a browser costs seconds each): six short tasks
that finish, then four long ones that keep both workers busy, so ``task_queue`` holds two unacknowledged
and two ready messages while the tests look. Every process is ended by process group at teardown.

Screenshots go to the test's tmp dir, and also to ``$PROJ_SCREENSHOT_DIR`` when that is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    FLOWER_PASSWORD,
    FLOWER_USER,
    SECONDS_PER_DOT,
    TIMEOUT,
    FlowerProcess,
    flower_online,
    publish,
    wait_until,
)

from proj import config
from proj.harness.workers import WorkerProcess
from proj.management import Management
from proj.rabbit.node import Node

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's chromium as root in a container: no sandbox, no GPU, nothing fetched from the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Short tasks that finish while the tests watch; their dots are their number.
SHORT_MESSAGES = [f"Flower task {n}{'.' * n}" for n in range(1, 7)]
#: Long tasks that hold both workers (one message each, prefetch 1) while the tests look.
LONG_MESSAGES = [f"Long task {n}{'.' * 600}" for n in range(1, 5)]
#: Pages can take a while on a loaded machine: their data arrives by ajax after the page loads.
PAGE_TIMEOUT_MS = 30_000


# -- a real Flower ---------------------------------------------------------------------------------


# -- the scenario ----------------------------------------------------------------------------------


class Scenario:
    """What the module's tests look at: Flower, two busy workers, and what happened before."""

    def __init__(self, flower: FlowerProcess, workers: list[WorkerProcess], short_ids: list[str]):
        self.flower = flower
        self.workers = workers
        self.short_ids = short_ids
        self.counts_before_workers: dict | None = None
        self.counts_while_busy: dict | None = None


def flower_queue(flower: FlowerProcess, name: str = config.QUEUE_NAME) -> dict | None:
    """The queue as Flower's /api/queues/length reports it (from RabbitMQ's management API)."""
    status, body = flower.get("/api/queues/length")
    if status != 200 or not isinstance(body, dict):
        return None
    return next((q for q in body.get("active_queues", []) if q.get("name") == name), None)


def has_counts(flower: FlowerProcess, ready: int, unacked: int, consumers: int | None = None) -> dict | None:
    """The queue once Flower shows these counts (RabbitMQ's statistics move one figure at a time)."""
    queue = flower_queue(flower)
    if queue and (queue.get("messages_ready"), queue.get("messages_unacknowledged")) == (ready, unacked):
        if consumers is None or queue.get("consumers") == consumers:
            return queue
    return None


@pytest.fixture(scope="module")
def scenario(broker: Node, tmp_path_factory) -> Iterator[Scenario]:
    logs = tmp_path_factory.mktemp("flower")
    Management(broker.management_url).delete_queue(config.QUEUE_NAME)
    flower = FlowerProcess(logs / "flower.log", broker.url, management_url=broker.management_url)
    workers = [
        WorkerProcess(name, broker.url, logs, seconds_per_dot=SECONDS_PER_DOT) for name in ("flower-w1", "flower-w2")
    ]
    try:
        # Given Flower, and the work queue holding the short tasks before any worker runs
        flower.start().wait_ready()
        short_ids = publish(broker.url, SHORT_MESSAGES)
        run = Scenario(flower, workers, short_ids)
        run.counts_before_workers = wait_until(
            lambda: has_counts(flower, ready=len(SHORT_MESSAGES), unacked=0), TIMEOUT, "Flower sees 6 ready messages"
        )
        # When two workers run them, then take two of four long tasks
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready(TIMEOUT)
        wait_until(
            lambda: all_succeeded(flower, short_ids),
            TIMEOUT,
            f"Flower shows the short tasks done:\n{flower.log()[-2000:]}",
        )
        publish(broker.url, LONG_MESSAGES)
        run.counts_while_busy = wait_until(
            lambda: has_counts(flower, ready=2, unacked=2, consumers=2),
            TIMEOUT,
            "Flower sees 2 ready and 2 unacked messages, 2 consumers",
        )
        yield run
    finally:
        for worker in workers:
            worker.kill()
        flower.stop()
        Management(broker.management_url).delete_queue(config.QUEUE_NAME)


def flower_tasks(flower: FlowerProcess) -> dict:
    status, body = flower.get("/api/tasks")
    return body if status == 200 and isinstance(body, dict) else {}


def all_succeeded(flower: FlowerProcess, ids: list[str]) -> bool:
    tasks = flower_tasks(flower)
    return all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids)


# -- the REST API ----------------------------------------------------------------------------------


def test_flower_refreshing_its_workers_on_a_busy_machine_costs_no_worker_its_connection(scenario):
    # Given both workers each holding a long task, on a machine kept busy by three spinning processes,
    # and no remote-control command sent to them yet (the first one they answer declares the reply
    # exchange: this test comes first in the module)
    from proj.celery import app

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        # When Flower refreshes its workers again and again (each refresh: eight inspect commands at once)
        for _ in range(10):
            status, body = scenario.flower.get("/api/workers?refresh=1")
            assert status == 200, body
        # Then, for the next 12 s (three of Celery's 4 s liveness windows), Flower keeps seeing both
        # workers online: their event loops keep running their timers (worker heartbeats, AMQP
        # heartbeats) and are not stuck waiting inside a reply
        names = {w.hostname for w in scenario.workers}
        watch_until = time.monotonic() + 12
        while time.monotonic() < watch_until:
            online = flower_online(scenario.flower)
            assert online == names, f"online in Flower: {sorted(online)}; {scenario.flower.get('/workers?json=1')}"
            time.sleep(0.5)
        replies = app.control.ping(destination=sorted(names), timeout=2.0)
        assert {name for reply in replies for name in reply} == names, replies
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    # And none lost its broker connection, so the long tasks they hold were not redelivered
    for worker in scenario.workers:
        assert "Connection to broker lost" not in worker.log(), worker.log()[-2000:]
    queue = flower_queue(scenario.flower)
    assert (queue["messages_ready"], queue["messages_unacknowledged"], queue["consumers"]) == (2, 2, 2)


def test_flower_api_lists_both_running_workers(scenario):
    # Given two workers consuming task_queue
    expected = {w.hostname for w in scenario.workers}

    # When Flower's workers API is asked (refresh: a fresh inspect broadcast)
    def listed() -> set[str]:
        status, body = scenario.flower.get("/api/workers?refresh=1")
        return expected & set(body) if status == 200 and isinstance(body, dict) else set()

    # Then both workers are there
    assert wait_until(lambda: listed() == expected, TIMEOUT, "both workers in /api/workers") is True


def test_flower_api_shows_every_task_with_its_final_state_and_worker(scenario):
    # Given the six short tasks, all run
    # When Flower's tasks API is read
    tasks = flower_tasks(scenario.flower)

    # Then each is there, succeeded, with its message and the worker that ran it
    hostnames = {w.hostname for w in scenario.workers}
    for task_id, message in zip(scenario.short_ids, SHORT_MESSAGES, strict=True):
        task = tasks[task_id]
        assert task["state"] == "SUCCESS", task
        assert task["name"] == "proj.tasks.work"
        assert message in task["args"]
        assert task["worker"] in hostnames
        assert task["result"] == str(message.count("."))


def test_flower_api_shows_the_running_tasks_as_started_while_they_run(scenario):
    # Given two of the 60 s tasks running, one on each worker (the default pool: each in a task thread)
    def long_tasks(state: str) -> list[dict]:
        tasks = flower_tasks(scenario.flower).values()
        return [t for t in tasks if t.get("state") == state and "Long task" in str(t.get("args"))]

    # When Flower's tasks API is read
    started = wait_until(lambda: len(long_tasks("STARTED")) == 2 and long_tasks("STARTED"), TIMEOUT, "2 STARTED")

    # Then it shows both STARTED, each on its own worker, while neither has finished
    assert {t["worker"] for t in started} == {w.hostname for w in scenario.workers}
    assert long_tasks("SUCCESS") == [] and all(w.alive() for w in scenario.workers)


def test_flower_api_shows_task_queue_ready_and_unacknowledged_counts(scenario):
    # Given the short tasks queued before any worker ran, then two workers each holding one long task
    before, busy = scenario.counts_before_workers, scenario.counts_while_busy

    # Then Flower's queue API showed them as RabbitMQ counts them
    assert (before["messages_ready"], before["messages_unacknowledged"]) == (len(SHORT_MESSAGES), 0)
    assert (busy["messages_ready"], busy["messages_unacknowledged"], busy["consumers"]) == (2, 2, 2)
    # And it still does: the long tasks keep both workers busy
    queue = flower_queue(scenario.flower)
    assert (queue["messages_ready"], queue["messages_unacknowledged"]) == (2, 2)


@pytest.mark.parametrize("credentials", [None, f"{FLOWER_USER}:wrong-password"], ids=["none", "wrong"])
@pytest.mark.parametrize("path", ["/api/workers", "/api/tasks", "/api/queues/length", "/", "/broker"])
def test_flower_refuses_a_request_without_the_right_credentials_with_401(scenario, credentials, path):
    # Given Flower started with FLOWER_BASIC_AUTH
    # When a page or API is asked for without credentials, or with a wrong password
    status, _ = scenario.flower.get(path, auth=credentials or False)

    # Then Flower answers 401 Unauthorized
    assert status == 401


# -- a real browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_context(scenario):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: `apt-get install chromium` (./dev.sh test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                http_credentials={"username": FLOWER_USER, "password": FLOWER_PASSWORD},
                viewport={"width": 1400, "height": 900},
            )
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            yield context
            context.close()
        finally:
            browser.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("PROJ_SCREENSHOT_DIR"):
        target = Path(os.environ["PROJ_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_flower_dashboard_in_chromium_shows_both_workers_online(scenario, browser_context, tmp_path):
    from playwright.sync_api import expect

    # Given Flower's dashboard in a real browser
    page = browser_context.new_page()
    page.goto(scenario.flower.url + "/")

    # Then its workers table lists both workers, online (the table refreshes by ajax)
    table = page.locator("#workers-table")
    for worker in scenario.workers:
        row = table.locator("tbody tr", has_text=worker.hostname)
        expect(row).to_be_visible()
        expect(row).to_contain_text("Online")
    assert screenshot(page, tmp_path, "flower-dashboard.png").stat().st_size > 0


def test_flower_tasks_page_in_chromium_shows_a_finished_task(scenario, browser_context, tmp_path):
    from playwright.sync_api import expect

    # Given Flower's tasks page in a real browser
    page = browser_context.new_page()
    page.goto(scenario.flower.url + "/tasks")

    # Then the task table (loaded by ajax) shows a short task, succeeded
    task_id = scenario.short_ids[-1]
    row = page.locator("#tasks-table tbody tr", has_text=task_id)
    expect(row).to_be_visible()
    expect(row).to_contain_text("SUCCESS")
    expect(row).to_contain_text("proj.tasks.work")
    assert screenshot(page, tmp_path, "flower-tasks.png").stat().st_size > 0


def test_flower_broker_page_in_chromium_shows_task_queue_ready_and_unacked(scenario, browser_context, tmp_path):
    from playwright.sync_api import expect

    # Given Flower's broker page in a real browser, both workers busy with a long task each
    page = browser_context.new_page()
    page.goto(scenario.flower.url + "/broker")

    # Then task_queue has its row: 4 messages, 2 unacked, 2 ready, 2 consumers
    row = page.locator("#queue-table tbody tr", has_text=config.QUEUE_NAME).first
    expect(row).to_be_visible()
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    assert cells[:5] == [config.QUEUE_NAME, "4", "2", "2", "2"], cells
    # And the broker's URL shown there has no password
    expect(page.locator(".broker-url")).not_to_contain_text(":guest@")
    assert screenshot(page, tmp_path, "flower-broker.png").stat().st_size > 0


# -- refusing to start -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("basic_auth", "expected"),
    [(None, "without a password"), ("just-a-user", "is not user:password")],
    ids=["no-auth", "malformed-auth"],
)
def test_flower_refuses_to_listen_beyond_the_loopback_without_a_password(broker, tmp_path, basic_auth, expected):
    # Given Flower asked to listen on every interface, with no (or malformed) FLOWER_BASIC_AUTH
    flower = FlowerProcess(tmp_path / "flower.log", broker.url, basic_auth=basic_auth, address="0.0.0.0")

    # When it starts
    try:
        flower.start()
        code = flower.proc.wait(TIMEOUT)
    finally:
        flower.stop()
    output = flower.log()

    # Then it exits non-zero with one line saying what to set, and never listened
    assert code != 0
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flower: ") and expected in lines[0], output
    assert "FLOWER_BASIC_AUTH" in lines[0] and "Traceback" not in output
    assert "Visit me" not in output
