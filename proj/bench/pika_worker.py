"""The reference: the tutorial's ``worker.py``, the raw pika loop that ``proj bench`` measures Celery against.

Usage::

    python -m proj.bench.pika_worker --url amqp://guest:guest@127.0.0.1:5672// [--queue task_queue]
    python -P proj/bench/pika_worker.py --url ...  # as proj bench runs it: no proj package (no Celery) loaded

The delivery path is the tutorial's, line for line: a durable ``task_queue``, ``basic_qos(prefetch_count=1)``,
a callback that prints `` [x] Received``, sleeps one unit per '.', prints `` [x] Done`` and only then
``basic_ack``\\s. Two things are added around it for the benchmark, neither on the per-message path:

- ``--paused``/signals: SIGUSR2 cancels the consumer and SIGUSR1 starts it again, so a benchmark can
  fill the queue first and then let all workers start at once (a helper thread waits for the
  signals and hands them to pika's loop with ``add_callback_threadsafe``);
- ``--record FILE``: the (message id, start, done) of every message, kept in memory and appended
  to FILE as one JSON line at each pause and at exit, for enqueue->start and enqueue->done latencies.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.parse

import pika

# pika and the standard library only: the reference must not pay for loading Celery (proj.console's module
# is loaded with proj, whose package imports the Celery app). tests/test_packaging.py checks both, and that
# these two copies match proj.console's.

#: proj.console.READY_LINE, copied: the tutorial's ``worker.py`` line, printed once it consumes.
READY_LINE = " [*] Waiting for messages. To exit press CTRL+C"


def say(line: str) -> None:
    """proj.console.say, copied: one tutorial line on the process's real stdout, flushed at once."""
    stream = sys.__stdout__ or sys.stdout
    stream.write(line + "\n")
    stream.flush()


PAUSE_SIGNAL = signal.SIGUSR2
RESUME_SIGNAL = signal.SIGUSR1


def connection_parameters(url: str) -> pika.URLParameters:
    """Kombu's ``amqp://host:5672//`` names the vhost '/' with a bare slash; pika wants it quoted."""
    scheme, _, rest = url.partition("://")
    host, slash, vhost = rest.partition("/")
    return pika.URLParameters(f"{scheme}://{host}/{urllib.parse.quote(vhost or '/', safe='') if slash else ''}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m proj.bench.pika_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="AMQP URL of the broker")
    parser.add_argument("--queue", default="task_queue")
    parser.add_argument("--prefetch", type=int, default=1, help="basic_qos prefetch_count (the tutorial's 1)")
    parser.add_argument("--seconds-per-dot", type=float, default=1.0)
    parser.add_argument("--paused", action="store_true", help="wait for SIGUSR1 before consuming")
    parser.add_argument(
        "--record", default=None, help="append (message id, start, done) of the messages to this file at each pause"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    records: list[tuple[str, float, float]] | None = [] if args.record else None
    # The signals are taken by the helper thread only: block them before any thread starts.
    signal.pthread_sigmask(signal.SIG_BLOCK, {PAUSE_SIGNAL, RESUME_SIGNAL})

    connection = pika.BlockingConnection(connection_parameters(args.url))
    channel = connection.channel()

    channel.queue_declare(queue=args.queue, durable=True)

    def callback(ch, method, properties, body):
        started = time.time()
        say(f" [x] Received {body.decode()}")
        time.sleep(body.count(b".") * args.seconds_per_dot)
        say(" [x] Done")
        ch.basic_ack(delivery_tag=method.delivery_tag)
        if records is not None:
            records.append((properties.message_id, started, time.time()))

    channel.basic_qos(prefetch_count=args.prefetch)

    consumer_tag: list[str] = []

    def consume() -> None:
        if not consumer_tag:
            consumer_tag.append(channel.basic_consume(queue=args.queue, on_message_callback=callback))

    def cancel() -> None:
        if consumer_tag:
            channel.basic_cancel(consumer_tag.pop())
        write_records()

    def write_records() -> None:
        # One JSON line per pause: a benchmark reads a line once the worker has stopped consuming.
        if records is not None:
            with open(args.record, "a") as out:
                out.write(json.dumps(records) + "\n")
            records.clear()

    requests: list[int] = []

    def control() -> None:
        while True:
            signum = signal.sigwait({PAUSE_SIGNAL, RESUME_SIGNAL})
            # Wakes process_data_events below, which returns once the deliveries it read are handled.
            connection.add_callback_threadsafe(lambda signum=signum: requests.append(signum))

    threading.Thread(target=control, name="pause-resume", daemon=True).start()
    if not args.paused:
        consume()
    say(READY_LINE)
    try:
        # channel.start_consuming(), which returns as soon as no consumer is left: a paused worker stays.
        while True:
            connection.process_data_events(time_limit=None)
            # Between two calls no delivery is pending, so a pause (basic_cancel, which requeues pending
            # deliveries) takes back nothing that had already arrived.
            while requests:
                if requests.pop(0) == RESUME_SIGNAL:
                    consume()
                else:
                    cancel()
    except KeyboardInterrupt:
        pass
    finally:
        write_records()
        if connection.is_open:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
