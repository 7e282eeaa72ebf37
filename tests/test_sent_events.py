"""The producer's task-sent event: Flower sees it for every ``.delay()``, and the broker confirms only the task."""

from __future__ import annotations

from helpers import TIMEOUT, wait_until

from proj.celery import app
from proj.tasks import work

N = 20


def test_delay_confirms_only_the_task_and_still_sends_its_task_sent_event(fresh_queue, mgmt, recorder):
    # Given one producer connection, its publishes confirmed (proj.config)
    with app.connection_for_write(fresh_queue.url) as conn:
        conn.ensure_connection(max_retries=2)
        port = conn.connection.sock.getsockname()[1]

        # When N tasks are sent with .delay()'s apply_async on it
        ids = [work.apply_async(args=[f"sent {i}"], connection=conn, ignore_result=True).id for i in range(N)]

        # Then the event stream (Flower's) has every task's task-sent event
        recorder.wait_for(lambda r: all(r.tasks.get(i) and r.tasks[i].sent for i in ids), TIMEOUT, "task-sent events")

        # And the broker confirmed exactly the N task messages: no event waited for a confirm of its own
        def stats() -> tuple[int, int]:
            mine = [ch for ch in mgmt.channels() if (ch.get("connection_details") or {}).get("peer_port") == port]
            published = sum((ch.get("message_stats") or {}).get("publish", 0) for ch in mine)
            confirmed = sum((ch.get("message_stats") or {}).get("confirm", 0) for ch in mine)
            return published, confirmed

        wait_until(lambda: stats()[0] >= 2 * N, TIMEOUT, f"{2 * N} publishes (tasks and events) in the statistics")
        assert stats() == (2 * N, N)
