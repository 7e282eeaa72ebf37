"""The run's fault injector: each planned fault, once its number of tasks are done, on a worker that is up.

:class:`FaultLoop` is the loop every run shares (the compose run's node faults too: proj/chaos/compose.py):
wait for the fault's number of tasks done, then inject it; stop injecting when the run stalls or is cut
short. :class:`FaultInjector` injects the process run's faults.

Worker faults are signals to the worker's main process (SIGKILL, SIGQUIT, SIGTERM) or a SIGKILL to
the pool child running a task; a stopped worker is started again by a restarter thread. Broker
faults restart the private node, or SIGKILL one node of a cluster and start it again once work
went on without it. Every fault injected is recorded (a :class:`checker.Fault`) for the checker.
"""

from __future__ import annotations

import signal
import time

from proj.chaos import checker
from proj.chaos.broker import RunBroker
from proj.chaos.schedule import (
    COLD_SHUTDOWN,
    KILL_CHILD,
    KILL_WORKER,
    NODE_KILL,
    RESTART_BROKER,
    WARM_SHUTDOWN,
    PlannedFault,
)
from proj.chaos.state import RunState
from proj.chaos.worker_slots import Slot, WorkerSlots, live_children, running
from proj.harness.processes import signal_pid

SIGNALS = {KILL_WORKER: signal.SIGKILL, COLD_SHUTDOWN: signal.SIGQUIT, WARM_SHUTDOWN: signal.SIGTERM}
#: A killed cluster node is started again once this many more tasks are done without it (or after NODE_DOWN_MAX s).
NODE_DOWN_TASKS = 10
NODE_DOWN_MAX = 30.0
#: No task done for this long means the run is stuck: stop injecting and go count.
STALL_TIMEOUT = 180.0


class FaultLoop:
    """Each planned fault of the schedule in turn, once its number of tasks are done; :meth:`inject` is the run's."""

    def __init__(self, state: RunState):
        self.state = state

    def inject(self, n: int, planned: PlannedFault) -> None:
        raise NotImplementedError

    def inject_all(self) -> None:
        state = self.state
        for n, planned in enumerate(state.schedule, 1):
            if state.stopping.is_set():
                state.skipped.extend({"kind": p.kind, "why": "run cut short"} for p in state.schedule[n - 1 :])
                return
            if not self._wait_done(planned.after_done):
                if state.stopping.is_set():
                    continue  # said at the next turn
                state.say(f" [!] no task done for {STALL_TIMEOUT:.0f} s: the remaining faults are not injected")
                state.skipped.extend({"kind": p.kind, "why": "run stalled"} for p in state.schedule[n - 1 :])
                return
            if planned.delay:
                time.sleep(planned.delay)
            self.inject(n, planned)

    def _say(self, n: int, what: str) -> None:
        self.state.say(f" [!] fault {n}/{len(self.state.schedule)} {what}")

    def _wait_done(self, count: int) -> bool:
        """Until ``count`` tasks are done; False if none gets done for STALL_TIMEOUT."""
        state = self.state
        last, since = -1, time.monotonic()
        while len(state.done) < count:
            state.check_publisher()
            if state.stopping.is_set():  # the watch ended the run (a message held without starting)
                return False
            if len(state.done) != last:
                last, since = len(state.done), time.monotonic()
            elif time.monotonic() - since > STALL_TIMEOUT:
                return False
            time.sleep(0.01)
        return True


class FaultInjector(FaultLoop):
    """The process run's faults: signals to workers, a broker restart, a cluster node killed."""

    def __init__(self, state: RunState, broker: RunBroker, workers: WorkerSlots):
        super().__init__(state)
        self.broker = broker
        self.workers = workers

    def inject(self, n: int, planned: PlannedFault) -> None:
        if planned.kind == RESTART_BROKER:
            self._restart_broker(n)
            return
        if planned.kind == NODE_KILL:
            self._kill_node(n, planned)
            return
        slot = self.workers.pick(planned)
        if slot is None:
            self.state.skipped.append({"kind": planned.kind, "why": "no worker up to take it"})
            self._say(n, f"{planned.kind} skipped: no worker up")
        elif planned.kind == KILL_CHILD:
            self._kill_child(n, slot)
        else:
            self._stop_worker(n, planned, slot)

    # -- broker faults -----------------------------------------------------------------------------

    def _restart_broker(self, n: int) -> None:
        self._say(n, f"{RESTART_BROKER}: {len(self.state.running_tasks())} tasks running")
        begin = time.time()
        self.broker.restart()
        end = time.time()
        self.state.faults.append(checker.Fault(RESTART_BROKER, begin, end, None, None, f"down {end - begin:.1f} s"))
        self.state.say(f"     broker back after {end - begin:.1f} s")

    def _kill_node(self, n: int, planned: PlannedFault) -> None:
        """SIGKILL one node (a crash), let work go on without it, start it again."""
        state = self.state
        number = planned.worker % self.broker.cluster.size + 1
        running_now = state.running_tasks()
        begin = time.time()
        node = self.broker.kill_node(number)
        self._say(n, f"{NODE_KILL}: SIGKILL node {number} ({node.node_name}), {len(running_now)} tasks running")
        # At most one node is down at a time: a quorum queue needs a majority of its replicas.
        target = min(len(state.done) + NODE_DOWN_TASKS, state.settings.tasks)
        deadline = time.monotonic() + NODE_DOWN_MAX
        while len(state.done) < target and time.monotonic() < deadline and not state.stopping.wait(0.05):
            state.check_publisher()
        done_while_down = len(state.done) - target + NODE_DOWN_TASKS
        self.broker.start_node(number)
        end = time.time()
        note = f"node {number} down {end - begin:.1f} s, {done_while_down} tasks done meanwhile"
        state.faults.append(checker.Fault(NODE_KILL, begin, end, None, None, note))
        state.say(f"     {note}")

    # -- worker faults -----------------------------------------------------------------------------

    def _stop_worker(self, n: int, planned: PlannedFault, slot: Slot) -> None:
        state, kind = self.state, planned.kind
        with state.lock:
            proc, key = slot.proc, slot.key
            slot.ready = False
        self.workers.scan(slot)
        with state.lock:
            running_now = state.running_tasks(state.pids_of[key])
        begin = time.time()
        if running(proc):
            signal_pid(proc.pid, SIGNALS[kind])
        fault = checker.Fault(kind, begin, begin, None, key, f"{SIGNALS[kind].name} to pid {proc.pid}")
        state.faults.append(fault)
        self._say(n, f"{kind}: {SIGNALS[kind].name} {slot.name} (pid {proc.pid}), running {_tasks(running_now)}")
        self.workers.restart_later(slot, proc, fault)

    def _kill_child(self, n: int, slot: Slot) -> None:
        state = self.state
        self.workers.scan(slot)
        children = live_children(slot.proc)
        if not children:
            state.skipped.append({"kind": KILL_CHILD, "why": f"{slot.name} had no pool child"})
            return
        child = children[0]
        with state.lock:
            running_now = [state.running[child]] if child in state.running else []
        begin = time.time()
        signal_pid(child, signal.SIGKILL)
        state.faults.append(
            checker.Fault(KILL_CHILD, begin, begin, frozenset({child}), slot.key, f"SIGKILL to pool child {child}")
        )
        self._say(n, f"{KILL_CHILD}: SIGKILL {slot.name}'s pool child (pid {child}), running {_tasks(running_now)}")


def _tasks(task_ids: list[str]) -> str:
    if not task_ids:
        return "no task"
    return ", ".join(t.rsplit("-", 1)[-1] for t in task_ids)
