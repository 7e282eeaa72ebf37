"""``make up``: the Procfile's processes in the foreground; Ctrl+C stops them like a warm shutdown of each part.

Usage::

    python -m proj.harness.stack [--env .env] [--procfile Procfile]

The Procfile is read, expanded and run with honcho's own parser, process runner and printer, as
``honcho start --env .env`` runs it. Only the stop differs. ``honcho start`` stops everything at once:
SIGTERM to each process *group* (a Celery worker's pool process dies mid-task with its parent:
``WorkerLostError``), the broker at the same moment (the workers' acks then fail), SIGKILL five seconds
after the first process exits, and exit status 130 (``make: *** Error 130``). Here the first Ctrl+C (or
SIGTERM) sends SIGTERM to each process but the broker, to its main process only: Celery's warm shutdown,
so a running task finishes and is acked, and Flower exits. Once they are gone the broker gets SIGTERM
and stops cleanly. What still runs after ``--stop-timeout`` seconds, or at a second Ctrl+C, is
SIGKILLed (a running task's message then stays in ``task_queue``: it is never lost). The exit status is
0 when the stop was asked for and every process exited cleanly, else the first failing process's
status (1 if it exited 0 by itself).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import sys
import time
from pathlib import Path

from honcho.environ import expand_processes, parse, parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer

#: Process types stopped only once every other one has exited: the others need it to stop cleanly.
LAST = ("broker",)
#: Seconds the warm shutdown may take (the longest task a stop waits for), as docker compose's stop_grace_period.
STOP_TIMEOUT = 60.0


class Stack(Manager):
    """honcho's Manager, stopping in order: every process's main PID first, the broker last."""

    def __init__(self, printer: Printer, stop_timeout: float = STOP_TIMEOUT):
        super().__init__(printer)
        self.stop_timeout = stop_timeout
        self.signals: list[int] = []
        self.stop_asked = False
        self.stop_began: float | None = None
        self.last_signalled = False
        self.killed = False

    def _type(self, name: str) -> str:
        return name.rsplit(".", 1)[0]

    def _running(self, last: bool | None = None) -> list[str]:
        return [
            name
            for name, p in self._processes.items()
            if p.get("pid") and "returncode" not in p and (last is None or (self._type(name) in LAST) == last)
        ]

    def _term(self, names: list[str]) -> None:
        for name in names:
            pid = self._processes[name]["pid"]
            self._system_print(f"sending SIGTERM to {name} (pid {pid})\n")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)  # the main process only: it stops its own children

    def _kill(self) -> None:
        for name in self._running():
            pid = self._processes[name]["pid"]
            self._system_print(f"sending SIGKILL to {name} (pid {pid})\n")
            self._procmgr.kill(pid)
        self.killed = True

    def _begin_stop(self, why: str) -> None:
        self.stop_began = time.monotonic()
        first = self._running(last=False)
        self._system_print(f"{why}: stopping {', '.join(first) or 'nothing else'} first, then the broker\n")
        self._term(first)

    def loop(self) -> None:
        def on_signal(signum, frame):
            self.signals.append(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self._start()
        handled = 0
        while True:
            try:
                msg = self.events.get(timeout=0.1)
            except queue.Empty:
                msg = None
            if msg is not None:
                if msg.type == "line":
                    self._printer.write(msg)
                elif msg.type == "start":
                    self._processes[msg.name]["pid"] = msg.data["pid"]
                    self._system_print(f"{msg.name} started (pid={msg.data['pid']})\n")
                elif msg.type == "stop":
                    rc = msg.data["returncode"]
                    self._processes[msg.name]["returncode"] = rc
                    self._system_print(f"{msg.name} stopped (rc={rc})\n")
                    if self.returncode is None and (rc != 0 or not self.stop_asked):
                        self.returncode = rc if rc > 0 else 128 - rc if rc < 0 else 1  # -9: 137, as a shell says
                continue  # print everything queued before deciding anything
            if self._all_started() and self._all_stopped():
                break
            if len(self.signals) > handled:
                handled = len(self.signals)
                name = signal.Signals(self.signals[-1]).name
                if handled == 1 and self.stop_began is None:
                    self.stop_asked = True
                    self._begin_stop(f"{name} received")
                elif not self.killed:
                    self._system_print(f"{name} received again: stopping at once\n")
                    self._kill()
            if self.stop_began is None and self._all_started() and self._any_stopped():
                self._begin_stop("a process exited")
            if self.stop_began is not None:
                if not self.last_signalled and not self._running(last=False):
                    self.last_signalled = True
                    self._term(self._running(last=True))
                if not self.killed and time.monotonic() - self.stop_began > self.stop_timeout:
                    self._system_print(f"still running after {self.stop_timeout:g} s\n")
                    self._kill()
        if self.returncode is None:
            self.returncode = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proj.harness.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=".env", help="env file(s), comma-separated, as honcho's [.env]")
    parser.add_argument("--procfile", default="Procfile", help="[Procfile]")
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT, help=f"[{STOP_TIMEOUT:g}] seconds")
    args = parser.parse_args(argv)
    try:
        procfile = parse_procfile(Path(args.procfile).read_text())
    except OSError as exc:
        print(f"stack: cannot read {args.procfile}: {exc.strerror}", file=sys.stderr)
        return 2
    app_env = parse("\n".join(Path(f.strip()).read_text() for f in args.env.split(",") if Path(f.strip()).is_file()))
    stack = Stack(Printer(sys.stdout, colour=sys.stdout.isatty()), stop_timeout=args.stop_timeout)
    for p in expand_processes(procfile.processes, env=app_env):
        stack.add_process(p.name, p.cmd, quiet=p.quiet, env={**os.environ, **p.env})
    stack.loop()
    return stack.returncode


if __name__ == "__main__":
    sys.exit(main())
