"""Plain helpers for the tests (fixtures live in conftest.py): waiting on conditions, publishing,
reading the broker's counts. Import them with ``from helpers import ...``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kombu import Connection

from proj import config, queues
from proj.harness.workers import LoggedProcess
from proj.management import Management
from proj.rabbit.node import Node, free_port, private_node

#: task_queue's two types, for ``@pytest.mark.parametrize("queue_type", QUEUE_TYPES)`` (the queue_type fixture).
QUEUE_TYPES = queues.QUEUE_TYPES
#: Workers of Celery's prefork pool (PROJ_POOL=prefork), for the tests of what only it has: a pool process to
#: kill, its start-up, the stuck builds that break it. The default pool is proj's threads pool (proj/threads.py).
PREFORK = {"PROJ_POOL": "prefork"}

#: Seconds per '.' in tests: the tutorial's second, shrunk so the suite runs in minutes.
SECONDS_PER_DOT = 0.1
TIMEOUT = 60


class Poller:
    """Calls ``poll()`` every ``interval`` seconds in a thread of its own, from ``with`` to its end."""

    interval = 0.1

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def start_private_node(data_dir) -> Node:
    return private_node(data_dir).start()


def mgmt_for(node: Node) -> Management:
    return Management(node.management_url)


def forget_producer_connections() -> None:
    """Close this process's pooled producer connections, as a new producer process would start.

    kombu remembers per connection which queues it declared; after a test deletes task_queue, a
    reused connection would publish to a queue that no longer exists without declaring it again.
    """
    from kombu import pools

    from proj.celery import app

    if app._pool is not None:
        app.pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    pools.reset()


def channel_of(consumer: dict) -> str | None:
    """The name of a consumer's channel, as the management API lists it (None while it is not known yet:
    the API gives an empty list until the channel's statistics arrive)."""
    details = consumer.get("channel_details")
    return details.get("name") if isinstance(details, dict) else None


def effective_prefetch(consumer: dict, channel: dict) -> int:
    """The prefetch limit a consumer works under: per consumer (RabbitMQ 4.x, quorum queues) or channel-wide
    (kombu's choice on 3.x), as the management API reports them; 0 is unlimited."""
    return consumer.get("prefetch_count") or channel.get("global_prefetch_count") or channel.get("prefetch_count") or 0


def publish(url: str, messages: list[str], queue_type: str | None = None, **options) -> list[str]:
    """Send each message as ``proj.tasks.work`` through one confirmed connection; returns the task ids.

    ``queue_type``: declare task_queue (and task_queue.dead) of that type, as a producer run with that
    ``PROJ_QUEUE_TYPE`` does (this process's own declaration is ``PROJ_QUEUE_TYPE``'s)."""
    from proj.celery import app
    from proj.tasks import work

    if queue_type is not None:
        options.setdefault("declare", [queues.work_queue(queue_type)])

    with app.connection_for_write(url) as conn:
        return [work.apply_async(args=[m], connection=conn, ignore_result=True, **options).id for m in messages]


def queue_depth(url: str, name: str = config.QUEUE_NAME) -> int:
    """Ready messages in a queue, read with a passive declare (exact, no statistics delay)."""
    with Connection(url) as conn:
        return conn.default_channel.queue_declare(name, passive=True).message_count


def take_raw(url: str) -> list:
    """Every message in task_queue as the broker hands it out (amqp Message), removed from it."""
    taken = []
    with Connection(url) as conn:
        while (message := conn.default_channel.basic_get(config.QUEUE_NAME, no_ack=True)) is not None:
            taken.append(message)
    return taken


def without_ids(message) -> tuple[dict, dict, bytes]:
    properties = {k: v for k, v in message.properties.items() if k not in ("application_headers", "correlation_id")}
    headers = {k: v for k, v in message.headers.items() if k not in ("id", "root_id")}
    return properties, headers, message.body


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "", interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        time.sleep(interval)


# -- a real Flower ---------------------------------------------------------------------------------

FLOWER_USER, FLOWER_PASSWORD = "flower-admin", "Fl0wer-pw-7c1e"


class FlowerProcess(LoggedProcess):
    """``celery -A proj flower`` in its own process group, run from the repository (its flowerconfig.py)."""

    def __init__(
        self,
        log_path: Path,
        broker_url: str,
        *,
        management_url: str | None = None,
        basic_auth: str | None = f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        address: str | None = "127.0.0.1",
        port: int | None = None,
        env: dict[str, str] | None = None,
    ):
        self.port = port or free_port()
        argv = [sys.executable, "-m", "celery", "-A", "proj", "flower", f"--port={self.port}"]
        if address is not None:
            argv.append(f"--address={address}")
        # Nothing of the caller's Flower or management settings leaks in: only what the test says.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_") and k != "PROJ_MANAGEMENT_URL"}
        full_env.update(CELERY_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
        if management_url:
            full_env["PROJ_MANAGEMENT_URL"] = management_url
        if basic_auth:
            full_env["FLOWER_BASIC_AUTH"] = basic_auth
        full_env.update(env or {})
        self.auth = basic_auth.split(",")[0] if basic_auth else None
        super().__init__(argv, log_path, full_env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = TIMEOUT) -> FlowerProcess:
        """Until Flower answers HTTP (with or without credentials)."""

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                f"flower exited ({self.proc.returncode}):\n{self.log()[-3000:]}"
            )
            return self.get("/healthcheck", auth=False)[0] in (200, 401)

        wait_until(answers, timeout, "Flower answers HTTP")
        return self

    def get(self, path: str, auth: bool | str = True) -> tuple[int, object]:
        """(status, body): JSON decoded when it is JSON. ``auth``: True for Flower's user, or "user:password"."""
        req = urllib.request.Request(self.url + path)
        credentials = self.auth if auth is True else auth
        if credentials:
            req.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, None
        with contextlib.suppress(ValueError):
            return status, json.loads(body)
        return status, body.decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM (Flower's clean stop), then SIGKILL the whole group if it lingers."""
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
            self.wait_exit(10)
        self.kill()


def consumers_on_task_queue(mgmt: Management) -> list[dict]:
    return [c for c in mgmt.consumers() if c["queue"]["name"] == config.QUEUE_NAME]


class UnackedSampler(Poller):
    """The broker's count of unacknowledged messages on each channel consuming task_queue, while workers run."""

    def __init__(self, mgmt: Management):
        self.mgmt, self.samples = mgmt, 0
        self.peak_by_channel: dict[str, int] = {}
        self.prefetch_counts: set[int] = set()
        super().__init__()

    @property
    def peak(self) -> int:
        """The most any one channel held at once."""
        return max(self.peak_by_channel.values(), default=0)

    def poll(self) -> None:
        consumers = {channel_of(c): c for c in consumers_on_task_queue(self.mgmt) if channel_of(c)}
        for ch in self.mgmt.channels():
            if ch["name"] in consumers:
                self.samples += 1
                unacked = ch.get("messages_unacknowledged", 0)
                self.peak_by_channel[ch["name"]] = max(self.peak_by_channel.get(ch["name"], 0), unacked)
                self.prefetch_counts.add(effective_prefetch(consumers[ch["name"]], ch))


def flower_online(flower: FlowerProcess) -> set[str]:
    """Workers Flower shows Online: it has their heartbeat events of the last few seconds, so its event
    stream is connected (Flower retries it with a growing pause while the broker starts)."""
    status, body = flower.get("/workers?json=1")
    if status != 200 or not isinstance(body, dict):
        return set()
    return {w["hostname"] for w in body.get("data", []) if w.get("status")}
