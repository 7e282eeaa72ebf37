"""The producer's task-sent event: Flower sees it for every ``.delay()``; the broker confirms only the task, and
the events travel together (proj/sentevents.py's Batcher), not as a second message per task."""

from __future__ import annotations

import time

from helpers import TIMEOUT, wait_until
from kombu import Connection, Consumer, Exchange, Queue

from proj.celery import app
from proj.tasks import work

N = 20


def test_delay_confirms_only_the_task_and_still_sends_its_task_sent_event(fresh_queue, mgmt, recorder):
    # Given one producer connection, its publishes confirmed (proj.config)
    with app.connection_for_write(fresh_queue.url) as conn:
        conn.ensure_connection(max_retries=2)
        port = conn.connection.sock.getsockname()[1]

        # And a queue of our own on the event exchange (as Flower's), counting the messages the events come in
        sent = Queue(exchange=Exchange("celeryev", type="topic"), routing_key="task.#", exclusive=True)
        event_messages: list[list[dict]] = []

        def on_event(body, message):
            events = [e for e in (body if isinstance(body, list) else [body]) if e.get("type") == "task-sent"]
            if events:
                event_messages.append(events)

        with Connection(fresh_queue.url) as events_conn, Consumer(events_conn, [sent], callbacks=[on_event]):
            # When N tasks are sent with .delay()'s apply_async on it
            ids = [work.apply_async(args=[f"sent {i}"], connection=conn, ignore_result=True).id for i in range(N)]

            deadline = time.monotonic() + TIMEOUT
            while sum(map(len, event_messages)) < N and time.monotonic() < deadline:
                try:
                    events_conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
        assert sorted(e["uuid"] for m in event_messages for e in m) == sorted(ids)

        # Then the event stream (Flower's) has every task's task-sent event
        recorder.wait_for(lambda r: all(r.tasks.get(i) and r.tasks[i].sent for i in ids), TIMEOUT, "task-sent events")

        # And the broker confirmed exactly the N task messages: no event waited for a confirm of its own
        def stats() -> tuple[int, int]:
            mine = [ch for ch in mgmt.channels() if (ch.get("connection_details") or {}).get("peer_port") == port]
            published = sum((ch.get("message_stats") or {}).get("publish", 0) for ch in mine)
            confirmed = sum((ch.get("message_stats") or {}).get("confirm", 0) for ch in mine)
            return published, confirmed

        # (the first call on a connection goes Celery's way, its event on this connection, unconfirmed)
        wait_until(lambda: stats()[1] >= N, TIMEOUT, f"{N} confirms in the statistics")
        published, confirmed = stats()
        assert confirmed == N and N <= published < 2 * N, (published, confirmed)

        # And the N events travelled together: fewer messages than events
        assert len(event_messages) < N, [len(m) for m in event_messages]
