"""Every reach into a private name of Celery, kombu, py-amqp or billiard, checked before it is used.

Each reach is an :class:`Internal`: the library and the versions it was written for, the private name,
the feature it buys and what a user loses when it is off. A feature asks :func:`usable` once per process
(at worker start, or at a producer's first publish) with the objects it would touch; when a name is
missing or has changed shape, the feature is off, one warning line says so (library, version, feature,
what is lost), and the app goes on through Celery's public path. A feature that fails at run time in a
way its check did not foresee is turned off the same way (:func:`turned_off`).

Every private name is looked up through its :class:`Internal` (``attr``: the names, space-separated,
each ``Owner.name`` or a bootstep's ``module:Class``), never as a literal elsewhere, so that a test can
rename it (:func:`renamed`) as a future release would. :func:`attrs` maps each original name to the one
in use.

:data:`INTERNALS` lists them all; :func:`main` checks each against the installed libraries and prints
one line per internal (exit status 1 if any is off)::

    python -m proj.selfcheck
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import amqp
import celery._state
from celery import Task
from celery.events.dispatcher import EventDispatcher
from celery.utils.log import get_logger
from kombu.pidbox import Mailbox

logger = get_logger(__name__)


@dataclass(frozen=True)
class Internal:
    """One private name the app relies on."""

    key: str
    library: str
    written_for: str
    owner: str
    attr: str
    feature: str
    loses: str

    @property
    def name(self) -> str:
        return f"{self.owner}: {self.attr}"

    @property
    def names(self) -> tuple[str, ...]:
        """Each private name (``Owner.name``, or a bootstep's ``module:Class``)."""
        return tuple(self.attr.split())


#: kombu's timer keeps a cancelled entry in its heap until the entry's time comes. billiard's prefork pool
#: schedules every task's hard time limit (task_time_limit, 1500 s) and cancels it when the task ends, so a
#: worker's main process carried every finished task's entry for 25 minutes: ~0.5 KiB per task, ~14 MiB
#: after 30,000 no-op tasks (measured, proj/timelimit.py). Purging cancelled entries keeps it flat.
TIMER_HEAP = Internal(
    key="timer-heap",
    library="kombu",
    written_for="5.7",
    owner="kombu.asynchronous.timer.Timer",
    attr="_queue",  # a heapq list of scheduled(eta, priority, entry)
    feature="flat worker memory with task_time_limit (cancelled time-limit timers purged)",
    loses="the worker's main process grows ~0.5 KiB per task for task_time_limit seconds",
)

#: py-amqp restarts ``confirm_timeout`` at every frame read, so a node that blocks publishers (a memory or
#: disk alarm) while it sends heartbeats held ``.delay()`` as long as the alarm lasted (measured: still
#: waiting after 40 s with PROJ_PUBLISH_TIMEOUT=4, tests/test_publish.py). proj's wait has one deadline.
#: Buys a bound, not speed (the same wait otherwise: 0 % either way on ``.delay()``).
CONFIRMS = Internal(
    key="bounded-confirms",
    library="amqp",
    written_for="5.4",
    owner="amqp.Channel",
    attr="Channel.basic_publish_confirm Channel._basic_publish Channel._confirm_selected Channel._pending",
    feature="publisher confirms waited for within PROJ_PUBLISH_TIMEOUT (proj/confirms.py)",
    loses="a .delay() to a node that blocks publishers (memory or disk alarm) waits as long as the alarm lasts",
)

#: Ready-made AMQP frames written to amqp's socket with its heartbeat bookkeeping (proj/frames.py), each
#: template checked once against amqp's own property encoding of Celery's message. Used by ``send_many``
#: (11,155 against 1,089 messages/s one at a time, docs/performance.md) and by the ``.delay()`` fast path (its
#: task-sent events go out in batches through kombu, proj/sentevents.py). Measured: send_many of 2,000 at
#: 8,533 msgs/s, against 3,453 through kombu's producer on the same channel with this off (2.5x; same node and
#: method as FAST_PATH).
RAW_FRAMES = Internal(
    key="raw-frames",
    library="amqp",
    written_for="5.4 (celery 5.7's task message)",
    owner="amqp.Connection, amqp.Message",
    attr="Connection.transport Connection.bytes_sent Message._serialize_properties",
    feature="task messages written as ready-made frames (send_many, the .delay() fast path)",
    loses="send_many publishes each message through kombu's producer (several times slower), "
    ".delay() takes Celery's path",
)

#: ``.delay()``'s fast path (proj/fastpath.py): Celery's very frames written on the pooled producer's
#: channel. Measured (1,000 ``work.apply_async`` in a loop, one private node, 2 shared cores, one run):
#: 792 against 645 calls/s with ignore_result (+23 %), 811 against 549 with a result (+48 %).
FAST_PATH = Internal(
    key="fast-path",
    library="celery",
    written_for="5.7 (kombu 5.7, amqp 5.4)",
    owner="celery.app.task.Task, celery.app.utils.Settings, kombu.Connection",
    attr="Task._get_exec_options Settings.maps Settings.changes Connection.declared_entities",
    feature=".delay()'s fast path (proj/fastpath.py)",
    loses="every .delay() goes through Celery's send_task (about 1.3 ms of Python more per call)",
)

#: Celery's rpc backend waits for a declare-ok of the sender's reply queue before every task with a
#: result; proj sends the declaration nowait with the task (proj/results.py), unless the process is one
#: where Celery skips it (task_join_will_block: a pool process, whose queue is declared already).
#: Measured: 811 against 644 ``.delay()`` calls/s with a result (+26 %; earlier 589 against 378).
REPLY_DECLARE = Internal(
    key="nowait-reply-queue",
    library="celery",
    written_for="5.7",
    owner="celery._state",
    attr="_state.task_join_will_block",
    feature="the rpc reply queue declared without a round trip of its own (proj/results.py)",
    loses="each .delay() with a result waits for a second round trip (378 against 589 calls/s when measured)",
)

#: The producer's task-sent event on a channel without confirms (proj/sentevents.py), and the bulk
#: publisher's events many to a message. Measured: 792 against 681 ``.delay()`` calls/s (+16 %).
SENT_EVENTS = Internal(
    key="unconfirmed-sent-events",
    library="celery",
    written_for="5.7 (amqp 5.4)",
    owner="celery.events.dispatcher.EventDispatcher, amqp.Channel",
    attr="EventDispatcher._prepare_event EventDispatcher._publish Channel._basic_publish",
    feature="task-sent events published without a publisher confirm of their own (proj/sentevents.py)",
    loses="each .delay() waits for a second confirm (its task-sent event's) through Celery's dispatcher, "
    "and leaves its fast path",
)

#: The consumer step Celery sets native delayed delivery up with, at every (re)connection, through every
#: URL of a failover list, retrying a dead node for about 15 s before the worker consumes again.
DELAYED_DELIVERY = Internal(
    key="delayed-delivery-step",
    library="celery",
    written_for="5.7",
    owner="celery.worker.consumer.Consumer.Blueprint.default_steps, DelayedDelivery",
    attr="celery.worker.consumer.delayed_delivery:DelayedDelivery DelayedDelivery._validate_configuration "
    "DelayedDelivery._setup_delayed_delivery",
    feature="native delayed delivery set up through the node the worker reached only (proj/consumer.py)",
    loses="a worker reconnecting in a cluster with a node down may wait ~15 s for it before it consumes",
)

#: Remote-control replies on the event connection (proj/consumer.py's Control): the event loop never waits
#: on its own connection for a reply's confirm and declare (seen blocked over 16 s under Flower's burst,
#: missing heartbeats: tests/test_flower.py).
CONTROL_REPLIES = Internal(
    key="control-replies",
    library="celery",
    written_for="5.7 (kombu 5.7)",
    owner="celery.worker.consumer.Consumer.Blueprint.default_steps, Control, kombu.pidbox.Node",
    attr="celery.worker.consumer.control:Control Control.box Node.reply",
    feature="remote-control replies sent on the event connection (proj/consumer.py)",
    loses="a burst of remote-control commands (Flower) can block the worker's event loop for seconds: "
    "missed heartbeats, a redelivered task, a worker shown offline",
)

#: kombu 5.7's Hub records its loop's thread: proj acks at once on it and flushes task events on a timer.
#: A solo worker drained 1-2 tasks/s without it (each ack waited for the loop's next timer), 1,583/s with
#: it (docs/performance.md); prefork's main process spent 29 % of its samples flushing events one by one.
LOOP_THREAD = Internal(
    key="loop-thread",
    library="kombu",
    written_for="5.7",
    owner="kombu.asynchronous.Hub",
    attr="Hub._loop_thread",
    feature="acks sent at once and task events batched on the event loop's thread (proj/consumer.py)",
    loses="a solo worker runs 1-2 tasks/s; prefork sends one event message per task event",
)

#: The worker's reader (proj/reader.py): one recv per wake-up of the event loop into py-amqp's read buffer, frames
#: parsed from memory, instead of three recv and two socket-mode switches per frame. Measured: ~50 µs less of the
#: worker's main thread per no-op task (proj bench --variants, "kombu's reader").
READ_BUFFER = Internal(
    key="read-buffer",
    library="amqp",
    written_for="5.4",
    owner="amqp.transport.TCPTransport",
    attr="TCPTransport._read_buffer",
    feature="the worker reads the broker once per wake-up, frames parsed from memory (proj/reader.py)",
    loses="kombu's reader: three recv and two socket-mode switches per frame, a second read per message",
)

#: The stuck-message fix and guard (proj/guard.py): a first-pool process that stalls at start gets
#: Celery's start deadline, and a message held without running while a process is idle is given back.
#: Buys correctness: without it such a message waits for RabbitMQ's consumer_timeout (an hour).
STUCK_GUARD = Internal(
    key="stuck-guard",
    library="celery",
    written_for="5.7 (billiard 4.3, kombu 5.7)",
    owner="celery TaskPool, celery AsynPool, billiard ApplyResult, kombu LaxBoundedSemaphore",
    attr="TaskPool._pool AsynPool._pool AsynPool._fileno_to_inq AsynPool._proc_alive_timeout "
    "AsynPool.outbound_buffer AsynPool._cache ApplyResult._write_to ApplyResult._job LaxBoundedSemaphore._waiting",
    feature="the stuck-message guard and the first pool's start deadline (proj/guard.py)",
    loses="a message a worker reserves but never runs waits for RabbitMQ's consumer_timeout (an hour)",
)

#: Mingle's hello and other mailbox publishes on the consumer's connection, not the producer pool's
#: (proj/failover.py): freeze failover took 34-60 s, sometimes minutes, through the pool's frozen node.
FAILOVER_MAILBOX = Internal(
    key="failover-mailbox",
    library="kombu",
    written_for="5.7",
    owner="kombu.pidbox.Mailbox",
    attr="Mailbox.producer_pool",
    feature="the worker's mailbox publishing on the node it just reached (proj/failover.py)",
    loses="after a node freezes the worker's hello may wait on the frozen node: failover 34-60 s or more",
)

INTERNALS: tuple[Internal, ...] = (
    TIMER_HEAP,
    CONFIRMS,
    RAW_FRAMES,
    FAST_PATH,
    REPLY_DECLARE,
    SENT_EVENTS,
    DELAYED_DELIVERY,
    CONTROL_REPLIES,
    LOOP_THREAD,
    READ_BUFFER,
    STUCK_GUARD,
    FAILOVER_MAILBOX,
)

#: The names as written (attrs() maps each to the one in use, renamed or not).
_ORIGINAL = {internal.key: internal for internal in INTERNALS}

_warned: set[str] = set()
#: key -> why the feature is off, in this process.
_off: dict[str, str] = {}
#: (key, stage) checked already.
_checked: set[tuple[str, str]] = set()

#: Appended to each name by :func:`renamed`.
RENAMED = "_renamed_by_a_future_release"


def renamed(internal: Internal, suffix: str = RENAMED) -> Internal:
    """``internal`` as a library that renamed each of its names would have it (for tests)."""
    return dataclasses.replace(internal, attr=" ".join(name + suffix for name in internal.names))


def attr_of(name: str) -> str:
    """The attribute of ``Owner.name`` (a bootstep's ``module:Class`` is its own)."""
    return name if ":" in name else name.rsplit(".", 1)[-1]


def attrs(internal: Internal) -> dict[str, str]:
    """Each name as written here (``Owner.name``) -> the attribute to look up (renamed in a test).

    Read on every ``.delay()`` and task message (eleven times per ``.delay()``): built once per Internal.
    """
    found = _attrs.get((internal.key, internal.attr))
    if found is None:
        original = _ORIGINAL.get(internal.key, internal)
        names = zip(original.names, internal.names, strict=True)
        found = _attrs[internal.key, internal.attr] = {name: attr_of(now) for name, now in names}
    return found


#: attrs() per Internal's key and names (a renamed Internal, in a test, has names of its own).
_attrs: dict[tuple[str, str], dict[str, str]] = {}


def is_off(internal: Internal) -> bool:
    return internal.key in _off


def off() -> dict[str, str]:
    """Every feature off in this process: key -> why."""
    return dict(_off)


def missing(internal: Internal, **owners) -> str | None:
    """Why ``internal`` cannot be used on ``owners`` (class or object per owner name), or None.

    A name ``Owner.attr`` is looked up (statically: no property runs) on ``owners["Owner"]``; owners not
    given are not looked at (checked later, where the object exists).
    """
    for name in internal.names:
        if ":" in name:
            continue
        owner, _, attr = name.rpartition(".")
        if owner not in owners:
            continue
        try:
            inspect.getattr_static(owners[owner], attr)
        except AttributeError:
            return f"{owner} has no {attr}"
    return None


def library_version(library: str) -> str:
    try:
        return version(library)
    except PackageNotFoundError:
        return "not installed"


def turned_off(internal: Internal, why: str) -> None:
    """Say once per process that ``internal``'s feature is off, and what the user loses."""
    _off.setdefault(internal.key, why)
    if internal.key in _warned:
        return
    _warned.add(internal.key)
    version_ = library_version(internal.library)
    line = (
        f"proj.compat: {internal.library} {version_} (written for {internal.written_for}): "
        f"{internal.feature} is off, {why}: {internal.loses}"
    )
    if _logged_somewhere(logger):
        logger.warning("%s", line)
    else:  # a producer that configured no logging (Celery's loggers have only a NullHandler): never silent
        print(line, file=sys.stderr, flush=True)


def _logged_somewhere(log: logging.Logger) -> bool:
    """Whether a warning of ``log`` reaches a handler that writes it somewhere."""
    current: logging.Logger | None = log
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def usable(internal: Internal, check: Callable[[], str | None], stage: str = "") -> bool:
    """Whether ``internal``'s feature is on: ``check()`` (None if usable, else why not) is run once per
    process and ``stage``; a reason or an exception turns the feature off with one warning."""
    if internal.key in _off:
        return False
    if (internal.key, stage) not in _checked:
        _checked.add((internal.key, stage))
        try:
            why = check()
        except Exception as exc:  # noqa: BLE001 - a changed library may fail in any way
            why = f"its check failed: {exc!r}"
        if why:
            turned_off(internal, why)
            return False
    return True


def reset() -> None:
    """Forget every check and warning of this process (tests)."""
    _warned.clear()
    _off.clear()
    _checked.clear()


def timer_heap(timer) -> list | None:
    """The heap of kombu ``timer``, or None (and one warning) when it is not the list of ``scheduled``
    tuples this app was written for."""
    heap = getattr(timer, TIMER_HEAP.attr, None)
    if not isinstance(heap, list):
        turned_off(TIMER_HEAP, f"Timer has no {TIMER_HEAP.attr} list")
        return None
    if heap and not _is_scheduled(heap[0]):
        turned_off(TIMER_HEAP, f"Timer.{TIMER_HEAP.attr} holds {type(heap[0]).__name__}, not (eta, priority, entry)")
        return None
    return heap


def _is_scheduled(item) -> bool:
    return isinstance(item, tuple) and len(item) == 3 and hasattr(item[2], "canceled")


def purge_cancelled(timer) -> int:
    """Drop the cancelled entries of kombu ``timer``'s heap now; returns how many were dropped.

    kombu skips a cancelled entry when its time comes; dropping it earlier changes nothing it runs.
    """
    heap = timer_heap(timer)
    if heap is None:
        return 0
    kept = [item for item in heap if not item[2].canceled]
    dropped = len(heap) - len(kept)
    if dropped:
        heapq.heapify(kept)
        heap[:] = kept  # in place: the hub holds this very list
    return dropped


# -- The checks: None when an internal is usable on these objects, else why not -------------------------


def _callable_on(owner, attr: str, label: str) -> str | None:
    try:
        found = inspect.getattr_static(owner, attr)
    except AttributeError:
        return f"{label} has no {attr}"
    if not callable(found) and not isinstance(found, (staticmethod, classmethod)):
        return f"{label}.{attr} is not a function"
    return None


def confirms_problem(channel=None) -> str | None:
    """amqp's confirm method to replace and what the replacement uses (on ``channel`` when given)."""

    a = attrs(CONFIRMS)
    for name in ("Channel.basic_publish_confirm", "Channel._basic_publish"):
        problem = _callable_on(amqp.Channel, a[name], "amqp.Channel")
        if problem:
            return problem
    if channel is not None:
        if not isinstance(getattr(channel, a["Channel._confirm_selected"], None), bool):
            return f"an amqp channel has no {a['Channel._confirm_selected']} flag"
        if not isinstance(getattr(channel, a["Channel._pending"], None), dict):
            return f"an amqp channel has no {a['Channel._pending']} dict of awaited methods"
    return None


def raw_frames_problem(amqp_connection=None) -> str | None:
    """amqp's property encoder (the templates' check) and, on a connected ``amqp_connection``, its socket."""

    a = attrs(RAW_FRAMES)
    problem = _callable_on(amqp.Message, a["Message._serialize_properties"], "amqp.Message")
    if problem:
        return problem
    if not isinstance(getattr(amqp.Connection, a["Connection.bytes_sent"], None), int):
        return f"amqp.Connection has no {a['Connection.bytes_sent']} counter (heartbeats)"
    if amqp_connection is not None:
        if not callable(getattr(getattr(amqp_connection, a["Connection.transport"], None), "write", None)):
            return f"an amqp connection has no {a['Connection.transport']}.write()"
        if not isinstance(getattr(amqp_connection, a["Connection.bytes_sent"], None), int):
            return f"an amqp connection has no {a['Connection.bytes_sent']} counter"
    return None


def serialize_properties(message) -> bytes:
    """amqp's encoding of ``message``'s content header properties."""
    return getattr(message, attrs(RAW_FRAMES)["Message._serialize_properties"])()


def write_frames(amqp_connection, data: bytes) -> None:
    """``data`` to the connection's socket, with amqp's heartbeat bookkeeping ("something was sent")."""
    a = attrs(RAW_FRAMES)
    getattr(amqp_connection, a["Connection.transport"]).write(data)
    sent = a["Connection.bytes_sent"]
    setattr(amqp_connection, sent, getattr(amqp_connection, sent) + 1)


def fast_path_problem(app=None, connection=None) -> str | None:
    """What the fast path reads: Celery's exec options, its settings' maps, kombu's declared entities."""

    a = attrs(FAST_PATH)
    problem = _callable_on(Task, a["Task._get_exec_options"], "celery.Task")
    if problem:
        return problem
    if app is not None:
        conf = app.conf
        conf.task_protocol  # configures a pending app
        maps = getattr(app.conf, a["Settings.maps"], None)
        if not isinstance(maps, list) or len(maps) < 2:
            return f"app.conf.{a['Settings.maps']} is not the list of setting maps (changes, then the rest)"
        if not hasattr(getattr(app.conf, a["Settings.changes"], None), "get"):
            return f"app.conf.{a['Settings.changes']} is not the map of run-time changes"
    if connection is not None and not isinstance(getattr(connection, a["Connection.declared_entities"], None), set):
        return f"a kombu connection has no {a['Connection.declared_entities']} set"
    return None


def exec_options(task) -> dict:
    return getattr(task, attrs(FAST_PATH)["Task._get_exec_options"])()


def declared(connection) -> set:
    """kombu's hashes of the entities ``connection`` has declared."""
    return getattr(connection, attrs(FAST_PATH)["Connection.declared_entities"])


def task_join_will_block() -> Callable[[], bool] | None:
    """Celery's "this process must not wait for a result" flag, or None (and one warning)."""

    found = getattr(celery._state, attrs(REPLY_DECLARE)["_state.task_join_will_block"], None)
    if not usable(REPLY_DECLARE, lambda: None if callable(found) else "celery._state has no task_join_will_block()"):
        return None
    return found


def sent_events_problem() -> str | None:

    a = attrs(SENT_EVENTS)
    return (
        _callable_on(EventDispatcher, a["EventDispatcher._prepare_event"], "EventDispatcher")
        or _callable_on(EventDispatcher, a["EventDispatcher._publish"], "EventDispatcher")
        or _callable_on(amqp.Channel, a["Channel._basic_publish"], "amqp.Channel")
    )


def step_problem(internal: Internal, default_steps, step_class) -> str | None:
    """``internal``'s bootstep is among Celery's ``default_steps`` and ``step_class`` has its methods."""
    step = internal.names[0]
    if step not in default_steps:
        return f"Celery's consumer has no step {step} (renamed?): proj's replacement would never run"
    for name in internal.names[1:]:
        owner, _, attr = name.rpartition(".")
        if owner == step_class.__name__:
            problem = _callable_on(step_class, attr, owner)
            if problem:
                return problem
    return None


def control_problem(control) -> str | None:
    """The remote-control step's mailbox node and its reply method."""
    a = attrs(CONTROL_REPLIES)
    node = getattr(getattr(control, a["Control.box"], None), "node", None)
    if not callable(getattr(node, a["Node.reply"], None)):
        return f"Control.{a['Control.box']}.node has no {a['Node.reply']}()"
    return None


def loop_thread_problem(hub) -> str | None:
    if not hasattr(hub, attrs(LOOP_THREAD)["Hub._loop_thread"]):
        return f"kombu's Hub has no {attrs(LOOP_THREAD)['Hub._loop_thread']}"
    return None


def read_buffer_problem(transport) -> str | None:
    """py-amqp's read buffer, as proj/reader.py fills it: bytes on the transport, read by its ``_read``."""
    name = attrs(READ_BUFFER)["TCPTransport._read_buffer"]
    if not isinstance(getattr(transport, name, None), bytes):
        return f"py-amqp's {type(transport).__name__} has no bytes {name}"
    return None


def loop_thread(hub) -> int | None:
    return getattr(hub, attrs(LOOP_THREAD)["Hub._loop_thread"], None)


def guard_problem(task_pool=None, semaphore=None) -> str | None:
    """The pool's and the semaphore's private state the guard reads (on the worker's own when given)."""
    # Here, not at the top: only a worker checks the guard; a producer never loads the prefork pool.
    from billiard.pool import ApplyResult
    from celery.concurrency.prefork import TaskPool

    a = attrs(STUCK_GUARD)
    try:
        inspect.getattr_static(TaskPool, a["TaskPool._pool"])
    except AttributeError:
        return f"celery's prefork TaskPool has no {a['TaskPool._pool']}"
    job = ApplyResult({}, None)
    for name in ("ApplyResult._write_to", "ApplyResult._job"):
        if not hasattr(job, a[name]):
            return f"billiard's ApplyResult has no {a[name]}"
    pool = getattr(task_pool, a["TaskPool._pool"], None) if task_pool is not None else None
    if pool is not None and hasattr(pool, "maintain_pool"):  # billiard's (prefork): not solo or threads
        kinds = {
            "AsynPool._pool": list,
            "AsynPool._fileno_to_inq": dict,
            "AsynPool._proc_alive_timeout": (int, float),
            "AsynPool.outbound_buffer": object,
            "AsynPool._cache": dict,
        }
        for name, kind in kinds.items():
            if not isinstance(getattr(pool, a[name], None), kind):
                return f"the prefork pool has no {a[name]} ({getattr(kind, '__name__', 'tuple')})"
    if semaphore is not None and not hasattr(getattr(semaphore, a["LaxBoundedSemaphore._waiting"], None), "remove"):
        return f"the pool's semaphore has no {a['LaxBoundedSemaphore._waiting']} queue"
    return None


def failover_problem() -> str | None:
    """kombu's Mailbox.producer_pool is a cached property (a value set on the mailbox replaces it)."""

    attr = attrs(FAILOVER_MAILBOX)["Mailbox.producer_pool"]
    try:
        found = inspect.getattr_static(Mailbox, attr)
    except AttributeError:
        return f"kombu's Mailbox has no {attr}"
    if not isinstance(found, functools.cached_property):
        return f"kombu's Mailbox.{attr} is no longer a cached property"
    return None


#: key -> proj.compat's name for the Internal.
_NAMES = {internal.key: name for name, internal in list(globals().items()) if isinstance(internal, Internal)}
