"""A worker whose broker node froze fails over without waiting on that node again.

When the worker's connection is lost (a frozen node: missed heartbeats), Celery's consumer restarts
its bootsteps. The restart's Events step first closes the *old* event connection, to the same node, and
waits for the node's channel close-ok, then its connection close-ok: a frozen node sends neither, so
each wait lasts the event connection's socket timeout (proj/consumer.py's EVENTS_SOCKET_TIMEOUT, 5 s).
Measured on the compose cluster (a ``docker pause``d node): the worker connected to the next node,
then sat 10 s in that close; the new connection's heartbeats went unsent meanwhile, and a second
restart followed. Then Mingle's hello to the other workers went out through the app's producer pool,
whose connection (made at start, to the first node of the list) led to the frozen node: it waited for
a publisher confirm that never came, for minutes, and the new connection was closed for missed
heartbeats meanwhile. Freeze failover took 34-60 s, sometimes several minutes.

:class:`BoundOldEventConnection` is a consumer bootstep whose ``stop`` (run by every restart, before
the steps start again) gives the old event connection's socket a short timeout, only when the
consumer's own connection was dropped after an error (Celery sets it to None then; a warm shutdown
keeps it, and sends its last events as before). A node that answers closes in milliseconds; a
frozen one costs 2 x :data:`CLOSE_TIMEOUT`. The same step makes the worker's remote-control mailbox
publish on the connection it is given (the consumer's, on the node it just reached) instead of the
producer pool: Mingle's hello (what ``proj/chaos/watch.py`` does for its own client). The replies to
``celery inspect`` go out on the event connection, on that node too (``proj/consumer.py``'s Control).

Replacing the mailbox's producer pool relies on kombu's ``Mailbox.producer_pool`` being a cached property
(``proj.compat.FAILOVER_MAILBOX``, checked at worker start): when it is not, one warning says so and the
mailbox keeps Celery's producer pool.
"""

from __future__ import annotations

from contextlib import contextmanager

from celery import bootsteps
from celery.utils.threads import bound_open_broker_sockets

from proj import compat, sentevents

#: Seconds the old event connection may wait for each close-ok after the consumer lost its connection.
CLOSE_TIMEOUT = 0.5


class BoundOldEventConnection(bootsteps.StartStopStep):
    """Bound the old event connection's close after a connection error (see the module's docstring)."""

    label = "proj: bound the old event connection"
    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        if compat.usable(compat.FAILOVER_MAILBOX, compat.failover_problem):
            pool = None  # kombu's Mailbox.producer_or_acquire then publishes on the channel it is given
            if compat.usable(compat.SENT_EVENTS, compat.sent_events_problem):
                pool = UnconfirmedBroadcasts(c)
            setattr(c.app.control.mailbox, compat.attrs(compat.FAILOVER_MAILBOX)["Mailbox.producer_pool"], pool)

    def stop(self, c):
        dispatcher = getattr(c, "event_dispatcher", None)
        if c.connection is None and dispatcher is not None and dispatcher.connection is not None:
            bound_open_broker_sockets(dispatcher.connection, CLOSE_TIMEOUT)


class UnconfirmedBroadcasts:
    """The worker's remote-control broadcasts (Mingle's hello) on the consumer's connection, unconfirmed.

    A broadcast reaches every worker's control queue, each on the node its worker is connected to. On
    RabbitMQ 4.x a node cut off from its cluster keeps its queues in the cluster's metadata, and a message
    routed to one of them is nacked after 7 s (net_setuptime), every time, for as long as the partition lasts
    (measured, 4.3.6). A confirmed hello from a worker that just left that node (its own old control queue
    is there) was nacked and sent again, forever: the worker never got past Mingle. A broadcast asks for
    replies that are waited for with their own timeout; it needs no confirm, as task events need none.
    """

    def __init__(self, c):
        self.c = c

    @contextmanager
    def acquire(self, block: bool = True):
        yield sentevents.event_producer(self.c.connection)


def install(app) -> None:
    """Add the bootstep to ``app``'s workers."""
    app.steps["consumer"].add(BoundOldEventConnection)
