"""Task results: ``rpc://`` (the default) sends each result only to the process that sent the task, so
``celery -A proj result ID`` from another shell waits forever; a persistent backend chosen through
``CELERY_RESULT_BACKEND`` serves it to anyone (README, "By hand", "Configuration")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import TIMEOUT

from proj.harness.workers import REPO_ROOT

README = REPO_ROOT / "README.md"


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def test_result_is_read_from_another_shell_with_a_backend_chosen_through_celery_result_backend(
    fresh_queue, start_worker, tmp_path
):
    # Given a worker and a producer that both store results in a file backend (CELERY_RESULT_BACKEND)
    results = tmp_path / "results"
    results.mkdir()
    backend = {"CELERY_RESULT_BACKEND": f"file://{results}"}
    start_worker("w1", fresh_queue.url, env=backend)
    env = {**os.environ, "CELERY_BROKER_URL": fresh_queue.url, **backend}

    # When one process sends a task and exits
    sent = run_python("from proj.tasks import work; print(work.delay('Hello...').id)", env)
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()

    # Then `celery -A proj result ID`, another process, prints its result (3 dots: 3)
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("celery")), "-A", "proj", "result", task_id],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "3"


def test_readme_says_where_rpc_results_go_and_how_to_choose_a_persistent_backend():
    text = README.read_text()
    # The .get() example says the result comes back only to the caller
    example = text[text.index("From Python:") : text.index("Stop a worker with Ctrl+C")]
    assert "work.delay(" in example and ".get(timeout=" in example
    assert re.search(r"only (to )?the (process|caller) that sent", example), example
    # And the limit and the way out are stated where a user meets them
    assert "celery -A proj result" in example and "CELERY_RESULT_BACKEND" in example
    row = next(line for line in text.splitlines() if line.startswith("| `CELERY_RESULT_BACKEND`"))
    assert "only" in row and "persistent" in row


def test_delay_returns_with_its_reply_queue_declared_and_the_result_comes_back(fresh_queue, mgmt, start_worker):
    # Given a producer with the default backend (rpc://, its reply queue declared without waiting)
    from kombu import Connection

    from proj.celery import app
    from proj.tasks import work

    assert app.conf.result_backend.endswith("rpc://")
    reply_queue = app.backend.oid
    mgmt.delete_queue(reply_queue)

    # When .delay() returns (the task confirmed) with no worker running
    with Connection(fresh_queue.url) as conn:
        result = work.apply_async(args=["Answer.."], connection=conn)

        # Then the broker already holds the reply queue: a result published now would not be lost
        assert conn.default_channel.queue_declare(reply_queue, passive=True).queue == reply_queue

        # And once a worker runs the task, the result comes back to this process
        start_worker("w1", fresh_queue.url)
        assert result.get(timeout=TIMEOUT) == 2
