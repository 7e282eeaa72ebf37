"""``proj lab``: each tutorial experiment run end to end by the real command, its record and charts checked.

``proj lab all`` runs once for the module (its own private broker, real workers, one broker restart);
the tests then read what it wrote. Another run is interrupted with Ctrl+C to prove it leaves nothing
behind, and the failure paths (a broker that cannot be started, reached, or restarted) are one line.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import wait_until

from proj.cli.demo import FIVE_MESSAGES
from proj.harness.workers import REPO_ROOT
from proj.lab import record as rec
from proj.lab.scenarios import round_robin_verdict
from proj.rabbit.node import free_port

#: `proj lab all` takes under a minute; leave room for a loaded machine.
LAB_TIMEOUT = 150
SCENARIOS = ["round-robin", "fair-dispatch", "redelivery", "durability"]


class Lab:
    """``python -m proj lab ARGS`` as a subprocess whose output lines are collected as they come."""

    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proj", "lab", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl+C as a terminal delivers it: a test run started in the background by a non-interactive shell
            # (`./.ci/run &`) ignores SIGINT, every child inherits that, and Python then never raises
            # KeyboardInterrupt: the lab ran to its end and the Ctrl+C test failed.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    def finish(self, timeout: float = LAB_TIMEOUT) -> tuple[int, str, str]:
        """Wait for the exit; on a timeout, Ctrl+C it (so it stops its broker and workers) and fail."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.interrupt()
            pytest.fail(f"proj lab did not finish within {timeout} s:\n{self.stdout[-3000:]}")
        self._reader.join(5)
        return self.proc.returncode, self.stdout, self.proc.stderr.read()

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def lab_all(tmp_path_factory):
    """`proj lab all` run once, with its private broker: (exit status, stdout, out dir)."""
    out = tmp_path_factory.mktemp("lab-out")
    status, stdout, stderr = Lab("all", "--out", str(out)).finish()
    assert stderr == "", stderr
    return status, stdout, out


def record(out: Path, scenario: str) -> dict:
    return json.loads((out / f"{scenario}.json").read_text())


def test_lab_all_runs_every_scenario_and_every_verdict_holds(lab_all):
    # Given `proj lab all` has run against its own private broker
    status, stdout, out = lab_all

    # Then it exits 0 with a verdict line per tutorial claim, all holding, and a summary
    assert status == 0, stdout[-3000:]
    verdicts = [line for line in stdout.splitlines() if line.startswith((" [ok]", " [FAIL]"))]
    assert len(verdicts) == 2 * 5, stdout  # five claims, each in its scenario and in the summary
    assert all(line.startswith(" [ok]") for line in verdicts), verdicts
    assert re.search(r"== summary: 4 scenarios in \d+\.\d s", stdout)
    summary = json.loads((out / "all.json").read_text())
    assert summary["holds"] is True
    assert [s["scenario"] for s in summary["scenarios"]] == SCENARIOS
    # And the verdict lines quote the tutorial
    assert "send each message to the next consumer, in sequence" in stdout


def test_round_robin_gives_one_worker_the_odd_messages_and_the_other_the_even(lab_all):
    # Given the round-robin record: two workers with unlimited prefetch, the tutorial's five messages
    result = record(lab_all[2], "round-robin")
    (run,) = result["runs"]
    assert {w["prefetch"] for w in run["workers"]} == {0}

    # Then one worker received first, third and fifth, the other second and fourth, each once
    groups = sorted(result["assignments"].values(), key=len, reverse=True)
    assert groups == [FIVE_MESSAGES[0::2], FIVE_MESSAGES[1::2]]
    assert all(len(t["deliveries"]) == 1 and not t["redelivered"] and t["done"] for t in run["tasks"])
    # And each ran on the worker that received it
    assert all(t["worker"] == t["deliveries"][0]["worker"] for t in run["tasks"])


def test_fair_dispatch_beats_round_robin_and_never_hands_a_busy_worker_a_second_message(lab_all):
    # Given the fair-dispatch record: the same heavy/light workload, unlimited prefetch then prefetch 1
    result = record(lab_all[2], "fair-dispatch")
    unlimited, fair = result["runs"]
    assert (unlimited["prefetch"], fair["prefetch"]) == (0, 1)

    # Then with unlimited prefetch one worker got every heavy message, several at once
    heavy = {t["worker"] for t in unlimited["tasks"] if t["message"].startswith("Heavy")}
    assert len(heavy) == 1
    assert max(unlimited["peak_held"].values()) > 1
    # And with prefetch 1 no worker held more than one message, and the makespan is shorter
    assert set(fair["peak_held"].values()) == {1}
    assert fair["makespan"] < unlimited["makespan"], result["makespans"]
    assert result["makespans"] == {"unlimited": unlimited["makespan"], "prefetch_1": fair["makespan"]}
    # And the lower bound is max(longest task, total work / workers), below both makespans
    dots = [t["dots"] for t in fair["tasks"]]
    spd = result["settings"]["seconds_per_dot"]
    assert result["lower_bound"] == pytest.approx(max(max(dots) * spd, sum(dots) * spd / 2))
    assert result["lower_bound"] <= fair["makespan"] < unlimited["makespan"]
    # And busy plus idle is the makespan for every worker
    for run in (unlimited, fair):
        for host in run["busy"]:
            assert run["busy"][host] + run["idle"][host] == pytest.approx(run["makespan"], abs=0.02)


def test_redelivery_moves_the_killed_workers_message_to_another_worker_flagged_redelivered(lab_all):
    # Given the redelivery record: a long task whose worker got SIGKILL mid-task
    result = record(lab_all[2], "redelivery")
    (run,) = result["runs"]
    (kill,) = run["marks"]
    assert (kill["kind"], kill["signal"], kill["target"]) == ("kill", "SIGKILL", "worker")
    (task,) = run["tasks"]
    first, second = task["deliveries"]

    # Then the first delivery was on the killed worker and ended at the kill, unacknowledged
    assert first["worker"] == kill["worker"]
    assert first["outcome"] == "killed" and first["redelivered"] is False
    assert first["started"] < kill["at"]
    # And the message came back on the other worker, flagged redelivered, and completed there once
    assert second["worker"] != kill["worker"]
    assert second["redelivered"] is True and second["outcome"] == "succeeded"
    assert second["received"] >= kill["at"] - 0.05  # event timestamps come from the workers' clocks
    assert task["redelivered"] is True and task["done"] is True


def test_durability_keeps_the_queue_depth_across_the_broker_restart_then_drains(lab_all):
    # Given the durability record: five messages sent with no worker running, then a broker restart
    result = record(lab_all[2], "durability")
    (run,) = result["runs"]

    # Then task_queue held all five before the restart and after it, and none once drained
    assert result["queue_depth"] == {"before_restart": 5, "after_restart": 5, "after_drain": 0}
    (restart,) = run["marks"]
    assert restart["kind"] == "broker-restart"
    assert restart["stopping_at"] < restart["stopped_at"] < restart["ready_at"]
    # And every message was received only after the broker was back, and completed
    assert sorted(t["message"] for t in run["tasks"]) == sorted(FIVE_MESSAGES)
    for t in run["tasks"]:
        assert t["published"] < restart["stopping_at"]
        assert t["deliveries"][0]["received"] > restart["ready_at"]
        assert t["done"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_chart_is_a_valid_png_and_an_html_page_naming_every_message(lab_all, scenario):
    # Given what `proj lab all` wrote for the scenario
    out = lab_all[2]
    result = record(out, scenario)
    png, page = out / f"{scenario}.png", out / f"{scenario}.html"

    # Then the PNG has the PNG signature and decodes
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 200
    # And the HTML page is self-contained (the chart embedded) and names every message
    text = page.read_text()
    assert text.startswith("<!doctype html>")
    assert "data:image/png;base64," in text and 'src="http' not in text
    for run in result["runs"]:
        for t in run["tasks"]:
            assert html.escape(t["message"]) in text
    # And the JSON names its files
    assert result["files"] == {
        "json": f"{scenario}.json",
        "png": f"{scenario}.png",
        "chart": f"{scenario}-chart.png",
        "html": f"{scenario}.html",
    }
    # And each verdict is stated once on the page: as text, not again in the embedded chart
    with Image.open(png) as full, Image.open(out / f"{scenario}-chart.png") as chart:
        assert chart.size[0] == full.size[0] and chart.size[1] < full.size[1]
    for v in result["verdicts"]:
        assert text.count(html.escape(v["detail"])) == 1


def test_index_states_each_verdict_once_and_shows_the_charts_without_them(lab_all):
    # Given the index page `proj lab all` wrote
    out = lab_all[2]
    index = (out / "index.html").read_text()

    # Then every verdict is on it once, as text, and the charts it shows are those without the verdict lines
    for scenario in SCENARIOS:
        for v in record(out, scenario)["verdicts"]:
            assert index.count(html.escape(v["detail"])) == 1, v["detail"]
        assert f'src="{scenario}-chart.png"' in index and f'src="{scenario}.png"' not in index


def processes_mentioning(*needles: str) -> list[int]:
    """PIDs whose command line or environment contains any of ``needles`` (our own processes only)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = (proc / part).read_bytes()
            except OSError:
                continue
            if any(n.encode() in data for n in needles):
                found.append(int(proc.name))
                break
    return found


def test_ctrl_c_stops_the_workers_and_the_private_broker(tmp_path):
    # Given `proj lab round-robin` at the tutorial's pace, with its private broker and two workers running
    lab = Lab("round-robin", "--real-time", "--out", str(tmp_path))
    try:
        first = wait_until(lambda: lab.lines[:1], 60, "the lab's first line")[0]
        match = re.search(r"127\.0\.0\.1:(\d+) \(data in (.+)\)", first)
        assert match, first
        port, data_dir = match.group(1), match.group(2)
        wait_until(lambda: any("2 workers alive" in line for line in lab.lines), 90, "two workers alive")
        url = f"@127.0.0.1:{port}//"
        assert processes_mentioning(data_dir) and len(processes_mentioning(url)) >= 2
    finally:
        # When it gets Ctrl+C mid-run
        lab.interrupt()

    # Then it says so and exits 130
    assert lab.proc.returncode == 130, lab.stdout
    assert " [*] Interrupted: stopping the workers and the broker" in lab.stdout
    # And no process of its broker (node, epmd) or of its workers is left, and the data dir is gone
    assert processes_mentioning(data_dir, url) == []
    assert not Path(data_dir).exists()


def test_durability_with_an_existing_broker_says_it_cannot_restart_it(tmp_path):
    # When durability is asked of a broker the lab did not start
    status, stdout, stderr = Lab(
        "durability", "--broker-url", f"amqp://guest:guest@127.0.0.1:{free_port()}//", "--out", str(tmp_path)
    ).finish(30)

    # Then it refuses in one line, exit 2 (cannot run), before touching anything
    assert status == 2
    assert stdout == ""
    assert stderr.splitlines() == [
        "proj lab: durability restarts the broker, and the lab only restarts a broker it started itself: "
        "run it without --broker-url"
    ]


def test_unreachable_broker_is_one_line_and_exit_2(tmp_path):
    # When the lab is pointed at a port nothing listens on
    status, stdout, stderr = Lab(
        "all", "--broker-url", f"amqp://guest:secret@127.0.0.1:{free_port()}//", "--out", str(tmp_path)
    ).finish(60)

    # Then one line says what failed and what to do, without the password; exit 2 (cannot run)
    assert status == 2
    (line,) = stderr.splitlines()
    assert line.startswith("proj lab: cannot reach the broker at amqp://guest:***@127.0.0.1:")
    assert "connection refused" in line and "secret" not in line
    assert "Traceback" not in stdout + stderr


def test_broker_that_cannot_be_started_is_one_line_and_exit_2(tmp_path):
    # Given no rabbitmq-server where PROJ_RABBITMQ_BIN points
    # When the lab tries to start its private broker
    status, stdout, stderr = Lab(
        "round-robin", "--out", str(tmp_path / "out"), env={"PROJ_RABBITMQ_BIN": str(tmp_path)}
    ).finish(60)

    # Then one line, exit 2 (cannot run)
    assert status == 2
    (line,) = stderr.splitlines()
    assert line.startswith("proj lab: could not start a private RabbitMQ: rabbitmq-server is not in PROJ_RABBITMQ_BIN")
    assert "Traceback" not in stdout + stderr


def test_round_robin_verdict_does_not_hold_when_one_worker_gets_every_message():
    # Given a record in which one of two workers received all five messages
    def delivery(host, at):
        return {
            "worker": host,
            "received": at,
            "started": at,
            "finished": at + 1,
            "outcome": "succeeded",
            "redelivered": False,
        }

    run = {
        "workers": [{"hostname": "w1@h"}, {"hostname": "w2@h"}],
        "tasks": [
            {"message": m, "published": float(i), "deliveries": [delivery("w1@h", float(i))]}
            for i, m in enumerate(FIVE_MESSAGES)
        ],
    }

    # Then the verdict says it does not hold, with the numbers
    verdict = round_robin_verdict(run, FIVE_MESSAGES)
    assert verdict["holds"] is False
    assert verdict["detail"].startswith("w1 got 'First message.'")
    assert verdict["detail"].endswith("w2 got nothing (5 and 0 of 5; each delivered once)")
    assert rec.received_by(run) == {"w1@h": FIVE_MESSAGES, "w2@h": []}


def test_labels_of_short_bars_side_by_side_at_the_right_edge_never_overlap_nor_cross_a_leader():
    # Given the drained tasks of the durability chart: four short bars side by side at the right edge of a
    # 17 s axis, each too short for its label, and a fifth on the same lane
    from proj.lab.chart import _place_labels, _text_width_px

    x_min, x_max, px_per_s = -0.3, 17.2, 1100 / 17.5
    starts = [15.2, 15.3, 15.5, 15.8, 16.3]
    bars = [{"x0": x0, "x1": x0 + 0.1 * n, "label": f"Message {n}" + "." * n} for n, x0 in enumerate(starts, start=1)]

    # When their labels are placed
    rows = _place_labels(bars, px_per_s, x_centre=(x_min + x_max) / 2)

    # Then no two labels on one row overlap, none runs past the chart's edges, and no bar's leader line
    # (from the bar up to its label's row) crosses the label of another bar
    spans = []
    for b in bars:
        mid, width = (b["x0"] + b["x1"]) / 2, (_text_width_px(b["label"]) + 6) / px_per_s
        assert 0 <= b["row"] < rows
        left = mid - width if b["align"] == "right" else mid
        spans.append((b["row"], left, left + width, mid))
    for row, left, right, mid in spans:
        assert x_min <= left and right <= x_max
        for other_row, other_left, other_right, _ in spans:
            if (other_row, other_left) != (row, left) and other_row == row:
                assert right <= other_left or left >= other_right
            if other_row < row:  # this leader passes through the lower rows
                assert not other_left < mid < other_right
