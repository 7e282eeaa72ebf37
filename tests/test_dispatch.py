"""Round-robin and fair dispatch, proven with two real workers on a real broker."""

from __future__ import annotations

import pytest
from helpers import (
    QUEUE_TYPES,
    TIMEOUT,
    UnackedSampler,
    consumers_on_task_queue,
    publish,
    wait_until,
)

FIVE_MESSAGES = ["First message.", "Second message..", "Third message...", "Fourth message....", "Fifth message....."]


def start_pair(start_worker, url: str, **options):
    workers = [start_worker(name, url, wait=False, **options) for name in ("w1", "w2")]
    for w in workers:
        w.wait_ready(TIMEOUT)
    return workers


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_round_robin_gives_one_worker_the_odd_messages_and_the_other_the_even(
    queue_type, fresh_queue, mgmt, start_worker, recorder
):
    # Given two workers consuming with unlimited prefetch, the tutorial's first mode, on a task_queue of this type
    start_pair(start_worker, fresh_queue.url, prefetch_multiplier=0)
    wait_until(lambda: len(consumers_on_task_queue(mgmt)) == 2, what="two consumers on task_queue")

    # When the tutorial's five messages are sent
    publish(fresh_queue.url, FIVE_MESSAGES, queue_type=queue_type)

    # Then one worker received first, third and fifth, the other second and fourth
    recorder.wait_for(lambda r: r.succeeded_count() == 5, TIMEOUT, "five tasks succeeded")
    received_by: dict[str, list[str]] = {}
    for message, task in recorder.by_message().items():
        assert len(task.received) == 1, f"{message!r} was delivered {len(task.received)} times"
        received_by.setdefault(task.received[0][0], []).append(message)
    groups = sorted((sorted(msgs, key=FIVE_MESSAGES.index) for msgs in received_by.values()), key=len, reverse=True)
    assert groups == [FIVE_MESSAGES[0::2], FIVE_MESSAGES[1::2]]
    # And each worker ran exactly what it received
    for task in recorder.snapshot():
        assert task.succeeded[0][0] == task.received[0][0]


# Odd messages heavy, even light: greedy assignment (prefetch 1) reaches the lower bound exactly,
# round-robin hands every heavy message to the same worker.
HEAVY_DOTS, LIGHT_DOTS, PAIRS = 4, 1, 4
WORKLOAD = [m for i in range(PAIRS) for m in (f"heavy {i}" + "." * HEAVY_DOTS, f"light {i}" + "." * LIGHT_DOTS)]
FAIR_SECONDS_PER_DOT = 0.5


def lower_bound(seconds_per_dot: float, workers: int = 2) -> float:
    work = [m.count(".") * seconds_per_dot for m in WORKLOAD]
    return max(max(work), sum(work) / workers)


def makespan(recorder) -> float:
    tasks = recorder.snapshot()
    return max(t.succeeded[-1][1] for t in tasks) - min(t.started[0][1] for t in tasks)


def max_held_per_worker(recorder) -> dict[str, int]:
    """From the event stream: the most messages a worker had received and not yet finished at once."""
    timeline: dict[str, list[tuple[float, int]]] = {}
    for t in recorder.snapshot():
        host = t.received[0][0]
        timeline.setdefault(host, []).extend([(t.received[0][1], +1), (t.succeeded[-1][1], -1)])
    held = {}
    for host, points in timeline.items():
        level = peak = 0
        for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # a finish before a receive at the same instant
            level += step
            peak = max(peak, level)
        held[host] = peak
    return held


def run_workload(fresh_queue, mgmt, start_worker, recorder_for, queue_type=None, **worker_options):
    start_pair(start_worker, fresh_queue.url, seconds_per_dot=FAIR_SECONDS_PER_DOT, **worker_options)
    wait_until(lambda: len(consumers_on_task_queue(mgmt)) == 2, what="two consumers on task_queue")
    recorder = recorder_for(fresh_queue.url)
    with UnackedSampler(mgmt) as sampler:
        publish(fresh_queue.url, WORKLOAD, queue_type=queue_type)
        recorder.wait_for(lambda r: r.succeeded_count() == len(WORKLOAD), TIMEOUT, "workload done")
    return recorder, sampler


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_fair_dispatch_never_hands_a_busy_worker_a_second_message(
    queue_type, fresh_queue, mgmt, start_worker, recorder_for
):
    # Given two workers with prefetch 1 (the default) on a task_queue of this type, and heavy and light
    # messages alternating
    # When the workload runs
    recorder, sampler = run_workload(fresh_queue, mgmt, start_worker, recorder_for, queue_type)

    # Then the broker never had more than one unacknowledged message on a worker's channel
    assert sampler.samples > 0
    assert sampler.peak <= 1, f"a worker held {sampler.peak} unacknowledged messages"
    assert sampler.prefetch_counts == {1}
    # And no worker received a message while it still had one unfinished
    held = max_held_per_worker(recorder)
    assert len(held) == 2 and set(held.values()) == {1}, held
    # And the makespan is within 10% of the lower bound max(longest task, total work / workers)
    bound = lower_bound(FAIR_SECONDS_PER_DOT)
    assert makespan(recorder) <= 1.10 * bound, f"makespan {makespan(recorder):.2f} s vs lower bound {bound:.2f} s"


def test_unlimited_prefetch_gives_one_worker_every_heavy_message_and_is_slower(
    fresh_queue, mgmt, start_worker, recorder_for
):
    # Given the same workload on two workers with unlimited prefetch (round-robin dispatch)
    recorder, sampler = run_workload(fresh_queue, mgmt, start_worker, recorder_for, prefetch_multiplier=0)

    # Then one worker did every heavy task
    heavy_hosts = {t.worker for t in recorder.snapshot() if t.message.startswith("heavy")}
    assert len(heavy_hosts) == 1, sorted((t.received, t.message) for t in recorder.snapshot())
    # And a worker was handed messages while busy
    assert max(max_held_per_worker(recorder).values()) > 1
    # And the run is clearly slower than the lower bound that prefetch 1 reaches
    bound = lower_bound(FAIR_SECONDS_PER_DOT)
    assert makespan(recorder) >= 1.4 * bound, f"makespan {makespan(recorder):.2f} s vs lower bound {bound:.2f} s"
