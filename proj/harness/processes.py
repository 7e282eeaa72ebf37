"""Processes by PID: is it alive, is it in that group, wait for it to exit, start one in its own group.

Every tool in proj ends only what it started, by PID or by the process group it gave its child
(``start_new_session``), never by name. A zombie (exited, not yet reaped) counts as gone here:
it runs no code, and while it stays unreaped its PID, and so its group's id, cannot be reused.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

#: The processes :func:`spawn` started, so their exit is reaped (no zombies left) and seen.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return not (fields and fields[0] == "Z")


def in_group(pid: int, pgid: int | None) -> bool:
    """Whether ``pid`` runs (not a zombie) in process group ``pgid``: a stale or reused pid is never signalled."""
    if not pgid:
        return False
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z" and int(fields[2]) == pgid


def group_alive(pgid: int | None) -> bool:
    """Whether any process of group ``pgid`` runs (zombies do not count)."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; look for a live member.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def signal_pid(pid: int | None, signum: int) -> bool:
    """Send ``signum`` to ``pid``; False if there is no such process."""
    if not pid:
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def signal_group(pgid: int | None, signum: int) -> bool:
    """Send ``signum`` to every process of group ``pgid``; False if none could be signalled."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_gone(pid: int | None, timeout: float, *, group: bool = False, interval: float = 0.05) -> bool:
    """Wait until ``pid`` (``group``: every process of group ``pid``) has exited; False on timeout.

    Reaps the processes :func:`spawn` started meanwhile, and no other: a caller that waits on a
    child of its own without reaping it keeps its PID (and group id) from being reused.
    """
    if not pid:
        return True
    alive = group_alive if group else pid_alive
    deadline = time.monotonic() + timeout
    while alive(pid):
        reap()
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    reap()
    return True


def children_of(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children (a worker's pool processes), as /proc lists them."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def spawn(argv: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``argv`` in a session (and process group) of its own, its output appended to ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def reap() -> None:
    """Collect the exit status of the processes :func:`spawn` started that have exited."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]
