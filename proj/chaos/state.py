"""What every part of a chaos run shares: its settings, its identity, its console, and what each part saw.

The publisher, the monitor, the fault injector and the worker restarters run in threads of their
own; each writes its own part of :class:`RunState` (under ``lock`` where another thread reads it)
and reads the others'. ``stopping`` tells every thread to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import secrets
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TextIO

from proj import config
from proj.chaos import checker
from proj.chaos.schedule import KILL_CHILD, NODE_KILL, RESTART_BROKER, PlannedFault
from proj.harness.processes import pid_alive


class ChaosError(RuntimeError):
    """The run could not be carried out (not a verdict); the message says what to do."""


@dataclasses.dataclass
class Settings:
    tasks: int = 500
    workers: int = 3
    faults: int = 10
    seed: int | None = None
    seconds_per_dot: float = 0.01
    broker_url: str | None = None
    out: Path | None = None
    #: Published but not yet done: the publisher waits above this, so it publishes during the faults.
    backlog: int = 50
    #: At most this many publishes a second (so the stream lasts through faults held long); None: only the
    #: backlog paces the publisher.
    rate: float | None = None
    max_dots: int = 3
    drain_timeout: float = 300.0
    #: Nodes of a private RabbitMQ cluster (quorum task_queue) instead of one node; 0: one node.
    cluster: int = 0
    #: The fault kinds to draw from; empty: every kind that applies to the broker.
    kinds: tuple[str, ...] = ()
    #: Seconds a worker may hold a message without starting it (or stay silent) before the run ends
    #: with that verdict; None: the guard's bound plus a margin (proj/chaos/watch.py).
    stuck_after: float | None = None
    #: A stopped worker is started again once task_queue holds this many ready messages (waiting at
    #: most ``RACE_WAIT`` s), so its first delivery races its start-up (issue 14); 0: start it at once.
    race_ready: int = 20
    #: The Celery app the workers run (``-A``): proj, or a test build of it (tests/stuck_build.py).
    worker_app: str = "proj"

    def applies(self, kind: str) -> bool:
        """Node kills need a cluster; a broker restart needs the run's own single node; killing a pool child, the
        prefork pool (the workers run PROJ_POOL's pool: proj's threads pool has no child to kill)."""
        if kind == KILL_CHILD:
            return config.POOL == "prefork"
        if kind == NODE_KILL:
            return bool(self.cluster)
        if kind == RESTART_BROKER:
            return self.broker_url is None and not self.cluster
        return True


@dataclasses.dataclass
class RunState:
    settings: Settings
    stream: TextIO
    seed: int
    run_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    schedule: list[PlannedFault] = dataclasses.field(default_factory=list)
    #: (task id, message) of every task of the run, in publishing order.
    tasks: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    run_dir: Path | None = None
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    threads: list[threading.Thread] = dataclasses.field(default_factory=list)

    # What the publisher did.
    #: Task id -> message of every publish the broker confirmed.
    published: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Sent at least once (confirmed or not).
    sent: set[str] = dataclasses.field(default_factory=set)
    #: Sent again after a publish error: each may exist twice.
    #: Task id -> sends after a failed one (each copy sent may exist: a node cut off from its cluster keeps what it
    #: was sent, unconfirmed, and hands it on once the partition heals).
    republished: Counter = dataclasses.field(default_factory=Counter)
    publish_errors: Counter = dataclasses.field(default_factory=Counter)
    publish_error_samples: list[str] = dataclasses.field(default_factory=list)
    publisher_failure: str | None = None
    first_publish: float | None = None
    publishing_done: threading.Event = dataclasses.field(default_factory=threading.Event)

    # What the monitor saw.
    done: set[str] = dataclasses.field(default_factory=set)
    #: pid -> the task it runs now.
    running: dict[int, str] = dataclasses.field(default_factory=dict)
    #: Process ids seen in each worker incarnation (main and pool children). Ids are reused (the
    #: machine wraps at pid_max), so a fault's processes are those of its incarnation's set.
    pids_of: dict[str, set[int]] = dataclasses.field(default_factory=lambda: defaultdict(set))
    last_done: float | None = None

    # What the fault injector and the worker restarters did.
    faults: list[checker.Fault] = dataclasses.field(default_factory=list)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    worker_restarts: int = 0
    #: One entry per restart: the worker, and the ready messages when it started and when it said ready.
    starts: list[dict] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    # What the watch saw: messages held without starting past the bound (worker, task id, seconds).
    held: list[dict] = dataclasses.field(default_factory=list)
    #: The watch's figures: its bound, how often it asked, the longest hold any answer showed.
    watch: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def new(cls, settings: Settings, stream: TextIO) -> RunState:
        seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
        return cls(settings=settings, stream=stream, seed=seed)

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / "ledger.sqlite"

    @property
    def task_prefix(self) -> str:
        """Every task id of the run starts with it."""
        return f"chaos-{self.run_id}-"

    def make_run_dir(self, prefix: str) -> None:
        """The run dir (``--out``, which must hold no run yet, or a new temp dir), with the schedule in it."""
        out = self.settings.out
        if out is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix=prefix))
        else:
            run_dir = Path(out).absolute()
            if (run_dir / "ledger.sqlite").exists():
                raise ChaosError(f"{run_dir} already holds a chaos run (ledger.sqlite): pass an empty --out")
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ChaosError(f"cannot create the run dir {run_dir}: {exc.strerror}") from exc
            self.run_dir = run_dir
        (self.run_dir / "schedule.json").write_text(
            json.dumps({"seed": self.seed, "faults": [f.to_dict() for f in self.schedule]}, indent=2) + "\n"
        )

    def announce(self, run: str, workers: str, faults: str) -> None:
        """The run's first line: what it runs, its faults by kind, its seed and run dir."""
        kinds = Counter(f.kind for f in self.schedule)
        self.say(
            f" [*] {run} {self.run_id}: {self.settings.tasks} tasks, {workers}, {len(self.schedule)} {faults} "
            f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), seed {self.seed}; run dir {self.run_dir}"
        )

    def say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.run_dir is not None:
            with contextlib.suppress(OSError), open(self.run_dir / "chaos.log", "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def start_thread(self, target, name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def check_publisher(self) -> None:
        """Raise the publisher's failure, if it gave up: the run cannot go on without it."""
        if self.publisher_failure:
            raise ChaosError(self.publisher_failure)

    def running_tasks(self, pids=None) -> list[str]:
        """The tasks that processes (of ``pids``, else any) run right now."""
        with self.lock:
            if pids is None:
                return sorted({t for p, t in self.running.items() if pid_alive(p)})
            return [self.running[p] for p in pids if p in self.running and pid_alive(p)]
