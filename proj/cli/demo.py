"""The tutorial's three terminals in one command: a private broker, two workers, five messages.

Usage::

    proj demo [--seconds-per-dot 0.2]

Starts a RabbitMQ node on free ports in a temporary data dir, two ``celery -A proj worker``
processes, sends ``First message.`` ... ``Fifth message.....`` as ``new-task`` would, prints
which worker got which message (from Celery's event stream), and stops everything it started,
also on Ctrl+C.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from proj.cli.exits import CANNOT_RUN, FAILED, INTERRUPTED, OK
from proj.console import READY_LINE, say
from proj.harness.events import EventRecorder
from proj.harness.workers import WorkerProcess
from proj.new_task import publish
from proj.rabbit.node import BrokerError, private_node

FIVE_MESSAGES = ["First message.", "Second message..", "Third message...", "Fourth message....", "Fifth message....."]
TIMEOUT = 120


def run(seconds_per_dot: float = 0.2, workers: int = 2) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="proj-demo-"))
    node = private_node(data_dir)
    started: list[WorkerProcess] = []
    recorder: EventRecorder | None = None
    try:
        say(f" [*] Starting a private RabbitMQ on 127.0.0.1:{node.port} (data in {data_dir})")
        node.start()
        for i in range(1, workers + 1):
            started.append(
                WorkerProcess(f"w{i}", node.url, data_dir / "workers", seconds_per_dot=seconds_per_dot).start()
            )
        for w in started:
            w.wait_ready(TIMEOUT)
            say(READY_LINE.replace(" [*] ", f" [*] {w.hostname}: ", 1))
        recorder = EventRecorder(node.url).start()

        for message in FIVE_MESSAGES:
            publish(message, node.url)
            say(f" [x] Sent {message!r}")
        recorder.wait_for(lambda r: r.succeeded_count() == len(FIVE_MESSAGES), TIMEOUT, "all five messages done")

        say("")
        by_worker: dict[str, list[str]] = {}
        for task in sorted(recorder.snapshot(), key=lambda t: FIVE_MESSAGES.index(t.message)):
            by_worker.setdefault(task.worker, []).append(task.message)
        for host in sorted(by_worker):
            say(f" [x] {host} received " + ", ".join(repr(m) for m in by_worker[host]))
        say(" [*] Round-robin: each worker got every other message, one at a time (prefetch 1).")
        return OK
    except BrokerError as exc:
        print(f"proj demo: {exc}", file=sys.stderr)
        return CANNOT_RUN
    except TimeoutError as exc:  # a worker never became ready, or the five messages were not all done
        print(f"proj demo: {str(exc).splitlines()[0]}", file=sys.stderr)
        return FAILED
    except RuntimeError as exc:  # a worker exited at start-up (a bad setting, say)
        print(f"proj demo: {str(exc).splitlines()[0]}", file=sys.stderr)
        return CANNOT_RUN
    except KeyboardInterrupt:
        say(" [*] Interrupted")
        return INTERRUPTED
    finally:
        if recorder is not None:
            recorder.stop()
        for w in started:
            w.signal(signal.SIGTERM)  # warm shutdown
        for w in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.wait_exit(30)
            w.kill()
        node.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        say(" [*] Stopped the workers and the broker")
