"""PROJ_CPU_AFFINITY=one (proj/affinity.py): each threads-pool worker on a CPU of its own, never two on one."""

from __future__ import annotations

import os

import pytest
from helpers import TIMEOUT, publish

from proj import affinity

ENOUGH_CPUS = len(os.sched_getaffinity(0)) >= 2


def cpus_of(pid: int) -> set[int]:
    """The CPUs every thread of process ``pid`` may run on (the union over its threads)."""
    found: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        found |= os.sched_getaffinity(int(tid))
    return found


@pytest.mark.skipif(not ENOUGH_CPUS, reason="one CPU: nothing to claim")
def test_claims_take_each_cpu_once_then_none(tmp_path):
    # Given as many claims as this process may use CPUs
    allowed = os.sched_getaffinity(0)
    claims = [affinity.claim_cpu(str(tmp_path)) for _ in allowed]
    try:
        # Then each took another CPU, and one more finds none free
        assert sorted(cpu for cpu, _ in claims) == sorted(allowed)
        assert affinity.claim_cpu(str(tmp_path)) is None
        # And a claim given up (its process ended: its file closed) frees its CPU
        cpu, handle = claims.pop()
        handle.close()
        again = affinity.claim_cpu(str(tmp_path))
        assert again is not None and again[0] == cpu
        claims.append(again)
    finally:
        for _, handle in claims:
            handle.close()


@pytest.mark.broker
@pytest.mark.skipif(not ENOUGH_CPUS, reason="one CPU: nothing to claim")
def test_two_workers_run_each_on_a_cpu_of_its_own(fresh_queue, start_worker, tmp_path):
    # Given two threads-pool workers asked for one CPU each, sharing a lock folder
    env = {"PROJ_CPU_AFFINITY": "one", "PROJ_CPU_LOCK_DIR": str(tmp_path / "locks")}
    workers = [start_worker(f"pinned{i}", fresh_queue.url, env=env) for i in (1, 2)]

    # Then every thread of each is on one CPU, not the other's
    first, second = (cpus_of(w.pid) for w in workers)
    assert len(first) == 1 and len(second) == 1 and first != second, (first, second)

    # And they run tasks as ever
    publish(fresh_queue.url, [f"Task {n}." for n in range(4)])
    for w in workers:
        w.wait_for_line(" [x] Done", TIMEOUT, count=1)
