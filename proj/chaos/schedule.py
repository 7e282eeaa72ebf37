"""The fault schedule and the task messages of a chaos run: pure functions of the seed.

A fault fires once a drawn number of the run's tasks are done, plus a short drawn delay, so it
lands at a random point of the work whatever the machine's speed, and the same ``--seed`` gives
the same faults in the same order on the same workers (or, on the compose cluster, nodes).

One schedule for both kinds of run: worker and broker processes (:data:`KINDS`, drawn uniformly,
a broker restart or node kill forced in) and the compose cluster's containers
(:data:`CONTAINER_KINDS`, every kind in turn, each on a drawn node).
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

# The compose cluster's node faults (proj/chaos/compose.py, proj/harness/compose.py's NodeFaults):
CRASH = "crash"  # docker kill (SIGKILL), then docker start
FREEZE = "freeze"  # docker pause (TCP connections stay open and silent), then unpause
ISOLATE = "isolate"  # docker network disconnect, then connect
PARTITION = "partition"  # iptables in the node drops the other nodes only, then flushed
CONTAINER_KINDS = (CRASH, FREEZE, ISOLATE, PARTITION)
#: The faults after which the worker must be started again.
STOPS_WORKER = (KILL_WORKER, COLD_SHUTDOWN, WARM_SHUTDOWN)
WORKER_KINDS = (KILL_WORKER, KILL_CHILD, COLD_SHUTDOWN, WARM_SHUTDOWN)

#: Faults fire between 5 % and 90 % of the run's tasks done, so the run starts and ends with work flowing.
FIRST, LAST = 0.05, 0.90
#: Up to this many seconds after the threshold: a fault lands anywhere in a task, not just after a 'done'.
MAX_DELAY = 0.25


@dataclasses.dataclass(frozen=True)
class PlannedFault:
    """One fault to inject: ``kind`` on worker (or node) ``worker`` once ``after_done`` tasks are done, + ``delay``."""

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
    *,
    in_turn: bool = False,
    window: tuple[float, float] = (FIRST, LAST),
    max_delay: float = MAX_DELAY,
) -> list[PlannedFault]:
    """``faults`` faults of ``kinds``, each on one of ``workers`` (workers, or nodes), firing between ``window``'s
    fractions of the tasks done, plus up to ``max_delay`` s.

    Drawn uniformly, each kind of ``force`` that is in ``kinds`` put in; or, ``in_turn``, every kind of
    ``kinds`` in turn (each round shuffled), so that each kind is hit as often as the others.
    """
    unknown = set(kinds) - set(KINDS) - set(CONTAINER_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}: choose from {', '.join(KINDS + CONTAINER_KINDS)}")
    if faults <= 0 or not kinds:
        return []
    rng = random.Random(f"proj-chaos-faults-{seed}")
    drawn = _in_turn(rng, faults, kinds) if in_turn else _uniform(rng, faults, kinds, force)
    low = max(1, int(tasks * window[0]))
    high = max(low, int(tasks * window[1]))
    thresholds = sorted(rng.randint(low, high) for _ in range(faults))
    return [
        PlannedFault(
            after_done=t,
            delay=round(rng.uniform(0, max_delay), 3) if max_delay else 0.0,
            kind=k,
            worker=rng.randrange(workers),
        )
        for t, k in zip(thresholds, drawn, strict=True)
    ]


def _uniform(rng: random.Random, faults: int, kinds: tuple[str, ...], force: tuple[str, ...]) -> list[str]:
    drawn = [rng.choice(kinds) for _ in range(faults)]
    missing = [k for k in force if k in kinds and k not in drawn]
    # Put each missing forced kind over a drawn fault, preferably one whose kind appears more than once.
    for kind in missing:
        free = [i for i, k in enumerate(drawn) if k not in force]
        spare = [i for i in free if drawn.count(drawn[i]) > 1] or free
        if not spare:
            break
        drawn[rng.choice(spare)] = kind
    return drawn


def _in_turn(rng: random.Random, faults: int, kinds: tuple[str, ...]) -> list[str]:
    drawn: list[str] = []
    while len(drawn) < faults:
        batch = list(kinds)
        rng.shuffle(batch)
        drawn.extend(batch)
    return drawn[:faults]


def task_messages(seed: int, tasks: int, max_dots: int = 3) -> list[str]:
    """The run's messages: ``chaos 00000`` ... each with 0 to ``max_dots`` dots of work."""
    rng = random.Random(f"proj-chaos-messages-{seed}")
    return [f"chaos {i:05d}" + "." * rng.randint(0, max_dots) for i in range(tasks)]
