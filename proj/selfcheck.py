"""``python -m proj.selfcheck``: every internal of proj/compat.py checked against the installed libraries.

One line per internal (library, version, feature, ok or OFF with what is lost); exit status 1 if any is
off. ``./dev.sh upgrade-check`` runs it on the newest releases. Apart from proj/compat.py so that compat
imports no feature module (no import cycle: the checks build the app's own frames and app).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import amqp
import celery._state
from amqp.transport import TCPTransport
from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu import Connection
from kombu.asynchronous import Hub
from kombu.asynchronous.semaphore import LaxBoundedSemaphore
from kombu.asynchronous.timer import Timer

from proj import compat, frames
from proj.celery import app
from proj.messages import TASK_NAME


def self_check() -> list[tuple[compat.Internal, str | None]]:
    """Each internal with None if it is usable with the installed libraries, else why not."""
    results: list[tuple[compat.Internal, str | None]] = []
    timer = Timer()
    timer.call_after(60, print)
    heap = getattr(timer, compat.TIMER_HEAP.attr, None)
    ok = isinstance(heap, list) and len(heap) == 1 and compat._is_scheduled(heap[0])
    problem = None if ok else f"{compat.TIMER_HEAP.name} is not a heap of (eta, priority, entry)"
    results.append((compat.TIMER_HEAP, problem))
    checks: dict[str, Callable[[], str | None]] = {
        compat.CONFIRMS.key: lambda: compat.confirms_problem(_stub_channel()),
        compat.RAW_FRAMES.key: _raw_frames_self_check,
        compat.FAST_PATH.key: lambda: compat.fast_path_problem(_app(), _kombu_connection()),
        compat.REPLY_DECLARE.key: _reply_declare_self_check,
        compat.SENT_EVENTS.key: compat.sent_events_problem,
        compat.DELAYED_DELIVERY.key: lambda: _step_self_check(compat.DELAYED_DELIVERY),
        compat.CONTROL_REPLIES.key: lambda: _step_self_check(compat.CONTROL_REPLIES),
        compat.LOOP_THREAD.key: _loop_thread_self_check,
        compat.READ_BUFFER.key: lambda: compat.read_buffer_problem(TCPTransport("localhost:5672")),  # not connected
        compat.STUCK_GUARD.key: lambda: compat.guard_problem(semaphore=_semaphore()),
        compat.FAILOVER_MAILBOX.key: compat.failover_problem,
    }
    for internal in compat.INTERNALS[1:]:
        internal = getattr(compat, compat._NAMES[internal.key])  # as proj.compat has it now (a test may rename it)
        try:
            problem = checks[internal.key]()
        except Exception as exc:  # noqa: BLE001
            problem = f"its check failed: {exc!r}"
        results.append((internal, problem))
    return results


def _stub_channel():
    """An amqp channel on no connection, to look at what its __init__ sets."""

    class Stub:
        channels: dict = {}
        confirm_publish = True

        def _claim_channel_id(self, channel_id):
            return channel_id

    return amqp.Channel(Stub(), 1)


def _app():
    return app


def _kombu_connection():
    return Connection("amqp://localhost//")  # never connected


def _raw_frames_self_check() -> str | None:
    problem = compat.raw_frames_problem()
    if problem:
        return problem
    frames.Template(_app(), TASK_NAME, 1, 131072, reply_to="x", ignore_result=False)  # raises if it differs
    return None


def _reply_declare_self_check() -> str | None:
    found = getattr(celery._state, compat.attrs(compat.REPLY_DECLARE)["_state.task_join_will_block"], None)
    return None if callable(found) else "celery._state has no task_join_will_block()"


def _step_self_check(internal: compat.Internal) -> str | None:
    return compat.step_problem(internal, Consumer.Blueprint.default_steps, DelayedDelivery)


def _loop_thread_self_check() -> str | None:
    hub = Hub()
    try:
        return compat.loop_thread_problem(hub)
    finally:
        hub.close()


def _semaphore():
    return LaxBoundedSemaphore(1)


def main(argv: list[str] | None = None) -> int:
    off = 0
    for internal, problem in self_check():
        state = "ok" if problem is None else f"OFF ({problem}): {internal.loses}"
        off += problem is not None
        print(f" [x] {internal.library} {compat.library_version(internal.library)}: {internal.feature}: {state}")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
