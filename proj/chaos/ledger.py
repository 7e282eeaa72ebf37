"""A durable ledger of task executions, for counting every task under faults (`proj chaos`).

A worker started with ``--include proj.chaos.ledger_hook`` and ``PROJ_LEDGER`` naming a SQLite file
writes one row when ``proj.tasks.work`` starts a message and one when it finishes it, committed before
the task returns (and so before the ack); the task itself knows nothing of it. Many worker processes
write to the same file; SQLite's WAL mode and a busy timeout serialise them.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time

from proj import config

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    task_id TEXT NOT NULL,
    message TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('start', 'done')),
    redelivered INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_task ON executions (task_id);
"""

_connections: dict[str, sqlite3.Connection] = {}


def connect(path: str) -> sqlite3.Connection:
    """One connection per process, thread and file (a forked pool child, or a task thread, opens its own)."""
    key = f"{os.getpid()}:{threading.get_ident()}:{path}"
    conn = _connections.get(key)
    if conn is None:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        _connections[key] = conn
    return conn


def record(task_id: str, message: str, event: str, redelivered: bool, path: str | None = None) -> None:
    path = path or config.LEDGER
    if not path:
        return
    connect(path).execute(
        "INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?)",
        (task_id, message, event, int(redelivered), socket.gethostname(), os.getpid(), time.time()),
    )


def rows(path: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path, timeout=60)
    conn.row_factory = sqlite3.Row
    try:
        conn.executescript(SCHEMA)
        return conn.execute("SELECT * FROM executions ORDER BY at").fetchall()
    finally:
        conn.close()


#: The worker module that writes the rows (proj/chaos/ledger_hook.py), and the worker option that loads it:
#: every worker whose tasks a ledger counts runs ``celery -A proj worker ... --include proj.chaos.ledger_hook``.
HOOK = "proj.chaos.ledger_hook"
WORKER_ARGS = ("--include", HOOK)
