"""Every Celery setting of the work queue, each tied to the tutorial behaviour it implements.

Read by ``proj.celery`` with ``app.config_from_object("proj.config")``. Values come from the
environment with defaults that work on a laptop. Celery itself gives ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` priority over the values below, so those two names are the ones to set.

Docs: https://docs.celeryq.dev/en/stable/userguide/configuration.html
"""

from __future__ import annotations

import os

from kombu import Exchange, Queue

#: The work queue's name, as in the tutorial's ``queue_declare(queue='task_queue', durable=True)``.
QUEUE_NAME = "task_queue"

#: Seconds of work per '.' in a message (the tutorial sleeps one second per dot).
SECONDS_PER_DOT = float(os.environ.get("PROJ_SECONDS_PER_DOT", "1.0"))

# -- Where the broker is --------------------------------------------------------------------------

# The tutorial connects to a RabbitMQ on localhost. CELERY_BROKER_URL overrides this.
# Docs: configuration.html#broker-url
broker_url = "amqp://guest:guest@localhost:5672//"

# A worker started before the broker keeps trying instead of exiting (and Celery stops warning).
# Docs: configuration.html#broker-connection-retry-on-startup
broker_connection_retry_on_startup = True

# -- Durability: "durable queue and persistent messages" -----------------------------------------

# The tutorial publishes to the default exchange ('') with routing key 'task_queue' and declares
# the queue durable, so it survives a broker restart. Producers and workers both declare it.
# Docs: configuration.html#task-queues
task_queues = (Queue(QUEUE_NAME, Exchange("", type="direct"), routing_key=QUEUE_NAME, durable=True),)
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

# When the connection drops, running acks_late tasks are cancelled: the broker has already put
# their messages back for another worker, so finishing them here would only run them twice.
# Docs: configuration.html#worker-cancel-long-running-tasks-on-connection-loss
worker_cancel_long_running_tasks_on_connection_loss = True

# -- Fair dispatch: "prefetch_count=1" -----------------------------------------------------------

# basic_qos(prefetch_count=1) per process: a busy worker is never handed a second message.
# Docs: configuration.html#worker-prefetch-multiplier
worker_prefetch_multiplier = int(os.environ.get("PROJ_PREFETCH_MULTIPLIER", "1"))

# One `celery -A proj worker` is one tutorial worker.py; `-c N` runs N processes, one message each.
# Docs: configuration.html#worker-concurrency
worker_concurrency = int(os.environ.get("PROJ_CONCURRENCY", "1"))

# -- Safety ----------------------------------------------------------------------------------

# JSON only: a worker never unpickles a message it is handed.
# Docs: configuration.html#accept-content
accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
result_accept_content = ["json"]

# .delay(...).get() works with no extra server: results come back over RabbitMQ itself.
# Docs: configuration.html#result-backend
result_backend = "rpc://"

# -- Seeing it: task events for Flower and `proj lab` --------------------------------------------

# Workers report received/started/succeeded/failed, producers report sent, so Flower sees every task.
# Docs: configuration.html#worker-send-task-events
worker_send_task_events = True
task_send_sent_event = True
