""".delay()'s fast path (proj/fastpath.py): the very message, reply-queue declaration and task-sent event
Celery's own path sends, written as ready-made frames; anything it does not know goes Celery's way."""

from __future__ import annotations

import json
import time

import pytest
from helpers import TIMEOUT, take_raw, wait_until, without_ids
from kombu import Connection, Exchange, Queue

from proj import config, fastpath
from proj.celery import app
from proj.tasks import PublishError, work


@pytest.fixture
def fast_sends(monkeypatch) -> list[str]:
    """The task ids the fast path published (its calls, counted on the way through)."""
    sent: list[str] = []
    real_send = fastpath.send

    def counting(task, message, options):
        result = real_send(task, message, options)
        sent.append(result.id)
        return result

    monkeypatch.setattr(fastpath, "send", counting)
    return sent


def test_delay_puts_in_task_queue_the_very_message_celerys_own_path_builds(fresh_queue, fast_sends):
    # Given messages that test the encoding: quotes, newlines, non-ASCII, empty, one larger than a frame
    messages = ['It\'s "quoted".', "line\nbreak..", "é😀 ünïcode.", "", "big." * 100_000]
    with app.connection_for_write(fresh_queue.url) as conn:
        producer = app.amqp.Producer(conn)
        work.apply_async(args=["warm-up"], producer=producer)  # Celery's path: declares task_queue, confirms on
        take_raw(fresh_queue.url)
        for ignore_result in (True, False):
            for message in messages:
                # When Celery's own path sends it (headers={}: an option the fast path leaves to Celery),
                # then the plain call does
                by_celery_id = work.apply_async(
                    args=[message], producer=producer, ignore_result=ignore_result, headers={}
                ).id
                by_fast_path_id = work.apply_async(args=[message], producer=producer, ignore_result=ignore_result).id

                # Then the broker holds the same message twice: same properties, headers and body but the ids
                by_celery, by_fast_path = take_raw(fresh_queue.url)
                assert by_fast_path_id == fast_sends[-1] != by_celery_id
                assert by_celery.headers["id"] == by_celery_id
                assert without_ids(by_fast_path) == without_ids(by_celery)
                assert by_fast_path.headers["id"] == by_fast_path.headers["root_id"] == by_fast_path_id
                assert by_fast_path.properties["correlation_id"] == by_fast_path_id
                assert by_fast_path.properties["reply_to"] == app.thread_oid
    assert len(fast_sends) == 2 * len(messages)


def test_delay_declares_the_reply_queue_as_kombu_does_in_the_same_write_as_the_task(fresh_queue, mgmt, fast_sends):
    # Given a producer connection that sent one task the Celery way
    with app.connection_for_write(fresh_queue.url) as conn:
        producer = app.amqp.Producer(conn)
        work.apply_async(args=["warm-up"], producer=producer)
        channel, amqp_conn = producer.channel, conn.connection

        # When kombu declares the reply queue (Celery's on_task_call) and the fast path sends a task
        declared, writes = [], []
        frame_writer, transport_write = amqp_conn.frame_writer, amqp_conn.transport.write
        amqp_conn.frame_writer = lambda *frame: (declared.append(frame), frame_writer(*frame))[1]
        amqp_conn.transport.write = lambda data: (writes.append(data), transport_write(data))[1]
        try:
            app.backend.binding(channel).declare(nowait=True)
            task_id = work.apply_async(args=["with a result."], producer=producer).id
        finally:
            amqp_conn.frame_writer, amqp_conn.transport.write = frame_writer, transport_write

    # Then the fast path wrote kombu's queue.declare frame, byte for byte, in one write with the task
    assert task_id in fast_sends
    (_, channel_id, method, args, _), *_ = declared
    kombus = (
        (1).to_bytes(1, "big")
        + channel_id.to_bytes(2, "big")
        + (4 + len(args)).to_bytes(4, "big")
        + method[0].to_bytes(2, "big")
        + method[1].to_bytes(2, "big")
        + args
        + b"\xce"
    )
    (task_write,) = [w for w in writes if b"\x00<\x00(\x00\x00\x00\ntask_queue" in w]  # basic.publish to task_queue
    assert task_write.startswith(kombus) and task_id.encode() in task_write
    # And the broker has the reply queue as Celery declares it: durable, auto-delete, expiring when unused
    reply_queue = mgmt.queue(app.thread_oid)
    assert reply_queue["durable"] and reply_queue["auto_delete"]
    # (RabbitMQ 4.x lists the queue type it defaulted to among the arguments; 3.10 does not)
    arguments = {k: v for k, v in reply_queue["arguments"].items() if (k, v) != ("x-queue-type", "classic")}
    assert arguments == {"x-expires": int(app.conf.result_expires.total_seconds() * 1000)}


def test_delay_results_and_task_sent_events_reach_the_caller_and_flower_as_by_celerys_path(
    fresh_queue, recorder, start_worker, fast_sends
):
    # Given the events exchange with a queue of our own on it, for task events
    events = Queue("test-fastpath-events", Exchange("celeryev", type="topic"), routing_key="task.#", auto_delete=True)
    with Connection(fresh_queue.url) as listener:
        events(listener.default_channel).declare()
        with app.connection_for_write(fresh_queue.url) as conn:
            producer = app.amqp.Producer(conn)
            # When one task goes Celery's way and three the fast way, each with a result
            first = work.apply_async(args=["first."], producer=producer, headers={})
            results = [work.apply_async(args=[f"fast {i}."], producer=producer) for i in range(3)]
        start_worker("w1", fresh_queue.url)

        # Then every result comes back to the caller
        assert [r.get(timeout=TIMEOUT) for r in [first, *results]] == [1, 1, 1, 1]
        assert fast_sends == [r.id for r in results]
        # And Flower's event stream has each task's task-sent event
        recorder.wait_for(
            lambda r: all(r.tasks.get(x.id) and r.tasks[x.id].sent for x in results), TIMEOUT, "task-sent events"
        )
        # And the fast path's events are Celery's but for the task's own fields and the clock, several to a
        # message (a list, as a worker's task events come) with the headers and properties of Celery's
        ours = {first.id, *(r.id for r in results)}
        sent: dict[str, tuple[object, dict]] = {}  # task id -> (message, event); another test's late events ignored
        while set(sent) != ours:
            for message in wait_until(lambda: _take_all(listener, events) or None, TIMEOUT, "task-sent events"):
                body = json.loads(message.body)
                for e in body if isinstance(body, list) else [body]:
                    if e["type"] == "task-sent" and e["uuid"] in ours:
                        sent[e["uuid"]] = (message, e)
    (by_celery, celery_event), (batched, fast_event) = sent[first.id], sent[results[0].id]
    assert isinstance(json.loads(batched.body), list) and batched.delivery_info["routing_key"] == "task.multi"
    assert batched.properties == by_celery.properties
    assert batched.headers == by_celery.headers
    assert list(fast_event) == list(celery_event)
    varying = {"uuid", "root_id", "args", "clock", "timestamp"}
    assert {k: v for k, v in fast_event.items() if k not in varying} == {
        k: v for k, v in celery_event.items() if k not in varying
    }
    assert (fast_event["uuid"], fast_event["args"]) == (results[0].id, "['fast 0.']")


def _take_all(conn, queue) -> list:
    taken = []
    while (message := conn.default_channel.basic_get(queue.name, no_ack=True)) is not None:
        taken.append(message)
    return taken


def test_a_connection_the_broker_closed_sends_the_task_through_celerys_path_once(fresh_queue, mgmt, fast_sends):
    # Given a producer connection the fast path has used
    with app.connection_for_write(fresh_queue.url) as conn:
        producer = app.amqp.Producer(conn)
        work.apply_async(args=["warm-up"], producer=producer, ignore_result=True)
        work.apply_async(args=["fast"], producer=producer, ignore_result=True)
        assert len(fast_sends) == 1
        port = conn.connection.sock.getsockname()[1]

        # When the broker closes it (an operator, a node restart; rabbitmqctl lists connections at once,
        # the management API only with its next statistics)
        def ours() -> str | None:
            listed = fresh_queue.rabbitmqctl("list_connections", "-q", "--no-table-headers", "peer_port", "pid")
            found = [line.split("\t", 1)[1] for line in listed.stdout.splitlines() if line.startswith(f"{port}\t")]
            return found[0] if found else None

        pid = wait_until(ours, TIMEOUT, "the producer's connection in rabbitmqctl list_connections")
        assert fresh_queue.rabbitmqctl("close_connection", pid, "closed by the test").returncode == 0
        # (the broker has sent connection.close; it waits up to 30 s for a close-ok this idle client does not send)

        # Then the next .delay() on it is sent anyway, by Celery's path, which reconnects
        after = work.apply_async(args=["after the close"], producer=producer, ignore_result=True).id

    # And task_queue holds each message once
    ids = [m.headers["id"] for m in take_raw(fresh_queue.url)]
    assert len(ids) == 3 and ids.count(after) == 1 and fast_sends[-1] != after


def test_a_nack_on_the_fast_path_is_sent_again_until_the_timeout_then_raised(queue_of_three, monkeypatch):
    # Given task_queue full (three messages, reject-publish) and a publish timeout of one second
    monkeypatch.setattr(config, "PUBLISH_TIMEOUT", 1.0)
    attempts: list[str] = []
    real_send = fastpath.send

    def recording(task, message, options):
        attempts.append(options["task_id"])
        return real_send(task, message, options)

    monkeypatch.setattr(fastpath, "send", recording)
    with app.connection_for_write(queue_of_three.url) as conn:
        producer = app.amqp.Producer(conn)
        queued = [work.apply_async(args=[f"fits {i}"], producer=producer, ignore_result=True).id for i in range(3)]

        # When a fourth is sent the fast way
        started = time.monotonic()
        with pytest.raises(PublishError, match="refused the message for queue 'task_queue'"):
            work.apply_async(args=["one too many"], producer=producer, ignore_result=True)
        waited = time.monotonic() - started

    # Then the fast path sent it more than once, under one id, for about the timeout, and the caller was told
    fourth = attempts[3:]
    assert len(fourth) >= 2 and len(set(fourth)) == 1, attempts
    assert 0.5 < waited < 1.0 + TIMEOUT / 2
    # And task_queue holds the three it took, nothing else
    assert [m.headers["id"] for m in take_raw(queue_of_three.url)] == queued == attempts[:3]


@pytest.mark.parametrize(
    "options",
    [
        {"countdown": 5},
        {"queue": "other"},
        {"headers": {"x": 1}},
        {"link": None},
        {"retry": False},
        {"priority": 3},
        {"time_limit": 10},
    ],
)
def test_an_option_the_fast_path_does_not_know_leaves_the_task_to_celery(options):
    base = _plain_options()
    assert fastpath.eligible(work, ["m"], None, (), base)
    assert not fastpath.eligible(work, ["m"], None, (), {**base, **options})


def test_eager_mode_task_routes_and_publish_signals_leave_the_task_to_celery():
    base = _plain_options()
    assert fastpath.eligible(work, ["m"], None, (), base)
    for setting, value in (("task_always_eager", True), ("task_routes", {"proj.tasks.work": {"queue": "x"}})):
        app.conf[setting] = value
        try:
            assert not fastpath.eligible(work, ["m"], None, (), base), setting
        finally:
            app.conf.changes.pop(setting)
    from celery.signals import before_task_publish

    def receiver(**kwargs):
        pass

    before_task_publish.connect(receiver)
    try:
        assert not fastpath.eligible(work, ["m"], None, (), base)
    finally:
        before_task_publish.disconnect(receiver)
    assert fastpath.eligible(work, ["m"], None, (), base)


def _plain_options() -> dict:
    from proj import sentevents

    return {
        "confirm_timeout": config.PUBLISH_TIMEOUT,
        "time_limit": None,
        "soft_time_limit": None,
        "event_dispatcher": sentevents.dispatcher(app),
        "task_id": "00000000-0000-4000-8000-000000000001",
    }
