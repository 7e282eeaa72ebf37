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

READY_LINE = " [*] Waiting for messages. To exit press CTRL+C"
REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One ``celery -A proj worker -n NAME@%h`` subprocess."""

    def __init__(
        self,
        name: str,
        broker_url: str,
        log_dir: Path,
        *,
        concurrency: int | None = 1,
        prefetch_multiplier: int | None = None,
        seconds_per_dot: float | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        loglevel: str = "INFO",
    ):
        self.name = name
        self.hostname = f"{name}@{os.uname().nodename}"
        self.broker_url = broker_url
        self.log_path = Path(log_dir) / f"{name}.log"
        self.argv = [
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
            "--without-mingle",
            "--without-gossip",
        ]
        if concurrency is not None:  # None: the config's default, as a plain `celery -A proj worker`
            self.argv += ["-c", str(concurrency)]
        self.argv += list(extra_args)
        self.env = dict(os.environ)
        self.env.update(env or {})
        if prefetch_multiplier is not None:
            # Not --prefetch-multiplier: Celery's CLI reads 0 (unlimited) as "not given".
            self.env["PROJ_PREFETCH_MULTIPLIER"] = str(prefetch_multiplier)
        self.env["CELERY_BROKER_URL"] = broker_url
        if seconds_per_dot is not None:
            self.env["PROJ_SECONDS_PER_DOT"] = str(seconds_per_dot)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> WorkerProcess:
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
                    f"worker {self.name} exited ({self.proc.returncode}) before printing "
                    f"{text!r}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} did not print {text!r} within {timeout} s:\n{self.log()[-3000:]}")

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        self.wait_for_line(READY_LINE, timeout)
        return self

    def children(self) -> list[int]:
        """PIDs of the pool processes (the main process's children)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def warm_shutdown(self, timeout: float = 30) -> int:
        """One Ctrl+C: finish the running task, ack it, exit."""
        self.signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL the worker and every process in its group (pool children, orphans included)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
