"""A worker leaves a cluster node that is cut off from the majority, by itself.

RabbitMQ 4.x keeps its metadata in Khepri (Raft), where ``cluster_partition_handling`` (3.x's
``pause_minority``) has no effect: a node cut off from the other nodes of its cluster keeps its clients'
connections open and keeps listening. A worker attached to it waits there, connected and given nothing:
the quorum ``task_queue``'s leader and every message are on the majority's side (measured on the
compose cluster, 4.3.6: the worker stayed for the whole 62 s partition). Heartbeats do not help (the
node answers them), and a reconnect would go straight back to it (it accepts connections).

:class:`LeaveMinority` is a consumer bootstep that runs a :class:`Probe` thread when the worker's
broker URL lists several nodes (Celery's failover list). Every ``PROJ_PROBE_INTERVAL`` seconds the probe
publishes one small message, confirmed, to a quorum queue of its own (``proj.probe``, one message long,
the oldest dropped): a quorum queue confirms only what a majority of its nodes wrote, so a node that
cannot reach a majority never confirms it, whichever node leads the queue. When the worker's node gives
no confirm within ``PROJ_PROBE_TIMEOUT``, the probe asks every node of the list at once, round after round;
once one of them confirms while the worker's own node still does not, the worker's node is cut off: the probe
puts that node first in the app's ``broker_read_url`` and ``broker_write_url`` (Celery's public settings:
every connection made from now on, the consumer's, the events' and the producers', starts there) and
shuts the consumer's socket down: the worker loses that connection and Celery's consumer reconnects, as
after any lost connection, to the majority's node (now first). The message the worker was running is
redelivered by the majority as for any lost connection (acks late).

A worker that starts on a node already cut off does not get this far: Mingle's declaration waits on the
node's metadata store, which gives up after 30 s, and Celery reconnects to the first node of the list again.

While the majority itself elects new leaders (the first 10-20 s after a node is cut off, until the others
declare it down: ``net_ticktime``), no node confirms, and nobody moves: a worker on the majority's side
whose probes time out stays where it is, because no other node confirms either, and its own node confirms
again in the same round as the others once the election is over.

Bound: the probe notices within interval + timeout (2 + 4 s by default) and moves within one timeout of
the majority's own election (11-19 s with ``net_ticktime`` 15): consuming from a majority node within 30 s
of the cut (tests/test_cluster.py asserts it for a partition; tests/test_compose_cluster.py for a partition,
a freeze, an isolation and a crash).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from celery import bootsteps
from kombu import Connection, Queue
from kombu.utils.url import maybe_sanitize_url as hide_password

from proj import config

logger = logging.getLogger(__name__)

#: The probe's own queue: quorum (a confirm means a majority wrote it), one message long.
PROBE_QUEUE = Queue(
    "proj.probe",
    durable=True,
    queue_arguments={"x-queue-type": "quorum", "x-max-length": 1},
)


def broker_urls(app, write: bool = False) -> list[str]:
    """The failover list the app's consumers (``write``: producers) connect with (``;``-separated)."""
    url = (app.conf.broker_write_url if write else app.conf.broker_read_url) or app.conf.broker_url
    return [u for u in url.split(";") if u] if isinstance(url, str) else []


def put_first(app, url: str) -> None:
    """Every connection made from now on starts at ``url``, then the rest of the list in its order."""
    urls = broker_urls(app)
    if url in urls:
        i = urls.index(url)
        urls = urls[i:] + urls[:i]
    app.conf.broker_read_url = app.conf.broker_write_url = ";".join(urls)


class Probe(threading.Thread):
    """Publishes a confirmed probe on the worker's node; calls ``on_cut_off(url)`` when it is cut off."""

    def __init__(self, app, current: str, on_cut_off, interval: float, timeout: float):
        super().__init__(name="proj-majority-probe", daemon=True)
        self.app, self.current, self.on_cut_off = app, current, on_cut_off
        self.interval, self.timeout = interval, timeout
        self.others = [u for u in broker_urls(app) if u != current]
        self.stopped = threading.Event()
        self._connections: dict[str, object] = {}

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        try:
            suspect = False
            while not self.stopped.wait(0 if suspect else self.interval):
                if not suspect:
                    suspect = not self.confirms(self.current)
                    if suspect:
                        logger.warning(
                            " [!] no probe confirm from %s within %g s", hide_password(self.current), self.timeout
                        )
                    continue
                # Every node of the list at once, the worker's own included: one round takes one timeout at most.
                answers = self.ask_all([self.current, *self.others])
                if answers[self.current]:
                    suspect = False  # the worker's node confirms again (a majority elected a leader)
                    continue
                majority = next((url for url in self.others if answers[url]), None)
                if majority is None or self.stopped.is_set():
                    continue  # nobody confirms: an election under way, or the whole cluster is down
                logger.warning(
                    " [!] %s is cut off from the majority (%s confirms): moving there",
                    hide_password(self.current),
                    hide_password(majority),
                )
                self.on_cut_off(majority)
                return
        finally:
            for conn in self._connections.values():
                _close(conn)

    def ask_all(self, urls: list[str]) -> dict[str, bool]:
        """Whether each node of ``urls`` confirms a probe, all asked at once."""
        with ThreadPoolExecutor(len(urls)) as pool:
            return dict(zip(urls, pool.map(self.confirms, urls)))

    def confirms(self, url: str) -> bool:
        """Whether the node at ``url`` confirms one probe within the timeout (a new connection if need be)."""
        conn = self._connections.get(url)
        try:
            if conn is None:
                conn = self._connections[url] = self.app.connection_for_write(
                    url,
                    heartbeat=0,
                    connect_timeout=self.timeout,
                    # every wait of this connection (a declare-ok too) bounded, not only the confirm's
                    transport_options={"confirm_publish": True, "read_timeout": self.timeout},
                )
            with conn.Producer() as producer:
                producer.publish(
                    b"probe",
                    routing_key=PROBE_QUEUE.name,
                    declare=[PROBE_QUEUE],
                    delivery_mode=1,
                    retry=False,
                    confirm_timeout=self.timeout,
                    timeout=self.timeout,
                )
            return True
        except Exception as exc:  # noqa: BLE001 - any failure is "no confirm"; the connection is made anew
            logger.debug("probe of %s: %r", hide_password(url), exc)
            _close(self._connections.pop(url, None))
            return False


def _close(conn) -> None:
    if conn is not None:
        try:
            conn.collect()  # drop the socket without waiting on a node that may not answer
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


class LeaveMinority(bootsteps.StartStopStep):
    """Run the probe while the consumer is connected (see the module's docstring)."""

    label = "proj: leave a node cut off from the majority"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.probe: Probe | None = None

    def start(self, c):
        urls = broker_urls(c.app)
        if config.PROBE_INTERVAL <= 0 or len(urls) < 2 or c.connection is None:
            return
        current = _matching(urls, c.connection)
        if current is None:
            return
        connection = c.connection

        def on_cut_off(majority: str) -> None:
            # Every connection made from now on starts at the majority's node; this one is ended under the
            # consumer's feet, whatever it waits for (the event loop, or a declare that node never answers
            # while the worker starts), and Celery's consumer reconnects, as after any lost connection.
            put_first(c.app, majority)
            c.proj_left_cut_off_node = True  # its control queue stays locked there (proj/consumer.py)
            sock = getattr(connection.connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        self.probe = Probe(c.app, current, on_cut_off, config.PROBE_INTERVAL, config.PROBE_TIMEOUT)
        self.probe.start()

    def stop(self, c):
        if self.probe is not None:
            self.probe.stop()
            self.probe = None

    shutdown = stop


def _matching(urls: list[str], connection) -> str | None:
    """The URL of the list the consumer's connection is on (same host and port)."""
    here = (connection.hostname, connection.port)
    for url in urls:
        parsed = Connection(url)
        if (parsed.hostname, parsed.port or 5672) == (here[0], here[1] or 5672):
            return url
    return None


def install(app) -> None:
    """Add the bootstep to ``app``'s workers."""
    app.steps["consumer"].add(LeaveMinority)
