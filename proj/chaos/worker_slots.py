"""The run's workers: one slot per worker name, each holding the worker's successive processes.

A stopped worker is started again under its name as the next incarnation (``w1#0``, ``w1#1``, ...).
Every process started is ended at the end of the run, by PID or by its own process group, and a
group whose leader was already reaped is ended member by member (its id may have been reused).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time

from proj import config
from proj.chaos import checker, ledger
from proj.chaos.broker import RunBroker
from proj.chaos.schedule import COLD_SHUTDOWN, KILL_CHILD, KILL_WORKER, STOPS_WORKER, WARM_SHUTDOWN, PlannedFault
from proj.chaos.state import ChaosError, RunState
from proj.harness.processes import in_group, pid_alive, signal_group, signal_pid, wait_gone
from proj.harness.workers import WorkerProcess

WORKER_START_TIMEOUT = 180.0
#: How long a stopped worker may take to exit before it is SIGKILLed (and the run says so).
EXIT_TIMEOUT = {KILL_WORKER: 10.0, COLD_SHUTDOWN: 30.0, WARM_SHUTDOWN: 60.0}
#: Pool children orphaned by a killed main process get this long to finish and exit on their own.
ORPHAN_GRACE = 5.0
#: How often a wait on a worker process looks again.
POLL = 0.02
#: How long a restart waits for task_queue to fill (``Settings.race_ready``) before it starts the worker anyway.
RACE_WAIT = 10.0


@dataclasses.dataclass(eq=False)
class Slot:
    """One worker name and its successive processes (a stopped worker is started again under its name)."""

    name: str
    proc: WorkerProcess | None = None
    incarnation: int = 0
    ready: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}#{self.incarnation}"


def running(proc: WorkerProcess) -> bool:
    """Whether the worker's main process runs; never reaps it (see ``WorkerSlots.restart``)."""
    return proc.proc is not None and proc.proc.returncode is None and pid_alive(proc.pid)


def live_children(proc: WorkerProcess) -> list[int]:
    """Pool children that run (a child just killed stays listed until its parent reaps it)."""
    return [pid for pid in proc.children() if pid_alive(pid)]


class WorkerSlots:
    def __init__(self, state: RunState, broker: RunBroker):
        self.state = state
        self.broker = broker
        self.slots = [Slot(f"w{i}") for i in range(1, state.settings.workers + 1)]
        #: Every worker process started, with its incarnation key ("w1#0"), so each is ended at the end.
        self.all_procs: list[tuple[WorkerProcess, str]] = []
        self.restarters: list = []

    def _new(self, name: str, key: str) -> WorkerProcess:
        url, management_url, env = self.broker.worker_options(name)
        proc = WorkerProcess(
            name,
            url,
            self.state.run_dir / "workers",
            management_url=management_url,
            seconds_per_dot=self.state.settings.seconds_per_dot,
            # the ledger's rows, written by the hook the worker loads (proj/chaos/ledger_hook.py)
            extra_args=ledger.WORKER_ARGS,
            env={"PROJ_LEDGER": str(self.state.ledger_path), **env},
        )
        if self.state.settings.worker_app != "proj":
            proc.argv[proc.argv.index("-A") + 1] = self.state.settings.worker_app
        with self.state.lock:
            self.all_procs.append((proc, key))
        return proc

    def start(self) -> None:
        for slot in self.slots:
            slot.proc = self._new(slot.name, slot.key).start()
        for slot in self.slots:
            if not self._wait_ready(slot.proc):
                raise ChaosError(f"worker {slot.name} did not start: see {slot.proc.log_path}")
            slot.ready = True
        self.state.say(f" [*] {len(self.slots)} workers consuming {config.QUEUE_NAME}")

    def _wait_ready(self, proc: WorkerProcess) -> bool:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline and not self.state.stopping.is_set():
            try:
                proc.wait_ready(timeout=1)
                return True
            except TimeoutError:
                continue
            except RuntimeError:  # exited before it was ready
                return False
        return False

    def ready(self) -> list[Slot]:
        with self.state.lock:
            return [s for s in self.slots if s.ready and s.proc is not None and running(s.proc)]

    def pick(self, planned: PlannedFault) -> Slot | None:
        """The planned worker if it is up, else the next one that is; waits so one worker stays up."""
        need = 2 if planned.kind in STOPS_WORKER and len(self.slots) > 1 else 1
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline:
            self.state.check_publisher()
            ready = self.ready()
            if len(ready) >= need:
                order = self.slots[planned.worker :] + self.slots[: planned.worker]
                for slot in order:
                    if any(slot is r for r in ready) and (planned.kind != KILL_CHILD or live_children(slot.proc)):
                        return slot
            if self.state.stopping.wait(0.05):
                return None
        return None

    def scan(self, slot: Slot) -> None:
        """Note the processes of the slot's current incarnation (main and pool children)."""
        with self.state.lock:
            proc, key = slot.proc, slot.key
            # Once reaped, the leader's id may belong to another process: its children are not ours.
            if proc is None or proc.proc is None or proc.proc.returncode is not None:
                return
            self.state.pids_of[key].update([proc.pid, *proc.children()])

    def scan_all(self) -> None:
        for slot in self.slots:
            self.scan(slot)

    def restart_later(self, slot: Slot, proc: WorkerProcess, fault: checker.Fault) -> None:
        """Start a thread that waits for the stopped worker to exit and starts it again."""
        self.restarters.append(self.state.start_thread(lambda: self.restart(slot, proc, fault), f"restart-{slot.name}"))

    def restart(self, slot: Slot, proc: WorkerProcess, fault: checker.Fault) -> None:
        """Wait for the stopped worker to exit, end what is left of its group, start it again."""
        state = self.state
        key = fault.worker
        try:
            # Wait without reaping: while the main process is an unreaped zombie its id, and so its
            # process group's id, cannot go to another process, and ending the group stays safe.
            if not wait_gone(proc.pid, EXIT_TIMEOUT[fault.kind], interval=POLL):
                fault.note += f"; still running after {EXIT_TIMEOUT[fault.kind]:.0f} s, SIGKILLed"
                signal_group(proc.pid, signal.SIGKILL)
                wait_gone(proc.pid, 10, interval=POLL)
            fault.end = time.time()
            # Orphaned pool children may finish their task (and write 'done', with no ack to follow).
            deadline = time.monotonic() + ORPHAN_GRACE
            while time.monotonic() < deadline and self._orphans_alive(key, proc.pid):
                time.sleep(0.05)
            self.end(proc, key)  # SIGKILL what is left of the group, then reap
            fault.note += f"; exit status {proc.proc.returncode} after {fault.end - fault.begin:.1f} s"
            with contextlib.suppress(OSError):
                proc.log_path.rename(proc.log_path.with_name(f"{slot.name}.{slot.incarnation}.log"))
            for attempt in range(3):
                if state.stopping.is_set():
                    return
                at_start = self._wait_for_full_queue()
                with state.lock:
                    slot.incarnation += 1
                    new = self._new(slot.name, slot.key)
                    slot.proc = new
                new.start()
                if self._wait_ready(new):
                    at_ready = self.broker.ready_count()
                    with state.lock:
                        slot.ready = True
                        state.worker_restarts += 1
                        state.starts.append(
                            {
                                "worker": slot.key,
                                "ready_at_start": at_start,
                                "ready_at_ready": at_ready,
                                "raced": bool(at_ready and at_ready >= max(1, state.settings.race_ready)),
                            }
                        )
                    return
                if state.stopping.is_set():  # the run ended while it started: not a failed start
                    return
                state.errors.append(f"{slot.name} did not start again (attempt {attempt + 1}): see {new.log_path}")
                self.end(new, slot.key)
        except Exception as exc:  # a restarter must not die silently: the run would wait forever
            state.errors.append(f"restarting {slot.name}: {type(exc).__name__}: {exc}")

    def _wait_for_full_queue(self) -> int | None:
        """A start that races a full queue: wait (at most RACE_WAIT s) for ``race_ready`` ready messages.

        The worker then says "ready" with messages waiting, and with prefetch 1 its first delivery
        arrives a millisecond later, while its pool may still be starting: the race of issue 14.
        Returns the ready count when it gives up waiting or the queue is full.
        """
        state = self.state
        want = state.settings.race_ready
        deadline = time.monotonic() + RACE_WAIT
        while True:
            ready = self.broker.ready_count()
            if not want or (ready is not None and ready >= want) or time.monotonic() > deadline:
                return ready
            if state.publishing_done.is_set() and ready is not None:
                return ready  # nothing more comes: the queue will not fill again
            if state.stopping.wait(0.1):
                return ready

    def _orphans_alive(self, key: str, pgid: int) -> bool:
        """Whether a process of that worker incarnation, other than its main process, still runs."""
        with self.state.lock:
            pids = set(self.state.pids_of[key]) - {pgid}
        return any(in_group(p, pgid) for p in pids)

    def end(self, proc: WorkerProcess, key: str) -> None:
        """SIGKILL a worker process and whatever is left of its group, never another process."""
        if proc.proc is None:
            return
        if proc.proc.returncode is None:
            proc.kill()  # main process not reaped yet: its group id is still ours
            return
        # Reaped earlier: its group id may be reused; end only known members still in that group.
        with self.state.lock:
            pids = set(self.state.pids_of[key]) - {proc.pid}
        for pid in pids:
            if in_group(pid, proc.pid):
                signal_pid(pid, signal.SIGKILL)

    def wait_restarts(self) -> None:
        for t in self.restarters:
            t.join(WORKER_START_TIMEOUT + 60)

    def stop(self) -> None:
        """Warm shutdown for every worker still running, then SIGKILL whatever is left of each."""
        with self.state.lock:
            procs = list(self.all_procs)
        # Warm shutdown (nothing should be running by now), unless the run was cut short by a worker
        # that holds a message it does not run: it would not finish, and the broker takes the message back.
        up = [p for p, _ in procs if running(p)] if not self.state.held else []
        for proc in up:
            signal_pid(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in up:
            wait_gone(proc.pid, max(0.1, deadline - time.monotonic()), interval=POLL)
        for proc, key in procs:
            self.end(proc, key)

    def end_all(self) -> None:
        """SIGKILL what is left of every worker process (a restarter may have started one more meanwhile)."""
        with self.state.lock:
            procs = list(self.all_procs)
        for proc, key in procs:
            self.end(proc, key)
