"""Producers for ``proj bench``: ``.delay()``, the tutorial's pika ``new_task.py`` and dramatiq's ``send()``, all
with confirms.

``publish_celery`` and ``publish_pika`` time N publishes one at a time (each returns once the broker
confirmed the message). ``main`` is a steady open-loop producer run as its own process, so its
timing does not share a GIL with the event recorder::

    python -m proj.bench.load --kind celery --url URL --rate 400 --seconds 5 --out enqueued.json

It publishes at the given rate (a message is sent at its scheduled time, or at once if the producer
is late) and writes, per message, its id and the time just before its publish started.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pika

from proj.bench.pika_worker import connection_parameters
from proj.celery import app
from proj.tasks import work


def pika_channel(url: str, queue: str):
    """The tutorial's new_task.py set-up, plus publisher confirms (its "stronger guarantee")."""
    connection = pika.BlockingConnection(connection_parameters(url))
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    channel.confirm_delivery()
    return connection, channel


def pika_publish(channel, queue: str, body: str, message_id: str) -> None:
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        body=body,
        properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id=message_id),
    )


def publish_pika(url: str, queue: str, n: int, body: str = "bench") -> float:
    """Seconds for ``n`` confirmed, persistent ``basic_publish`` calls on one channel."""
    connection, channel = pika_channel(url, queue)
    try:
        started = time.perf_counter()
        for i in range(n):
            pika_publish(channel, queue, body, str(i))
        return time.perf_counter() - started
    finally:
        connection.close()


def publish_celery(n: int, body: str = "bench", broker_url: str | None = None, **options) -> float:
    """Seconds for ``n`` calls of ``work.delay(body)`` (or ``apply_async`` with ``options``) to ``broker_url``.

    One producer on one connection with the app's settings (confirms included), as the app's
    producer pool hands out to any Celery client. One warm-up publish first, so connecting is not counted.
    """
    with app.connection_for_write(broker_url) as conn:
        producer = app.amqp.Producer(conn)
        work.apply_async(args=[body], producer=producer, **options)
        started = time.perf_counter()
        for _ in range(n):
            work.apply_async(args=[body], producer=producer, **options)
        return time.perf_counter() - started


def publish_dramatiq(url: str, n: int, body: str = "bench") -> float:
    """Seconds for ``n`` calls of dramatiq's ``work.send(body)``, each confirmed (``confirm_delivery=True``).

    One warm-up send first, so connecting and declaring the queue are not counted."""
    # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
    from proj.bench import dramatiq_worker

    dramatiq_worker.use(url)
    dramatiq_worker.work.send(body)
    started = time.perf_counter()
    for _ in range(n):
        dramatiq_worker.work.send(body)
    return time.perf_counter() - started


def steady(kind: str, url: str, queue: str, rate: float, seconds: float) -> list[tuple[str, float]]:
    """Publish at ``rate`` per second for ``seconds``; return (message id, enqueue time) per message."""
    count = max(1, int(rate * seconds))
    sent: list[tuple[str, float]] = []
    if kind == "celery":
        with app.connection_for_write(url) as conn:
            producer = app.amqp.Producer(conn)

            def publish(i: int) -> str:
                return work.apply_async(args=["bench"], producer=producer, ignore_result=True).id

            sent = _schedule(publish, count, rate)
    elif kind == "dramatiq":
        # dramatiq is optional (proj[tools]): loaded only for the dramatiq contender
        from proj.bench import dramatiq_worker

        dramatiq_worker.use(url)
        sent = _schedule(lambda i: dramatiq_worker.work.send("bench").message_id, count, rate)
    else:
        connection, channel = pika_channel(url, queue)
        try:
            sent = _schedule(lambda i: pika_publish(channel, queue, "bench", str(i)) or str(i), count, rate)
        finally:
            connection.close()
    return sent


def _schedule(publish, count: int, rate: float) -> list[tuple[str, float]]:
    sent = []
    start = time.monotonic() + 0.05
    offset = time.time() - time.monotonic()
    for i in range(count):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        enqueued = time.monotonic() + offset
        sent.append((publish(i), enqueued))
    return sent


def command(kind: str, url: str, queue: str, rate: float, seconds: float, out) -> list[str]:
    """The command line of :func:`main` (a steady producer of its own process) for these settings."""
    return [
        sys.executable,
        "-m",
        "proj.bench.load",
        *("--kind", kind, "--url", url, "--queue", queue),
        *("--rate", str(rate), "--seconds", str(seconds), "--out", str(out)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proj.bench.load", description="steady producer for proj bench")
    parser.add_argument("--kind", choices=("celery", "pika", "dramatiq"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    sent = steady(args.kind, args.url, args.queue, args.rate, args.seconds)
    with open(args.out, "w") as out:
        json.dump(sent, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
