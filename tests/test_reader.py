"""proj/reader.py: the worker reads the broker once per wake-up and dispatches every complete frame, no more.

Against the session's real RabbitMQ node: a kombu connection read by proj's reader on a kombu Hub (the worker's
event loop), and a real worker given messages that span many reads.
"""

from __future__ import annotations

import time

import pytest
from helpers import TIMEOUT, publish, queue_depth
from kombu import Connection, Consumer, Exchange, Queue
from kombu.asynchronous import Hub

from proj import reader

pytestmark = pytest.mark.broker

#: Larger than proj/reader.py's CHUNK and than RabbitMQ's frame_max (128 KiB): a body of several frames, each
#: of them arriving over several reads.
LARGE = 300_000


def test_every_message_is_delivered_once_whole_over_reads_of_any_size(broker, mgmt):
    queue = Queue("proj-test-reader", Exchange(""), routing_key="proj-test-reader", auto_delete=True)
    bodies = [b"a" * LARGE] + [f"small {i}".encode() for i in range(200)] + [b"b" * (LARGE + 1)]
    received: list[bytes] = []

    with Connection(broker.url) as consuming, Connection(broker.url) as publishing:
        consuming.ensure_connection()
        hub = Hub()
        try:
            # Given a connection read by proj's reader on the worker's kind of event loop
            assert reader.usable(consuming)
            reader.register(consuming, hub)
            fd = consuming.connection.sock.fileno()
            assert hub.readers[fd][0] is reader.on_readable

            def on_message(body, message):
                received.append(bytes(body))
                message.ack()

            with Consumer(consuming.default_channel, [queue], callbacks=[on_message], accept=None, no_ack=False):
                # When large and small messages are published in one burst
                producer = publishing.Producer()
                for body in bodies:
                    producer.publish(body, routing_key=queue.routing_key, declare=[queue], serializer=None)

                # Then the loop delivers each one, whole, once, in order
                loop = hub.create_loop()
                deadline = time.monotonic() + TIMEOUT
                while len(received) < len(bodies) and time.monotonic() < deadline:
                    next(loop)
        finally:
            hub.close()

    assert [len(b) for b in received] == [len(b) for b in bodies]
    assert received == bodies


def test_a_worker_runs_messages_larger_than_one_read_each_once(fresh_queue, start_worker):
    # Given a worker of the shipped configuration
    worker = start_worker("reader", fresh_queue.url)

    # When it is sent messages of several frames each, between small ones
    messages = ["first.", "L" * LARGE + ".", "middle.", "M" * (2 * LARGE) + ".", "last."]
    publish(fresh_queue.url, messages)

    # Then it runs every one of them once, and the queue is empty
    worker.wait_for_line(" [x] Done", TIMEOUT, count=len(messages))
    log = worker.log()
    assert log.count(" [x] Received ") == len(messages), log[-2000:]
    assert queue_depth(fresh_queue.url) == 0
