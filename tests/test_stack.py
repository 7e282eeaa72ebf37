"""The Procfile stack for real: ``make up`` (honcho start) runs the private node, two workers and Flower;
``new-task`` sends work; one Ctrl+C (SIGINT to the foreground process group, as a terminal sends it) stops
everything, and no process it started is left, the Erlang VM and epmd included.

The stack gets free ports and a temporary data dir through an env file (``make up ENV_FILE=...``), the
way a user overrides ports in ``.env``. Every process seen in the stack's process tree is recorded while
it runs; at the end each must be gone, and no process on the machine may still carry the stack's data
dir in its environment. Teardown SIGKILLs whatever is left, by recorded PID and process group.

A task still running at Ctrl+C is finished and acked: ``make up`` (proj/harness/stack.py) sends SIGTERM to
each worker's main process only (Celery's warm shutdown), and to the broker once the workers are gone;
``honcho start`` would kill the pool process mid-task and the broker at once, print tracebacks, and exit 130.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import TIMEOUT, FlowerProcess, flower_online, queue_depth, wait_until

from proj import config
from proj.harness.workers import LoggedProcess
from proj.rabbit.node import Node, free_port, pid_alive

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
#: A node start (~6 s) plus the workers' connection retries (2 s, then 4 s, ...), on a busy machine.
STACK_READY_TIMEOUT = 180
#: The long task's remaining work, the workers' warm shutdown, then the broker's clean stop, on a busy machine.
STOP_TIMEOUT = 90
FLOWER_USER, FLOWER_PASSWORD = "stack", "St4ck-flower-pw-39ad"
SHORT_MESSAGES = [f"Stack task {n}{'.' * n}" for n in range(1, 5)]
#: 12 s of work at 0.1 s per dot: still running when Ctrl+C comes, finished well within the stop timeout.
LONG_MESSAGE = "Long stack task" + "." * 120


# -- processes -------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, pgid, start time, state) of a process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2]), int(fields[19]), fields[0]


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


class ProcessRecord:
    """Every process ever seen below a root PID, recorded by a background thread, with its start time."""

    def __init__(self, root: int):
        self.root = root
        self.seen: dict[int, tuple[int, int]] = {}  # pid -> (start time, pgid)
        self.cmdlines: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ProcessRecord:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(0.2)

    def scan(self) -> None:
        stats = {pid: stat for pid in all_pids() if (stat := proc_stat(pid))}
        tree = {self.root} if self.root in stats else set()
        grew = True
        while grew:
            children = {pid for pid, (ppid, *_) in stats.items() if ppid in tree} - tree
            grew = bool(children)
            tree |= children
        for pid in tree:
            _, pgid, start, _ = stats[pid]
            if pid not in self.seen:
                self.seen[pid] = (start, pgid)
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    self.cmdlines[pid] = cmd.strip()

    def alive(self) -> dict[int, str]:
        """The recorded processes still running (same PID and start time, not a zombie)."""
        left = {}
        for pid, (start, _) in self.seen.items():
            stat = proc_stat(pid)
            if stat and stat[2] == start and stat[3] != "Z":
                left[pid] = self.cmdlines.get(pid, "?")
        return left

    def kill_all(self) -> None:
        for pid, (start, pgid) in self.seen.items():
            stat = proc_stat(pid)
            if stat and stat[2] == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def processes_with_environment(marker: str) -> dict[int, str]:
    """Live processes whose environment holds ``marker`` (the stack's own data dir setting)."""
    found = {}
    needle = marker.encode()
    for pid in all_pids():
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                stat = proc_stat(pid)
                if stat and stat[3] != "Z":
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return found


# -- the stack -------------------------------------------------------------------------------------


class Stack(LoggedProcess):
    """`make up`, as a terminal's foreground job: its own process group, which Ctrl+C signals as a whole."""

    def __init__(self, tmp_path: Path):
        self.port = free_port(avoid=(5672, 15672, 5555))
        self.management_port = free_port(avoid=(5672, 15672, 5555, self.port))
        self.flower_port = free_port(avoid=(5672, 15672, 5555, self.port, self.management_port))
        self.data_dir = tmp_path / "rabbitmq"
        self.env_file = tmp_path / "stack.env"
        self.settings = {
            "PROJ_BROKER_PORT": str(self.port),
            "PROJ_MANAGEMENT_PORT": str(self.management_port),
            "PROJ_FLOWER_PORT": str(self.flower_port),
            "PROJ_BROKER_DATA_DIR": str(self.data_dir),
            "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
            "PROJ_SECONDS_PER_DOT": "0.1",
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.record: ProcessRecord | None = None
        # What honcho would get from a user's shell: no broker, management or Flower settings of ours.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FLOWER_", "PROJ_")) and k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
        }
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        # Lines reach the log as they are printed (a terminal would get them line by line too).
        env["PYTHONUNBUFFERED"] = "1"
        argv = ["make", "-C", str(REPO_ROOT), "up", f"PROJ_VENV={VENV_BIN.parent}", f"ENV_FILE={self.env_file}"]
        super().__init__(argv, tmp_path / "stack.log", env)

    @property
    def marker(self) -> str:
        return f"PROJ_BROKER_DATA_DIR={self.data_dir}"

    def start(self) -> Stack:
        super().start()
        self.record = ProcessRecord(self.proc.pid).start()
        return self

    def lines_of(self, process: str) -> list[str]:
        """What one Procfile process printed (honcho prefixes each line with "HH:MM:SS name.1 | ")."""
        prefix = re.compile(rf"^\d\d:\d\d:\d\d {re.escape(process)}\.1\s+\| ?(.*)$")
        return [m.group(1) for line in self.log().splitlines() if (m := prefix.match(line))]

    def printed(self, process: str, text: str) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"the stack exited:\n{self.log()[-4000:]}"
        return any(text in line for line in self.lines_of(process))

    def ctrl_c(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)

    def teardown(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.record is not None:
            self.record.stop()
            self.record.kill_all()
        for pid in processes_with_environment(self.marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        Node.from_data_dir(self.data_dir).stop()


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.teardown()


def new_task(stack: Stack, message: str) -> subprocess.CompletedProcess:
    env = dict(stack.env, CELERY_BROKER_URL=stack.url)
    return subprocess.run(
        [str(VENV_BIN / "new-task"), *message.split(" ")],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def proj_queues(stack: Stack) -> dict:
    env = dict(
        stack.env,
        CELERY_BROKER_URL=stack.url,
        PROJ_MANAGEMENT_URL=f"http://guest:guest@127.0.0.1:{stack.management_port}/api/",
    )
    result = subprocess.run(
        [str(VENV_BIN / "proj"), "queues", config.QUEUE_NAME, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def test_make_up_runs_the_stack_and_one_ctrl_c_stops_every_process_it_started(stack):
    # Given `make up` with free ports in its env file
    stack.start()
    for worker in ("worker1", "worker2"):
        wait_until(
            lambda w=worker: stack.printed(w, " [*] Waiting for messages. To exit press CTRL+C"),
            STACK_READY_TIMEOUT,
            f"{worker} ready:\n{stack.log()[-4000:]}",
        )
    flower = FlowerProcess(
        stack.log_path, stack.url, port=stack.flower_port, basic_auth=stack.settings["FLOWER_BASIC_AUTH"]
    )
    wait_until(lambda: flower.get("/api/workers?refresh=1")[0] == 200, STACK_READY_TIMEOUT, "Flower answers")
    hostnames = {f"{w}@{os.uname().nodename}" for w in ("worker1", "worker2")}
    wait_until(lambda: hostnames <= set(flower.get("/api/workers?refresh=1")[1] or {}), TIMEOUT, "Flower sees both")
    # (and its event stream is on, so it sees the tasks from the first: both workers Online)
    wait_until(lambda: hostnames <= flower_online(flower), TIMEOUT, "Flower shows both workers Online")

    # When new-task sends the tutorial's kind of messages
    for message in SHORT_MESSAGES:
        sent = new_task(stack, message)
        assert sent.returncode == 0 and sent.stdout.strip() == f"[x] Sent {message!r}", sent

    # Then the workers run them all, and Flower shows each one succeeded
    def done_in_flower() -> bool:
        status, tasks = flower.get("/api/tasks")
        tasks = tasks.values() if status == 200 and isinstance(tasks, dict) else []
        states = {m: t["state"] for t in tasks for m in SHORT_MESSAGES if repr(m) in (t.get("args") or "")}
        return all(states.get(m) == "SUCCESS" for m in SHORT_MESSAGES)

    wait_until(done_in_flower, TIMEOUT, f"Flower shows the tasks done:\n{stack.log()[-3000:]}")
    received = [line for w in ("worker1", "worker2") for line in stack.lines_of(w) if "[x] Received" in line]
    assert sorted(received) == sorted(f" [x] Received {m!r}" for m in SHORT_MESSAGES)

    # And a long task is running, held by one worker as `proj queues` shows
    assert new_task(stack, LONG_MESSAGE).returncode == 0
    wait_until(
        lambda: any(stack.printed(w, f"[x] Received {LONG_MESSAGE!r}") for w in ("worker1", "worker2")),
        TIMEOUT,
        "the long task started",
    )
    wait_until(lambda: proj_queues(stack)["messages_unacknowledged"] == 1, TIMEOUT, "proj queues: 1 unacked")
    stack.record.scan()
    before = dict(stack.record.seen)
    assert any("beam" in c for c in stack.record.cmdlines.values()), stack.record.cmdlines
    assert any("epmd" in c for c in stack.record.cmdlines.values()), stack.record.cmdlines

    runner = next(w for w in ("worker1", "worker2") if stack.printed(w, f"[x] Received {LONG_MESSAGE!r}"))

    # When one Ctrl+C reaches the stack's process group
    pressed = time.monotonic()
    stack.ctrl_c()
    status = stack.proc.wait(STOP_TIMEOUT)
    make_exited = time.monotonic() - pressed

    # Then every process the stack started is gone, the Erlang VM and epmd included
    def nothing_left() -> bool:
        return not stack.record.alive() and not processes_with_environment(stack.marker)

    wait_until(
        nothing_left,
        STOP_TIMEOUT,
        f"left: {stack.record.alive()} {processes_with_environment(stack.marker)}\n{stack.log()[-3000:]}",
    )
    all_gone = time.monotonic() - pressed
    print(f"\n[stack] {len(before)} processes; make exited {make_exited:.1f} s after Ctrl+C, all gone {all_gone:.1f} s")
    assert not pid_alive(json.loads((stack.data_dir / "proj-broker.json").read_text()).get("epmd_pid"))
    # And each process was stopped like a warm shutdown: the workers first (Celery's warm shutdown), the long
    # task finished on its worker, then the broker; nothing SIGKILLed, no traceback, and make exits 0
    log = stack.log()
    assert "SIGINT received" in log
    for worker in ("worker1", "worker2"):
        assert any("Warm shutdown" in line for line in stack.lines_of(worker)), stack.lines_of(worker)
    lines = stack.lines_of(runner)
    after_ctrl_c = lines[next(i for i, line in enumerate(lines) if "Warm shutdown" in line) :]
    assert any(" [x] Done" in line for line in after_ctrl_c), lines[-20:]
    stopped = re.findall(r"system\s+\| (\w+)\.1 stopped \(rc=(-?\d+)\)", log)
    assert stopped[-1][0] == "broker" and all(rc == "0" for _, rc in stopped), stopped
    assert "SIGKILL" not in log and "Traceback" not in log and "WorkerLostError" not in log, log[-4000:]
    # And the stack's runner exited 0: make reports no error (`make: *** [Makefile:...: up] Error 130` with
    # honcho). make itself then re-raises the SIGINT it got, as GNU make always does: its shell sees 130.
    assert "make: ***" not in log and "Error 130" not in log, log[-3000:]
    assert status in (0, -signal.SIGINT), (status, log[-3000:])
    # And Flower's password never appeared in the stack's output
    assert FLOWER_PASSWORD not in stack.log()

    # When the node starts again from the same data dir
    node = Node.from_data_dir(stack.data_dir).start()
    try:
        # Then the long task's message was acked once done: task_queue is empty, nothing to run twice
        assert queue_depth(node.url) == 0
    finally:
        node.stop()
