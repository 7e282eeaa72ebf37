"""The fault schedule and the task messages of a chaos run: pure functions of the seed.

A fault fires once a drawn number of the run's tasks are done, plus a short drawn delay, so it
lands at a random point of the work whatever the machine's speed, and the same ``--seed`` gives
the same faults in the same order on the same workers.
"""

from __future__ import annotations

import dataclasses
import random

KILL_WORKER = "kill_worker"  # SIGKILL the worker's main process (its pool child is orphaned)
KILL_CHILD = "kill_child"  # SIGKILL the pool child running the task; the main process lives on
COLD_SHUTDOWN = "cold_shutdown"  # SIGQUIT
WARM_SHUTDOWN = "warm_shutdown"  # SIGTERM: finish the running task, ack it, exit
RESTART_BROKER = "restart_broker"  # stop the RabbitMQ node and start it again, same data
NODE_KILL = "node_kill"  # SIGKILL one node of a RabbitMQ cluster, start it again once work went on without it

KINDS = (KILL_WORKER, KILL_CHILD, COLD_SHUTDOWN, WARM_SHUTDOWN, RESTART_BROKER, NODE_KILL)
#: The faults after which the worker must be started again.
STOPS_WORKER = (KILL_WORKER, COLD_SHUTDOWN, WARM_SHUTDOWN)
WORKER_KINDS = (KILL_WORKER, KILL_CHILD, COLD_SHUTDOWN, WARM_SHUTDOWN)

#: Faults fire between 5 % and 90 % of the run's tasks done, so the run starts and ends with work flowing.
FIRST, LAST = 0.05, 0.90
#: Up to this many seconds after the threshold: a fault lands anywhere in a task, not just after a 'done'.
MAX_DELAY = 0.25


@dataclasses.dataclass(frozen=True)
class PlannedFault:
    """One fault to inject: ``kind`` on worker ``worker`` once ``after_done`` tasks are done, + ``delay`` s."""

    after_done: int
    delay: float
    kind: str
    worker: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fault_schedule(
    seed: int,
    faults: int,
    tasks: int,
    workers: int,
    kinds: tuple[str, ...] = KINDS,
    force: tuple[str, ...] = (RESTART_BROKER,),
) -> list[PlannedFault]:
    """``faults`` faults drawn uniformly from ``kinds``; each kind of ``force`` that is in ``kinds`` appears."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}: choose from {', '.join(KINDS)}")
    if faults <= 0 or not kinds:
        return []
    rng = random.Random(f"proj-chaos-faults-{seed}")
    drawn = [rng.choice(kinds) for _ in range(faults)]
    missing = [k for k in force if k in kinds and k not in drawn]
    # Put each missing forced kind over a drawn fault, preferably one whose kind appears more than once.
    for kind in missing:
        free = [i for i, k in enumerate(drawn) if k not in force]
        spare = [i for i in free if drawn.count(drawn[i]) > 1] or free
        if not spare:
            break
        drawn[rng.choice(spare)] = kind
    low = max(1, int(tasks * FIRST))
    high = max(low, int(tasks * LAST))
    thresholds = sorted(rng.randint(low, high) for _ in range(faults))
    return [
        PlannedFault(after_done=t, delay=round(rng.uniform(0, MAX_DELAY), 3), kind=k, worker=rng.randrange(workers))
        for t, k in zip(thresholds, drawn, strict=True)
    ]


def task_messages(seed: int, tasks: int, max_dots: int = 3) -> list[str]:
    """The run's messages: ``chaos 00000`` ... each with 0 to ``max_dots`` dots of work."""
    rng = random.Random(f"proj-chaos-messages-{seed}")
    return [f"chaos {i:05d}" + "." * rng.randint(0, max_dots) for i in range(tasks)]
