"""Real ``celery -A proj worker`` processes, started and ended by PID (for tests, the lab and demos).

Each worker runs in its own process group, so ending it also ends its pool children, and nothing
else is ever signalled. Its output goes to a log file that callers can wait on.

Usage::

    with WorkerProcess("w1", broker_url, log_dir) as w:
        w.wait_ready()
        ...
        w.warm_shutdown()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from proj.console import READY_LINE
from proj.harness.processes import children_of, signal_group

REPO_ROOT = Path(__file__).resolve().parents[2]


class LoggedProcess:
    """A subprocess in its own process group, its output in a log file: ended by PID, never by name."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str], cwd: Path = REPO_ROOT):
        self.argv, self.log_path, self.env, self.cwd = argv, Path(log_path), env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_line(self, text: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if not self.alive():
                raise RuntimeError(
                    f"{self.argv[0]} exited ({self.proc.returncode}) before printing {text!r}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"{self.log_path.stem} did not print {text!r} within {timeout} s:\n{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process and every process in its group (children, orphans included)."""
        if self.proc is None:
            return
        signal_group(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class WorkerProcess(LoggedProcess):
    """One ``celery -A proj worker -n NAME@%h`` subprocess."""

    def __init__(
        self,
        name: str,
        broker_url: str,
        log_dir: Path,
        *,
        management_url: str | None = None,
        concurrency: int | None = 1,
        prefetch_multiplier: int | None = None,
        seconds_per_dot: float | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        loglevel: str = "INFO",
        as_deployed: bool = False,
    ):
        """``as_deployed``: with Mingle and gossip, as the Procfile's and compose's workers run (tests leave
        them out by default: each costs a second at start, and neither is what a test is about)."""
        self.name = name
        self.hostname = f"{name}@{os.uname().nodename}"
        self.broker_url = broker_url
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "proj",
            "worker",
            "-n",
            f"{name}@%h",
            "-l",
            loglevel,
            *(() if as_deployed else ("--without-mingle", "--without-gossip")),
        ]
        if concurrency is not None:  # None: the config's default, as a plain `celery -A proj worker`
            argv += ["-c", str(concurrency)]
        argv += list(extra_args)
        full_env = dict(os.environ)
        full_env.update(env or {})
        if prefetch_multiplier is not None:
            # Not --prefetch-multiplier: Celery's CLI reads 0 (unlimited) as "not given".
            full_env["PROJ_PREFETCH_MULTIPLIER"] = str(prefetch_multiplier)
        full_env["CELERY_BROKER_URL"] = broker_url
        if management_url is not None:
            # Where the worker sets task_queue's dead-letter policy (a private node's API is on a port of its own).
            full_env["PROJ_MANAGEMENT_URL"] = management_url
        if seconds_per_dot is not None:
            full_env["PROJ_SECONDS_PER_DOT"] = str(seconds_per_dot)
        full_env["PYTHONUNBUFFERED"] = "1"
        super().__init__(argv, Path(log_dir) / f"{name}.log", full_env)

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        self.wait_for_line(READY_LINE, timeout)
        return self

    def children(self) -> list[int]:
        """PIDs of the pool processes (the main process's children)."""
        return children_of(self.pid)

    def warm_shutdown(self, timeout: float = 30) -> int:
        """One Ctrl+C: finish the running task, ack it, exit."""
        self.signal(signal.SIGINT)
        return self.wait_exit(timeout)
