"""``proj bench --cluster N``: what a quorum ``task_queue`` on N nodes costs against one classic node.

Both brokers run at once, each with its own W = 2 workers (``PROJ_QUEUE_TYPE`` classic or quorum),
and every figure alternates between them (A B A B ...): confirmed ``.delay()`` publishes one at a
time, bulk publishes (``send_many``'s pipelined confirms), the drain of pre-published no-op tasks, and
the brokers' memory as RabbitMQ reports it (every node of the cluster summed).
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from proj import queues
from proj.bench.fleet import CONTROL_TIMEOUT, CeleryFleet, Loader, QueueProbe
from proj.bench.run import SECONDS_PER_DOT, TIMEOUT, Plan, W, say
from proj.management import Management


class BrokerFleet(CeleryFleet):
    """Workers paused and resumed through their own broker.

    Celery's remote control publishes through its app's producer pool (the app's broker URL) whatever
    connection it is given: with two brokers in one process, the command goes out on the fleet's own
    connection instead (kombu's mailbox without a producer pool publishes on the connection's channel).
    """

    def _control(self, command: str, n: int | None, reply: bool) -> None:
        from kombu import Connection

        from proj.celery import app

        hosts = self.hostnames(n)
        with Connection(self.url) as conn:
            mailbox = app.control.mailbox(conn)
            mailbox.producer_pool = None
            replies = mailbox._broadcast(
                command,
                {"queue": self.queue},
                destination=hosts,
                reply=reply,
                timeout=CONTROL_TIMEOUT,
                limit=len(hosts),
            )
        if reply and len(replies or []) < len(hosts):
            raise RuntimeError(f"{command}: only {len(replies or [])} of {len(hosts)} {self.name} workers answered")


class Setup:
    """One broker (a node or a cluster), its queue type and its paused workers."""

    def __init__(self, name: str, queue_type: str, url: str, management_url: str, log_dir: Path):
        self.name, self.queue_type, self.url, self.management_url = name, queue_type, url, management_url
        self.queue = queues.work_queue(queue_type)
        env = {"PROJ_QUEUE_TYPE": queue_type, "PROJ_MANAGEMENT_URL": management_url}
        self.fleet = BrokerFleet(f"{name}-", url, log_dir, W, seconds_per_dot=SECONDS_PER_DOT, env=env)
        self.probe: QueueProbe | None = None

    def start(self) -> None:
        self.fleet.start()
        self.fleet.wait_ready()
        self.probe = QueueProbe(self.url)
        self.fleet.pause()
        self.probe.wait(self.fleet.queue, lambda r, c: c == 0, 60, f"{self.name} workers paused")

    def publish_one_at_a_time(self, n: int) -> float:
        """Messages per second, ``.delay()``'s path: each publish returns once the broker confirmed it."""
        from proj.celery import app
        from proj.tasks import work

        with app.connection_for_write(self.url) as conn:
            work.apply_async(args=["bench"], connection=conn, ignore_result=True, queue=self.queue)
            started = time.perf_counter()
            for _ in range(n):
                work.apply_async(args=["bench"], connection=conn, ignore_result=True, queue=self.queue)
            elapsed = time.perf_counter() - started
        self.probe.purge(self.fleet.queue)
        return n / elapsed

    def fill(self, messages: list[str]) -> float:
        """Publish ``messages`` pipelined on one confirmed channel (send_many's way); messages per second."""
        from kombu import Producer

        from proj.tasks import work

        self.probe.purge(self.fleet.queue)
        loader = Loader(self.url)
        try:
            producer = Producer(loader.channel, auto_declare=False)
            started = time.perf_counter()
            for m in messages:
                work.apply_async(args=[m], producer=producer, ignore_result=True, queue=self.queue)
            loader.wait_confirms()
            elapsed = time.perf_counter() - started
        finally:
            loader.close()
        self.probe.wait(self.fleet.queue, lambda ready, c: ready == len(messages), 60, "queue filled")
        return len(messages) / elapsed

    def drain(self, n: int) -> float:
        """Tasks per second: ``n`` no-op tasks pre-published, then the W workers resumed at once."""
        self.fill(["bench"] * n)
        queue = self.fleet.queue
        self.fleet.resume(W)
        self.probe.wait(queue, lambda ready, c: ready < n, 60, "first delivery", interval=0.001)
        t0 = time.perf_counter()
        self.probe.wait(queue, lambda ready, c: ready == 0, TIMEOUT, "queue drained")
        elapsed = time.perf_counter() - t0
        self.fleet.pause()
        self.probe.wait(queue, lambda r, c: c == 0, 60, f"{self.name} workers paused")
        return n / elapsed

    def broker_mib(self) -> float:
        nodes = Management(self.management_url).request("GET", "nodes") or []
        return sum(int(n.get("mem_used") or 0) for n in nodes if n.get("running")) / 2**20

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.fleet.stop()
        if self.probe is not None:
            self.probe.close()


def run(plan: Plan, size: int = 3, work_dir: Path | None = None) -> dict:
    from proj.rabbit.cluster import Cluster, free_port_run
    from proj.rabbit.node import private_node

    began = time.monotonic()
    keep = work_dir is not None
    root = Path(work_dir).absolute() if keep else Path(tempfile.mkdtemp(prefix="proj-bench-cluster-"))
    node = private_node(root / "rabbitmq")
    port = free_port_run(size, avoid=(node.port, node.management_port))
    taken = (node.port, node.management_port, *range(port, port + size))
    cluster = Cluster(root / "cluster", size=size, port=port, management_port=free_port_run(size, avoid=taken))
    setups: list[Setup] = []
    try:
        say(f"starting one RabbitMQ node on 127.0.0.1:{node.port} and a cluster of {size} on {port}-{port + size - 1}")
        node.start()
        cluster.start()
        setups = [
            Setup("classic", "classic", node.url, node.management_url, root / "workers"),
            Setup("quorum", "quorum", cluster.url, cluster.management_url, root / "workers"),
        ]
        for s in setups:
            s.start()
        figures = {s.name: {"publish": [], "bulk": [], "drain": []} for s in setups}
        n, tasks = plan.publish_messages, plan.drain_tasks
        say(f"cluster: {n} publishes one at a time, {n} bulk, {tasks} tasks drained on W = {W}, {plan.reps} rotations")
        for _ in range(plan.reps):
            for s in setups:
                figures[s.name]["publish"].append(s.publish_one_at_a_time(n))
            for s in setups:
                figures[s.name]["bulk"].append(s.fill(["bench"] * n))
                s.probe.purge(s.fleet.queue)
            for s in setups:
                figures[s.name]["drain"].append(s.drain(tasks))
        memory = {s.name: s.broker_mib() for s in setups}
    finally:
        for s in setups:
            s.stop()
        with contextlib.suppress(Exception):
            cluster.stop()
        with contextlib.suppress(Exception):
            node.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result: dict = {"size": size, "workers": W, "runs": figures, "elapsed_seconds": time.monotonic() - began}
    for name in ("classic", "quorum"):
        result[name] = {key: statistics.median(values) for key, values in figures[name].items()}
        result[name]["broker_mib"] = memory[name]
    result["ratio"] = {key: result["quorum"][key] / result["classic"][key] for key in result["classic"]}
    return result


def markdown(figures: dict) -> str:
    c, q, r = figures["classic"], figures["quorum"], figures["ratio"]
    rows = [
        ("confirmed publishes, one at a time (`.delay()`, msgs/s)", "publish", "{:,.0f}/s"),
        ("bulk publish, confirms pipelined (msgs/s)", "bulk", "{:,.0f}/s"),
        (f"drain no-op tasks, W = {figures['workers']} (tasks/s)", "drain", "{:,.0f}/s"),
        ("broker memory (every node)", "broker_mib", "{:,.0f} MiB"),
    ]
    lines = [
        f"`proj bench --cluster {figures['size']}`: one classic node against a {figures['size']}-node cluster with a "
        f"quorum `task_queue`, same workers, medians of alternated runs ({figures['elapsed_seconds']:.0f} s).",
        "",
        f"| | one classic node | {figures['size']}-node quorum cluster | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        lines.append(f"| {label} | {fmt.format(c[key])} | {fmt.format(q[key])} | {r[key]:.2f} |")
    return "\n".join(lines) + "\n"
