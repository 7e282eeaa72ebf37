"""Publisher confirms waited for within a bound that holds.

py-amqp's ``confirm_timeout`` (``Channel.basic_publish_confirm``, what kombu calls for every publish when
``confirm_publish`` is on) is handed to each frame read, not to the whole wait: every frame that arrives
restarts it. RabbitMQ keeps sending heartbeats on a connection it blocks (a memory or disk alarm) and
never the confirm, so ``.delay()`` waited for as long as the alarm lasted (measured: still waiting after
40 s with ``PROJ_PUBLISH_TIMEOUT=4`` and ``PROJ_BROKER_HEARTBEAT=2``; ``tests/test_publish.py``). proj
waits for a confirm with one deadline: ``confirm_timeout`` from the publish, or sooner what is left of
the call's ``PROJ_PUBLISH_TIMEOUT`` (:func:`deadline`, set by ``proj.tasks`` around ``.delay()``, whose
Celery path may send the message again after a timeout).

:func:`install` puts :func:`basic_publish_confirm` in place of py-amqp's (``proj.celery`` does, so every
process that loads the app has it); ``proj.fastpath`` calls :func:`wait_for_confirm` itself. The amqp names
this needs are ``proj.compat.CONFIRMS``: checked at install (the class) and at the first publish (a
channel); when one is missing or changed, one warning says so and amqp's own wait is used (its
``confirm_timeout`` restarted by every frame, but the call's deadline still stops Celery's re-sends).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import amqp
from amqp import spec
from amqp.exceptions import MessageNacked, RecoverableConnectionError
from vine import ensure_promise

from proj import compat, config

_local = threading.local()

#: The error's text (proj.tasks turns it into one PublishError line).
TIMED_OUT = (
    "no publisher confirm from RabbitMQ within PROJ_PUBLISH_TIMEOUT: the node may be blocking publishers "
    "(a memory or disk alarm: rabbitmq-diagnostics alarms) or not answering"
)


class ConfirmTimeout(TimeoutError):
    """No publisher confirm in time. A ``socket.timeout`` (TimeoutError): kombu and Celery treat it as a connection
    error, so they drop that connection (a late confirm must not be taken for the next message's) and
    reconnect; once the call's deadline has passed nothing more is sent (:func:`basic_publish_confirm`)."""


@contextmanager
def deadline(at: float):
    """Every confirm waited for in this thread, inside the block, is given up at ``at`` (time.monotonic)."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = at if previous is None else min(previous, at)
    try:
        yield
    finally:
        _local.deadline = previous


def time_left() -> float | None:
    """Seconds left of this thread's :func:`deadline` (None outside one)."""
    at = getattr(_local, "deadline", None)
    return None if at is None else max(0.0, at - time.monotonic())


def wait_for_confirm(channel, timeout: float | None) -> None:
    """amqp's ``Channel.wait`` for a basic.ack or basic.nack, ``timeout`` bounding the whole wait.

    Raises MessageNacked on a nack, ConfirmTimeout when no confirm came in time.
    """
    confirmed = ensure_promise(_on_confirm)
    pending = getattr(channel, compat.attrs(compat.CONFIRMS)["Channel._pending"])
    methods = (spec.Basic.Ack, spec.Basic.Nack)
    before = [pending.get(m) for m in methods]
    for m in methods:
        pending[m] = confirmed
    end = getattr(_local, "deadline", None)
    if timeout is not None:
        own = time.monotonic() + timeout
        end = own if end is None else min(end, own)
    try:
        while not confirmed.ready:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                _give_up(channel)
                raise ConfirmTimeout(TIMED_OUT)
            connection = channel.connection
            if connection is None:
                raise RecoverableConnectionError("connection already closed")
            try:
                connection.drain_events(timeout=remaining)
            except TimeoutError as exc:
                _give_up(channel)
                if end is not None and time.monotonic() >= end - 0.01:
                    raise ConfirmTimeout(TIMED_OUT) from exc
                raise
    finally:
        for m, previous in zip(methods, before):
            if previous is None:
                pending.pop(m, None)
            else:
                pending[m] = previous


#: Seconds each read or write may take on a connection given up for a missing confirm.
GIVE_UP_TIMEOUT = 0.5


def _give_up(channel) -> None:
    """Bound the socket of a connection that is about to be dropped for a missing confirm.

    kombu drops it politely: its retry (``Connection.ensure``) moves to the next node of the list with
    ``switch``, which closes the channel and the connection and waits for each close-ok. A node that sent
    no confirm (frozen, or cut off from its cluster) sends no close-ok either: a worker's pool process was
    seen waiting there 71 s for a task's result to be published. Bounded, the close takes a second at most.
    """
    connection = channel.connection
    sock = getattr(connection, "sock", None) if connection is not None else None
    if sock is not None:
        try:
            sock.settimeout(GIVE_UP_TIMEOUT)
        except OSError:
            pass


def _on_confirm(method, *args) -> None:
    if method == spec.Basic.Nack:
        raise MessageNacked()


def basic_publish_confirm(self, *args, **kwargs):
    """py-amqp's ``Channel.basic_publish_confirm``, its wait bounded by :func:`wait_for_confirm`."""
    confirm_timeout = kwargs.pop("confirm_timeout", None)
    at = getattr(_local, "deadline", None)
    if at is not None and time.monotonic() >= at:
        # Celery's re-send after a timeout: past the call's bound, nothing more is sent.
        raise ConfirmTimeout(TIMED_OUT)
    if not usable(self):
        return _amqp_basic_publish_confirm(self, *args, confirm_timeout=confirm_timeout, **kwargs)
    a = compat.attrs(compat.CONFIRMS)
    if not getattr(self, a["Channel._confirm_selected"]):
        setattr(self, a["Channel._confirm_selected"], True)
        self.confirm_select()
    result = getattr(self, a["Channel._basic_publish"])(*args, **kwargs)
    # A publish that names no timeout (a remote-control broadcast, Celery's mingle at a worker's start) waits
    # PROJ_PUBLISH_TIMEOUT too: a message routed to a queue on a node cut off from its cluster is never
    # confirmed (RabbitMQ 4.x keeps the node's clients), and nothing may wait for it forever.
    wait_for_confirm(self, confirm_timeout or kwargs.get("timeout") or config.PUBLISH_TIMEOUT)
    return result


def usable(channel=None) -> bool:
    """Whether proj's bounded wait can be used (on ``channel``: checked at the process's first publish)."""
    if channel is None:
        return compat.usable(compat.CONFIRMS, compat.confirms_problem)
    return compat.usable(compat.CONFIRMS, lambda: compat.confirms_problem(channel), stage="channel")


#: amqp's own method, called when the bounded wait is off.
_amqp_basic_publish_confirm = None
#: The name it was replaced under (uninstall).
_installed_as: str | None = None


def install() -> None:
    """Channels opened from now on wait for their confirms with :func:`wait_for_confirm` (if usable)."""
    global _amqp_basic_publish_confirm, _installed_as
    if not usable():
        return
    name = compat.attrs(compat.CONFIRMS)["Channel.basic_publish_confirm"]
    found = getattr(amqp.Channel, name)
    if found is basic_publish_confirm:
        return
    _amqp_basic_publish_confirm, _installed_as = found, name
    setattr(amqp.Channel, name, basic_publish_confirm)


def uninstall() -> None:
    """amqp's own method back (tests that check the install again with other names)."""
    global _installed_as
    if _installed_as is not None:
        setattr(amqp.Channel, _installed_as, _amqp_basic_publish_confirm)
        _installed_as = None
