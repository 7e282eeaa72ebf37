"""Every Celery setting of the work queue, each tied to the tutorial behaviour it implements.

Read by ``proj.celery`` with ``app.config_from_object("proj.config")``. Values come from the
environment with defaults that work on a laptop. Celery itself gives ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` priority over the values below, so those two names are the ones to set.

Docs: https://docs.celeryq.dev/en/stable/userguide/configuration.html
"""

import os
import sys

from celery.app.defaults import NAMESPACES, flatten

from proj import queues

#: Exit status of a malformed setting: "cannot run" in the one table of every command (proj/cli/exits.py,
#: README "Exit statuses"); a literal here because the app imports none of the tooling.
BAD_SETTING_EXIT = 2


def _env(name: str, default: str, kind=str, choices: tuple[str, ...] = ()):
    """An environment setting; when it is malformed, one clear line on stderr and exit status 2.

    The line is printed here, not carried in ``SystemExit``: a command that catches ``SystemExit`` (click,
    Celery) would otherwise drop it and exit 1 in silence.
    """
    raw = os.environ.get(name, default)
    problem = None
    try:
        value = kind(raw)
    except ValueError:
        problem = f"is not a valid {kind.__name__}: fix or unset it"
    else:
        if choices and value not in choices:
            problem = f"must be one of {', '.join(choices)}"
        elif kind in (int, float) and value < 0:
            problem = "must not be negative"
    if problem:
        print(f"proj: {name}={raw!r} {problem}", file=sys.stderr, flush=True)
        raise SystemExit(BAD_SETTING_EXIT)
    return value


#: The work queue's name, as in the tutorial's ``queue_declare(queue='task_queue', durable=True)``.
QUEUE_NAME = queues.QUEUE_NAME
DEAD_QUEUE_NAME = queues.DEAD_QUEUE_NAME

#: Seconds of work per '.' in a message (the tutorial sleeps one second per dot).
SECONDS_PER_DOT = _env("PROJ_SECONDS_PER_DOT", "1.0", float)

#: ``classic`` (durable, the seed tutorial's queue) or ``quorum`` (the current upstream tutorial's). Both
#: give every tutorial behaviour on RabbitMQ 3.10 and 4.3 (round-robin, redelivery, durability, fair dispatch:
#: the tests run each on both). What differs by version is in the comments of MAX_DELIVERIES,
#: BROKER_CONSUMER_TIMEOUT and task_queues below, and in docs/cluster.md ("Classic or quorum, 3.10 or 4.3").
QUEUE_TYPE = _env("PROJ_QUEUE_TYPE", "classic", str, queues.QUEUE_TYPES)

#: A message delivered this many times without being acked (its task kills the worker every
#: time) is dead-lettered instead of being delivered again, by the worker, with the reason in its headers.
#: The count: on a classic queue proj's own header (x-proj-deliveries, the copy put back carries it); on a
#: quorum queue the broker's x-delivery-count. That counts every return on 3.10 (and 4.0-4.2); on 4.3 only
#: failed deliveries: a basic.reject (Celery's, when a pool process dies) or a consumer gone with the message
#: (a worker killed) count, a basic.nack or a consumer timeout do not. 4.3 also counts every hand-out in
#: x-acquired-count, which proj does not use. The quorum policy sets the broker's delivery-limit to the same
#: number, a backstop for consumers that are not proj: past it RabbitMQ dead-letters the message itself
#: (x-first-death-reason delivery_limit) into task_queue.dead. Without that policy, 4.0+ applies a default
#: limit of 20 and, with no dead-letter exchange, drops the message.
MAX_DELIVERIES = max(1, _env("PROJ_MAX_DELIVERIES", "5", int))

#: A publish that the broker has not confirmed within this many seconds fails.
PUBLISH_TIMEOUT = _env("PROJ_PUBLISH_TIMEOUT", "10", float)

#: Messages larger than this are refused at the producer (RabbitMQ is no blob store).
MAX_MESSAGE_BYTES = _env("PROJ_MAX_MESSAGE_BYTES", str(1024 * 1024), int)

#: Seconds a task may run before its pool process is killed and the task fails (not retried).
TASK_TIME_LIMIT = _env("PROJ_TASK_TIME_LIMIT", "1500", float)

#: The broker's management API (Flower's ``broker_api`` form), when it is not the broker URL's host on
#: port 15672 with the broker's credentials: ``proj queues``, ``proj dead`` and the worker's policy use it.
MANAGEMENT_URL = os.environ.get("PROJ_MANAGEMENT_URL") or None

#: A SQLite file where ``proj.tasks.work`` records every start and finish (``proj chaos`` counts them).
LEDGER = os.environ.get("PROJ_LEDGER") or None

#: The RabbitMQ of proj's private nodes (``proj broker``, demo, lab, bench, chaos, the tests): ``4.3``, the
#: current release, run from a Debian forky root filesystem under bubblewrap (``./dev.sh setup`` builds it),
#: or ``3.10``, Debian 12's own rabbitmq-server package on the host.
RABBITMQ = _env("PROJ_RABBITMQ", "4.3", choices=("4.3", "3.10"))

#: Where the RabbitMQ 4.3 root filesystem is (built once by dev.sh, kept between runs, outside the repository).
RABBITMQ_ROOTFS = os.environ.get("PROJ_RABBITMQ_ROOTFS") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "proj", "rabbitmq-4.3-rootfs"
)

#: The folder holding ``rabbitmq-server`` and ``rabbitmqctl`` of a RabbitMQ of your own, run on the host for
#: proj's private nodes whatever PROJ_RABBITMQ says (default: unset, PROJ_RABBITMQ chooses).
RABBITMQ_BIN = os.environ.get("PROJ_RABBITMQ_BIN") or None

#: A cluster without pause_minority (RabbitMQ 4.x, Khepri): every this many seconds a worker whose broker URL lists
#: several nodes publishes a confirmed probe to a quorum queue; a node that gives no confirm within PROBE_TIMEOUT
#: while another node of the list does is cut off from the majority, and the worker moves (proj/majority.py).
#: 0 turns the probe off. Acknowledgment: a message is never left waiting on a node that cannot serve it.
PROBE_INTERVAL = _env("PROJ_PROBE_INTERVAL", "2", float)
PROBE_TIMEOUT = _env("PROJ_PROBE_TIMEOUT", "4", float)

#: The worker's pool: ``threads`` (proj/threads.py: task threads in the worker's own process, one process per
#: worker) or ``prefork`` (Celery's default: a pool process per task slot). Every tutorial behaviour holds in both.
POOL = _env("PROJ_POOL", "threads", str, ("threads", "prefork"))
#: Threads pool: seconds a task interrupted at its hard time limit may take to stop (a sleep or a read in C ends
#: first) before the worker ends itself with a warm shutdown, for its supervisor to start a clean one.
ABANDON_GRACE = _env("PROJ_ABANDON_GRACE", "10", float)
#: Threads pool: ``one`` keeps each worker's threads on a CPU of its own, claimed through a lock file in
#: CPU_LOCK_DIR (proj/affinity.py: the loop's and the task's threads then hand messages over in one CPU's cache);
#: ``off`` leaves the placement to the kernel.
CPU_AFFINITY = _env("PROJ_CPU_AFFINITY", "off", str, ("one", "off"))
CPU_LOCK_DIR = os.environ.get("PROJ_CPU_LOCK_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
#: Seconds between AMQP heartbeats: a silent connection is given up after two of them (broker_heartbeat).
BROKER_HEARTBEAT = _env("PROJ_BROKER_HEARTBEAT", "8", float)

#: RabbitMQ's consumer_timeout in seconds (its default: 30 minutes). A consumer holding an unacked
#: message longer than that has its channel closed and the message redelivered while it still runs.
#: RabbitMQ 3.10 applies it to every queue; 4.3 to quorum queues only (a classic task_queue's message is then
#: held as long as the worker lives: task_time_limit ends a task that hangs, the STUCK_AFTER guard a message
#: that never starts). 4.3's consumer_disconnected_timeout (60 s) is another thing: how long a quorum queue
#: waits for a consumer whose node it cannot reach before it gives that consumer's messages to others.
BROKER_CONSUMER_TIMEOUT = _env("PROJ_BROKER_CONSUMER_TIMEOUT", "1800", float)

#: Seconds a message reserved by a worker may wait without starting while one of the worker's pool
#: processes is idle, before the worker gives it back to the broker (proj/guard.py; 0 turns the guard off).
#: A healthy worker starts such a message within milliseconds; the slowest legitimate wait is a pool
#: process being replaced and starting (Celery's worker_proc_alive_timeout, 4 s) on a loaded machine.
#: 30 s is well above that, and far below RabbitMQ's consumer_timeout (one hour on proj's nodes), which
#: would otherwise be what ends the wait. The tutorial: a message is never stuck on a worker that cannot do it.
STUCK_AFTER = _env("PROJ_STUCK_AFTER", "30", float)

# -- Where the broker is --------------------------------------------------------------------------

# The tutorial connects to a RabbitMQ on localhost. CELERY_BROKER_URL overrides this.
# Docs: configuration.html#broker-url
broker_url = "amqp://guest:guest@localhost:5672//"

# AMQP heartbeats every 8 s: a worker (or producer) whose node is frozen (a paused VM, a long stall:
# the TCP connection stays open and silent) gives it up after two missed intervals (measured 14-18 s)
# and fails over to the next URL of CELERY_BROKER_URL; Celery's default, 120 s, meant 4-5 minutes.
# Measured on the compose cluster (a `docker pause`d node; proj/failover.py removes two waits on the
# frozen node that made it 34-60+ s): running tasks on another node again after 20-26.5 s (7 failovers:
# p50 23.3 s, max 26.5 s; given up 15-18 s, the frozen node tried first 2.5 s, the event connection
# 3.5 s, mingle 1.5 s). Not lower: the other nodes declare the frozen one down only after net_ticktime
# (15: 11-19 s), and until then the node a worker moves to holds its declarations and confirms; with
# 5 s the worker got there first, blocked past two heartbeats, and lost that connection too (34 s).
# The cost: a heartbeat frame each way every 4 s per connection, and a worker whose main process is
# blocked for over 16 s loses its connection (its running task is then redelivered: prefork's main
# process never runs tasks; `-P solo` would).
# Docs: configuration.html#broker-heartbeat
broker_heartbeat = BROKER_HEARTBEAT

# A worker started before the broker keeps trying instead of exiting (and Celery stops warning).
# Docs: configuration.html#broker-connection-retry-on-startup
broker_connection_retry_on_startup = True

# Publisher confirms bound in time: a producer facing a dead broker fails within PUBLISH_TIMEOUT
# (three connection attempts and two short pauses) instead of hanging; "we don't want to lose any
# task" means the caller must know. Docs: configuration.html#broker-connection-timeout
broker_connection_timeout = PUBLISH_TIMEOUT / 4
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

# -- Durability: "durable queue and persistent messages" -----------------------------------------

# The tutorial publishes to the default exchange ('') with routing key 'task_queue' and declares
# the queue durable, so it survives a broker restart. Producers and workers both declare it, and
# with it task_queue.dead, where every message a worker cannot run ends up (never deleted).
# Its dead-lettering comes from two policies (proj/queues.py), both in effect on 3.10 and 4.3 as the tests
# check: proj-task-queue-classic (dead-letter-exchange, dead-letter-routing-key) for a classic queue,
# proj-task-queue-quorum (the same and delivery-limit = PROJ_MAX_DELIVERIES) for a quorum one.
# Docs: configuration.html#task-queues
task_queues = (queues.work_queue(QUEUE_TYPE),)
task_default_queue = QUEUE_NAME
task_default_exchange = ""
task_default_routing_key = QUEUE_NAME

# delivery_mode=2 in the tutorial: the message is written to disk and survives a broker restart.
# Docs: configuration.html#task-default-delivery-mode
task_default_delivery_mode = "persistent"

# Publisher confirms, which the tutorial recommends when persistence alone is not enough:
# .delay() returns only once the broker has taken responsibility for the message.
# Docs: configuration.html#broker-transport-options
broker_transport_options = {"confirm_publish": True}

# -- Acknowledgment: "a message is removed only after the worker finishes it" --------------------

# Ack after the task returns (the tutorial's basic_ack at the end of the callback), so the
# message of a worker that dies mid-task goes back to the queue.
# Docs: configuration.html#task-acks-late
task_acks_late = True

# A pool child killed mid-task (SIGKILL, OOM) would otherwise have its message acked and lost;
# this rejects it with requeue so another worker gets it.
# Docs: configuration.html#task-reject-on-worker-lost
task_reject_on_worker_lost = True

# The worker's message intake (proj/consumer.py): runs the tutorial's plain-text messages,
# dead-letters what it cannot run instead of deleting it, and bounds redeliveries of a task that
# kills its worker every time (PROJ_MAX_DELIVERIES); it also publishes task events without waiting
# for confirms (1.43x drain throughput on tiny tasks, proj bench). Docs: configuration.html#worker-consumer
worker_consumer = "proj.consumer:Consumer"

# A task running past this fails (TimeLimitExceeded) and is acked: no redelivery loop. It must stay
# below the broker's consumer_timeout (checked at worker start by proj/signals.py). On RabbitMQ 4.3 with a
# classic task_queue it is the only bound on a task that hangs (4.3's consumer_timeout skips classic queues).
# Docs: configuration.html#task-time-limit
task_time_limit = TASK_TIME_LIMIT

# When the connection drops, running acks_late tasks are cancelled: the broker has already put
# their messages back for another worker, so finishing them here would only run them twice.
# Docs: configuration.html#worker-cancel-long-running-tasks-on-connection-loss
worker_cancel_long_running_tasks_on_connection_loss = True

# -- Fair dispatch: "prefetch_count=1" -----------------------------------------------------------

# basic_qos(prefetch_count=1) per process: a busy worker is never handed a second message.
# Docs: configuration.html#worker-prefetch-multiplier
worker_prefetch_multiplier = _env("PROJ_PREFETCH_MULTIPLIER", "1", int)

# Where a task runs. `threads` (proj's default): in a thread of the worker's own process (proj/threads.py), one
# process per worker: each ack sent by the task's thread as the task returns (acknowledgment), one thread per
# prefetched message (fair dispatch), the hard time limit kept by a watchdog. Measured against Celery's
# default, `prefork` (a pool process per slot, killed and replaced past the hard time limit): 1.3-1.4x the
# drain rate, half the memory, latency p99 6 ms instead of 92 (proj bench, docs/performance.md). Choose
# prefork for CPU-bound tasks (threads share one core) or tasks that may crash the interpreter (a pool
# process dies, not the worker). Heartbeats, remote control and task events go on during a task in both.
# `-P` overrides. Docs: configuration.html#worker-pool
worker_pool = {"prefork": "prefork", "threads": "proj.threads:TaskThreads"}[POOL]
# One `celery -A proj worker` is one tutorial worker.py; `-c N` runs N task threads (prefork: processes), one
# message each.
# Docs: configuration.html#worker-concurrency
worker_concurrency = _env("PROJ_CONCURRENCY", "1", int)

# -- Safety ----------------------------------------------------------------------------------

# JSON only: a worker never unpickles a message it is handed.
# Docs: configuration.html#accept-content
accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
result_accept_content = ["json"]

# .delay(...).get() works with no extra server: results come back over RabbitMQ itself. Celery's
# rpc:// backend, whose per-task reply-queue declaration waits for no reply (proj/results.py):
# CELERY_RESULT_BACKEND=rpc:// gives Celery's own, one round trip slower per .delay().
# Docs: configuration.html#result-backend
result_backend = "proj.results:RPCBackend+rpc://"

# -- Seeing it: task events for Flower and `proj lab` --------------------------------------------

# Workers report received/started/succeeded/failed, producers report sent, so Flower sees every task.
# Docs: configuration.html#worker-send-task-events
worker_send_task_events = True
task_send_sent_event = True


# -- What Celery reads -----------------------------------------------------------------------

_CELERY_SETTINGS = frozenset(key for key, _ in flatten(NAMESPACES))


def __dir__() -> list[str]:
    """Celery lists this module with ``dir()`` and takes every name as a setting: show it only its own.

    The ``PROJ_*`` values above (upper case) and the imports are proj's, not Celery's, so
    ``celery -A proj report`` lists real settings only.
    """
    return sorted(name for name in globals() if name in _CELERY_SETTINGS)
