"""``proj broker`` for real: private nodes on free ports, each in a data dir of its own, never port 5672.

Every node a test starts is stopped at teardown through its data dir, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TIMEOUT, wait_until
from kombu import Connection, Exchange, Producer, Queue

from proj import config
from proj.rabbit.node import STATE_FILE, Node, free_port, port_is_free

PROJ = Path(sys.executable).with_name("proj")
#: A node starts in ~6 s and stops in ~3-6 s; this leaves room for a loaded machine.
NODE_TIMEOUT = 120
STOP_WITHIN = 30


# -- running the CLI -------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{PROJ.parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def proj(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = NODE_TIMEOUT
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PROJ), *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def node_ports(avoid: tuple[int, ...] = ()) -> tuple[int, int]:
    """AMQP and management ports, never the system RabbitMQ's."""
    avoid = (5672, 15672, *avoid)
    port = free_port(avoid=avoid)
    return port, free_port(avoid=(*avoid, port))


class Nodes:
    """The data dirs and foreground processes a test started, for teardown."""

    def __init__(self) -> None:
        self.data_dirs: list[Path] = []
        self.processes: list[subprocess.Popen] = []

    def data_dir(self, path: Path) -> Path:
        self.data_dirs.append(path)
        return path

    def cleanup(self) -> None:
        try:
            for proc in self.processes:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        finally:
            errors = []
            for d in self.data_dirs:
                try:
                    Node.from_data_dir(d).stop()
                except Exception as exc:  # stop the others first, then report
                    errors.append(f"{d}: {exc!r}")
            assert not errors, f"nodes not stopped: {errors}"


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    started = Nodes()
    try:
        yield started
    finally:
        started.cleanup()


# -- what the operating system says about a node ---------------------------------------------------


def recorded_pids(data_dir: Path) -> dict[str, int]:
    """The wrapper script, its process group, epmd (proj-broker.json) and the Erlang VM (rabbitmq.pid)."""
    state = json.loads((data_dir / STATE_FILE).read_text())
    pids = {k: state[k] for k in ("pid", "pgid", "epmd_pid")}
    pids["beam"] = int((data_dir / "rabbitmq.pid").read_text().strip())
    return pids


def process_state(pid: int) -> str | None:
    """The one-letter state in /proc/PID/stat, or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def live(pid: int) -> bool:
    # A zombie has exited; it only waits for a parent that may never reap it.
    return process_state(pid) not in (None, "Z")


def live_group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def leftovers(pids: dict[str, int]) -> list[str]:
    found = [f"{name} {pid}" for name, pid in pids.items() if name != "pgid" and live(pid)]
    found += [f"group member {pid}" for pid in live_group_members(pids["pgid"])]
    return found


def decode_address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (/proc/net/tcp, 32-bit words in host order) -> ``('127.0.0.1', 8080)``."""
    hex_ip, hex_port = hex_address.split(":")
    raw = bytes.fromhex(hex_ip)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(hex_port, 16)


def tcp_listeners() -> list[tuple[str, int, int]]:
    """Every listening TCP socket on the machine: (address, port, socket inode)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    found.append((*decode_address(fields[1]), int(fields[9])))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def open_files(pid: int) -> list[str]:
    files = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("/") and not target.startswith("/dev/"):
                files.append(target)
    return files


def environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def changed_since(folder: Path, since: float) -> list[Path]:
    changed = []
    for path in [folder, *folder.rglob("*")] if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= since:
                changed.append(path)
    return changed


def amqp_works(url: str) -> bool:
    with contextlib.suppress(Exception), Connection(url, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1)
        return True
    return False


def assert_node_gone(data_dir: Path, pids: dict[str, int], ports: list[int]) -> None:
    assert proj("broker", "status", "--data-dir", str(data_dir)).returncode == 1
    wait_until(lambda: not leftovers(pids), 10, f"no live process left of the node's {pids}")
    taken = [p for p in ports if not port_is_free(p)]
    assert not taken, f"ports still taken after stop: {taken}"


# -- the tests -------------------------------------------------------------------------------------


def test_started_node_serves_amqp_on_loopback_keeps_its_files_in_the_data_dir_and_stops_without_leftovers(
    tmp_path, nodes
):
    # Given a data dir and two free ports
    data_dir = nodes.data_dir(tmp_path / "node")
    port, management_port = node_ports()
    started_at = time.time()

    # When the node is started
    started = proj(
        "broker", "start", "--data-dir", str(data_dir), "--port", str(port), "--management-port", str(management_port)
    )

    # Then it says which RabbitMQ it started (PROJ_RABBITMQ: 4.3 by default) and how to reach it
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(f" [*] RabbitMQ {config.RABBITMQ}."), started.stdout
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    assert url in started.stdout
    # And status finds it on those ports
    status = proj("broker", "status", "--data-dir", str(data_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"127.0.0.1:{port}" in status.stdout and f"127.0.0.1:{management_port}" in status.stdout
    # And a client can connect
    assert amqp_works(url)

    # And its files are in the data dir: config, plugins, cookie, log, database
    pids = recorded_pids(data_dir)
    node_name = f"proj-{port}@localhost"
    for name in (
        "rabbitmq.conf",
        "enabled_plugins",
        "advanced.config",
        ".erlang.cookie",
        "rabbitmq.pid",
        f"log/{node_name}.log",
        f"mnesia/{node_name}",
    ):
        assert (data_dir / name).exists(), f"{name} missing from {data_dir}"
    beam_env = environment(pids["beam"])
    for key in (
        "HOME",
        "RABBITMQ_MNESIA_BASE",
        "RABBITMQ_LOG_BASE",
        "RABBITMQ_CONFIG_FILE",
        "RABBITMQ_ENABLED_PLUGINS_FILE",
        "RABBITMQ_PID_FILE",
    ):
        assert Path(beam_env[key]).is_relative_to(data_dir), f"{key}={beam_env[key]}"
    outside = [
        f
        for f in open_files(pids["beam"])
        if not Path(f).is_relative_to(data_dir) and not f.startswith(("/usr/lib/erlang/", "/usr/lib/rabbitmq/"))
    ]
    assert not outside, f"the node has files open outside {data_dir}: {outside}"
    for system_dir in (Path("/var/lib/rabbitmq"), Path("/var/log/rabbitmq"), Path("/etc/rabbitmq")):
        touched = changed_since(system_dir, started_at)
        assert not touched, f"the node wrote into the system's RabbitMQ folders: {touched}"

    # And it listens on 127.0.0.1 only
    node_sockets = socket_inodes(pids["beam"]) | socket_inodes(pids["epmd_pid"])
    listeners = tcp_listeners()
    assert {(a, p) for a, p, _ in listeners if p in (port, management_port)} == {
        ("127.0.0.1", port),
        ("127.0.0.1", management_port),
    }
    node_listeners = {(a, p) for a, p, inode in listeners if inode in node_sockets}
    assert ("127.0.0.1", port) in node_listeners
    assert all(a in ("127.0.0.1", "::1") for a, _ in node_listeners), node_listeners

    # And a second node on the same data dir is refused in one line, the first one untouched
    other_port, other_management_port = node_ports()
    second = proj(
        "broker",
        "start",
        "--data-dir",
        str(data_dir),
        "--port",
        str(other_port),
        "--management-port",
        str(other_management_port),
    )
    assert second.returncode == 2
    assert second.stdout == ""
    assert len(second.stderr.splitlines()) == 1, second.stderr
    assert "already runs" in second.stderr and str(data_dir) in second.stderr
    assert "Traceback" not in second.stderr
    assert port_is_free(other_port) and amqp_works(url)

    # When it is stopped
    state = json.loads((data_dir / STATE_FILE).read_text())["node"]
    stopped = proj("broker", "stop", "--data-dir", str(data_dir), timeout=STOP_WITHIN + 10)

    # Then no process of it is left and its ports are free again
    assert stopped.returncode == 0, stopped.stderr
    assert_node_gone(data_dir, pids, [port, management_port, state["dist_port"], state["epmd_port"]])


def test_restart_keeps_a_durable_queue_and_its_persistent_message_and_defaults_to_dot_rabbitmq(tmp_path, nodes):
    # Given a node started without --data-dir, so in ./.rabbitmq of the current directory
    data_dir = nodes.data_dir(tmp_path / ".rabbitmq")
    port, management_port = node_ports()
    started = proj("broker", "start", "--port", str(port), "--management-port", str(management_port), cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert str(data_dir) in started.stdout
    assert (data_dir / STATE_FILE).exists() and (data_dir / "rabbitmq.conf").exists()
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    # And a durable queue holding one persistent message
    queue = Queue("restart-check", Exchange("", type="direct"), routing_key="restart-check", durable=True)
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        # Confirmed: publish returns once the broker has the message, so the restart cannot outrun it.
        Producer(conn.default_channel).publish(
            "kept across restart",
            routing_key="restart-check",
            declare=[queue],
            delivery_mode=2,
        )
        wait_until(
            lambda: queue(conn.default_channel).queue_declare(passive=True).message_count == 1,
            TIMEOUT,
            "the message in restart-check",
        )
    pids_before = recorded_pids(data_dir)

    # When the node is restarted through the CLI, from the same directory, with no options
    restarted = proj("broker", "restart", cwd=tmp_path)

    # Then it is a new node process on the same port
    assert restarted.returncode == 0, restarted.stderr
    assert url in restarted.stdout
    assert not live(pids_before["beam"])
    assert recorded_pids(data_dir)["beam"] != pids_before["beam"]
    # And the message is still there
    with Connection(url) as conn:
        message = conn.default_channel.basic_get("restart-check", no_ack=True)
        assert message is not None, "the persistent message did not survive the restart"
        body = message.body.decode() if isinstance(message.body, bytes) else message.body
        assert body == "kept across restart"


class ForegroundNode:
    """``proj broker start --foreground`` in a session of its own, as a Procfile or a terminal runs it."""

    def __init__(self, nodes: Nodes, data_dir: Path, ports: tuple[int, int]):
        self.data_dir = nodes.data_dir(data_dir)
        self.port, self.management_port = ports
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.out = data_dir.with_name(f"{data_dir.name}.out")
        with open(self.out, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(PROJ),
                    "broker",
                    "start",
                    "--foreground",
                    "--data-dir",
                    str(data_dir),
                    "--port",
                    str(self.port),
                    "--management-port",
                    str(self.management_port),
                ],
                env=cli_env(PYTHONUNBUFFERED="1"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        nodes.processes.append(self.proc)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.output()}"
        return f"ready: CELERY_BROKER_URL=amqp://guest:***@127.0.0.1:{self.port}//" in self.output()

    def ports(self) -> list[int]:
        state = json.loads((self.data_dir / STATE_FILE).read_text())["node"]
        return [self.port, self.management_port, state["dist_port"], state["epmd_port"]]


def test_foreground_node_stops_cleanly_on_ctrl_c_and_on_sigterm_leaving_nothing_behind(tmp_path, nodes):
    # Given two nodes started in the foreground at once (one per signal, side by side to halve the wait)
    first = node_ports()
    by_signal = {
        signal.SIGINT: ForegroundNode(nodes, tmp_path / "sigint", first),
        signal.SIGTERM: ForegroundNode(nodes, tmp_path / "sigterm", node_ports(avoid=first)),
    }
    for node in by_signal.values():
        wait_until(node.ready, NODE_TIMEOUT, f"the ready line of {node.data_dir.name}")
        assert amqp_works(node.url)
    pids = {signum: recorded_pids(node.data_dir) for signum, node in by_signal.items()}
    ports = {signum: node.ports() for signum, node in by_signal.items()}

    # When each gets its signal
    for signum, node in by_signal.items():
        node.proc.send_signal(signum)

    # Then each exits 0 in time, and no process of either node is left, their ports free
    for signum, node in by_signal.items():
        assert node.proc.wait(STOP_WITHIN) == 0, f"{signum.name}:\n{node.output()}"
        assert "Traceback" not in node.output()
        assert_node_gone(node.data_dir, pids[signum], ports[signum])


def listening_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize("taken", ["--port", "--management-port"])
def test_start_on_a_taken_port_fails_in_one_line_naming_the_port(tmp_path, nodes, taken):
    # Given something already listening on one of the node's ports
    data_dir = nodes.data_dir(tmp_path / "node")
    ports = dict(zip(("--port", "--management-port"), node_ports()))
    with listening_socket(ports[taken]):
        # When a node is started there
        result = proj("broker", "start", "--data-dir", str(data_dir), *(str(x) for kv in ports.items() for x in kv))

    # Then it refuses with one line naming the port, and starts nothing
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {ports[taken]}" in lines[0] and "taken" in lines[0]
    # And leaves no data dir behind (it did not exist before)
    assert not data_dir.exists(), list(data_dir.iterdir())


def test_start_without_rabbitmq_installed_says_how_to_install_it(tmp_path, nodes):
    # Given no rabbitmq-server where PROJ_RABBITMQ_BIN points, nor on PATH
    data_dir = nodes.data_dir(tmp_path / "node")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = cli_env(PROJ_RABBITMQ_BIN=str(empty), PATH=f"{PROJ.parent}{os.pathsep}{empty}")
    port, management_port = node_ports()

    # When a node is started
    result = proj(
        "broker",
        "start",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--management-port",
        str(management_port),
        env=env,
        timeout=TIMEOUT,
    )

    # Then it says, in one line, how to install RabbitMQ
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "apt-get install" in lines[0] and "rabbitmq-server" in lines[0]
    assert "Traceback" not in result.stderr
    assert port_is_free(port)


def test_start_of_rabbitmq_43_not_built_says_how_to_build_it_or_choose_310(tmp_path, nodes):
    # Given no RabbitMQ 4.3 root filesystem where PROJ_RABBITMQ_ROOTFS points
    data_dir = nodes.data_dir(tmp_path / "node")
    env = cli_env(PROJ_RABBITMQ="4.3", PROJ_RABBITMQ_ROOTFS=str(tmp_path / "no-rootfs"))
    env.pop("PROJ_RABBITMQ_BIN", None)
    port, management_port = node_ports()

    # When a node is started
    result = proj(
        "broker",
        "start",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--management-port",
        str(management_port),
        env=env,
        timeout=TIMEOUT,
    )

    # Then it says, in one line, how to build it and how to run 3.10 instead, and leaves nothing behind
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "./dev.sh setup" in lines[0] and "PROJ_RABBITMQ=3.10" in lines[0] and str(tmp_path / "no-rootfs") in lines[0]
    assert not data_dir.exists()


def test_data_of_another_rabbitmq_release_is_refused_in_one_line(tmp_path, nodes):
    # Given a data dir whose node last ran another release than PROJ_RABBITMQ's (4.3 cannot open 3.10's data)
    other = "3.10.8" if config.RABBITMQ == "4.3" else "4.3.6"
    data_dir = nodes.data_dir(tmp_path / "node")
    (data_dir / "mnesia").mkdir(parents=True)
    (data_dir / STATE_FILE).write_text(json.dumps({"node": {}, "rabbitmq": other}))
    port, management_port = node_ports()

    # When a node is started there
    result = proj(
        "broker",
        "start",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--management-port",
        str(management_port),
        timeout=TIMEOUT,
    )

    # Then it refuses in one line naming both releases and the setting that starts the data's own
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"RabbitMQ {other}" in lines[0] and f"PROJ_RABBITMQ={other.rsplit('.', 1)[0]}" in lines[0], lines[0]
    assert port_is_free(port)
