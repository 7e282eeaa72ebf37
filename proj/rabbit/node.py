"""A private RabbitMQ node: start, stop, status, restart, with every file inside one data dir.

Which RabbitMQ runs is ``PROJ_RABBITMQ`` (``proj.config.RABBITMQ``), read here only (:func:`find_runtime`):

* ``4.3`` (the default): Debian forky's rabbitmq-server 4.3 with its Erlang, from a root filesystem
  that ``./dev.sh setup`` builds once with mmdebstrap (``PROJ_RABBITMQ_ROOTFS``, by default
  ``~/.cache/proj/rabbitmq-4.3-rootfs``). The server and its CLI tools run under bubblewrap with
  that root filesystem as ``/``, read-only, and the node's data dir bound in at its own path; no
  network, PID or user namespace of their own, so the node listens on the host's 127.0.0.1 and its
  Erlang VM is an ordinary host process (SIGKILL, SIGSTOP and ``rabbitmq.pid`` work as for 3.10).
* ``3.10``: Debian 12's own ``rabbitmq-server`` package, on the host.

Either way the node runs as the current user (Debian's ``/usr/sbin`` wrappers switch to the
``rabbitmq`` user; we call the scripts behind them, so the data dir stays owned by whoever started
it, root included). It listens on 127.0.0.1 only, on ports of its own, with its own Erlang port
mapper (epmd), so several nodes with different data dirs run side by side and none touches a
system RabbitMQ.

Usage::

    node = Node(data_dir=".rabbitmq", port=5672, management_port=15672)
    node.start()          # returns once the node accepts AMQP connections
    print(node.url)       # amqp://guest:guest@127.0.0.1:5672//
    node.restart()        # same data: durable queues and persistent messages survive
    node.stop()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from kombu import Connection

from proj import config
from proj.console import say
from proj.harness.processes import group_alive, in_group, pid_alive, signal_group, signal_pid, spawn, wait_gone
from proj.management import hide_password

#: Where Debian's package puts the scripts that the /usr/sbin wrappers call.
RABBITMQ_BIN_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")
STATE_FILE = "proj-broker.json"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
#: RabbitMQ's consumer_timeout on proj's nodes: one hour.
CONSUMER_TIMEOUT_MS = 3_600_000


class BrokerError(RuntimeError):
    """A node could not be started, reached or stopped; the message says what to do."""


def free_port(avoid: tuple[int, ...] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid and port + 20000 <= 65535:
            return port


def private_node(data_dir: Path | str, **options) -> Node:
    """A node (not started) whose AMQP and management ports are free right now, its files in ``data_dir``."""
    port = free_port()
    return Node(data_dir=data_dir, port=port, management_port=free_port(avoid=(port,)), **options)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def read_state(path: Path) -> dict:
    """A saved state file (JSON), or {} if there is none or it is unreadable: then nothing is known to run."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a RabbitMQ's scripts are run: on the host, or inside a root filesystem under bubblewrap."""

    #: The folder of ``rabbitmq-server`` and ``rabbitmqctl`` as the scripts see it.
    bin_dir: Path
    #: The root filesystem the scripts run in (bubblewrap), or None: the host's.
    rootfs: Path | None = None

    @property
    def version(self) -> str:
        """RabbitMQ's version, from its installed application folder (``rabbitmq_server-4.3.6``), or "unknown"."""
        lib = self.bin_dir.parent / "lib"
        if self.rootfs is not None:
            lib = self.rootfs / lib.relative_to("/")
        found = sorted(lib.glob("rabbitmq_server-*"))
        return found[-1].name.removeprefix("rabbitmq_server-") if found else "unknown"

    def argv(self, tool: str, binds: tuple[Path, ...] = (), die_with_parent: bool = False) -> list[str]:
        """The command running ``tool`` (a script of ``bin_dir``, or an absolute path), with ``binds`` writable."""
        path = str(tool if tool.startswith("/") else self.bin_dir / tool)
        if self.rootfs is None:
            return [path]
        argv = [
            _bwrap(),
            # The root filesystem read-only: one cached copy serves every node, and none changes it.
            *("--ro-bind", str(self.rootfs), "/"),
            *("--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"),
            # minbase has no /etc/hosts: without the host's, "localhost" does not resolve and the node
            # hangs at boot.
            *("--ro-bind", "/etc/hosts", "/etc/hosts"),
        ]
        for d in _outermost(binds):
            argv += ["--bind", str(d), str(d)]
        if die_with_parent:
            argv.append("--die-with-parent")
        return [*argv, "--", path]

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` as the scripts need it inside the root filesystem (its PATH, a UTF-8 locale)."""
        if self.rootfs is None:
            return env
        return {**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def epmd_argv(self) -> list[str]:
        """Erlang's port mapper: the host's (its protocol does not change between Erlang releases), else the root
        filesystem's, which dies with the bubblewrap process that the caller signals."""
        host = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if self.rootfs is None or Path(host).exists():
            return [host]
        return self.argv("/usr/bin/epmd", die_with_parent=True)


def _outermost(dirs: tuple[Path, ...]) -> list[Path]:
    """``dirs`` without those inside another one of them (binding the outer one binds them too)."""
    dirs = sorted({Path(d) for d in dirs}, key=lambda d: len(d.parts))
    kept: list[Path] = []
    for d in dirs:
        if not any(d.is_relative_to(k) for k in kept):
            kept.append(d)
    return kept


def _bwrap() -> str:
    found = shutil.which("bwrap")
    if not found:
        raise BrokerError(
            "bubblewrap (bwrap) is not installed, and RabbitMQ 4.3 runs under it: run `./dev.sh setup` "
            "(or `sudo apt-get install -y bubblewrap`), or set PROJ_RABBITMQ=3.10 for Debian 12's rabbitmq-server"
        )
    return found


def find_runtime() -> Runtime:
    """The RabbitMQ proj's nodes run: PROJ_RABBITMQ_BIN's if set, else PROJ_RABBITMQ's (4.3 or 3.10)."""

    if config.RABBITMQ_BIN or config.RABBITMQ == "3.10":
        return Runtime(find_rabbitmq_bin())
    rootfs = Path(config.RABBITMQ_ROOTFS)
    bin_dir = Path(RABBITMQ_BIN_DIRS[0])
    if not (rootfs / bin_dir.relative_to("/") / "rabbitmq-server").exists():
        raise BrokerError(
            f"RabbitMQ 4.3 is not built: no root filesystem with rabbitmq-server at {rootfs} "
            "(PROJ_RABBITMQ_ROOTFS): run `./dev.sh setup`, which builds it (about 25 s and 250 MB), "
            "or set PROJ_RABBITMQ=3.10 for Debian 12's rabbitmq-server"
        )
    _bwrap()
    return Runtime(bin_dir, rootfs)


def find_rabbitmq_bin() -> Path:
    """The directory with ``rabbitmq-server`` and ``rabbitmqctl``, or a BrokerError saying how to install."""

    if config.RABBITMQ_BIN:
        # An explicit choice is the only place we look: falling back to the system's scripts
        # would silently run another RabbitMQ than the one asked for.
        chosen = Path(config.RABBITMQ_BIN)
        if (chosen / "rabbitmq-server").exists():
            return chosen
        raise BrokerError(
            f"rabbitmq-server is not in PROJ_RABBITMQ_BIN={chosen}: point it at the folder holding "
            "rabbitmq-server and rabbitmqctl, or unset it and run `sudo apt-get install -y rabbitmq-server`"
        )
    for d in (Path(d) for d in RABBITMQ_BIN_DIRS):
        if (d / "rabbitmq-server").exists():
            return d
    found = shutil.which("rabbitmq-server")
    if found and Path(found).resolve().name == "rabbitmq-server":
        return Path(found).resolve().parent
    raise BrokerError(
        "rabbitmq-server is not installed: run `sudo apt-get install -y rabbitmq-server` "
        "(or set PROJ_RABBITMQ_BIN to the folder holding rabbitmq-server and rabbitmqctl)"
    )


@dataclasses.dataclass
class Node:
    """One RabbitMQ node whose files all live in ``data_dir``."""

    data_dir: Path = Path(".rabbitmq")
    port: int = 5672
    management_port: int = 15672
    node_name: str | None = None
    dist_port: int | None = None
    epmd_port: int | None = None
    user: str = "guest"
    password: str = "guest"
    #: RabbitMQ's management statistics interval; short, so queue counts are fresh.
    stats_interval_ms: int = 500
    #: $HOME, where Erlang keeps the cookie (``.erlang.cookie``): the data dir, unless nodes share one.
    home: Path | None = None
    #: False when another process (``proj.rabbit.cluster.Cluster``) runs the epmd at ``epmd_port`` for several nodes.
    own_epmd: bool = True
    #: Lines added to rabbitmq.conf (a cluster's peer discovery, for example).
    extra_config: tuple[str, ...] = ()
    #: Erlang VM flags added to the node's own (``+S 1:1``: one scheduler thread).
    erl_args: str = ""
    #: The loopback address its outgoing Erlang distribution connections come from (a cluster gives each
    #: node its own, so ``proj.rabbit.netsplit`` can cut one node off from the others); None: the kernel's pick.
    dist_source: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if self.home is not None:
            self.home = Path(self.home).absolute()
        self.extra_config = tuple(self.extra_config)
        if not self.node_name:
            self.node_name = f"proj-{self.port}@localhost"
        elif "@" not in self.node_name:
            self.node_name = f"{self.node_name}@localhost"

    # -- what a client needs --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}//"

    @property
    def management_url(self) -> str:
        """The form Flower's ``broker_api`` takes."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.management_port}/api/"

    # -- saved state, so stop/status/restart find the node of a data dir ------------------------

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def _read_state(self) -> dict:
        return read_state(self.state_path)

    @classmethod
    def from_data_dir(cls, data_dir: Path | str, **overrides) -> Node:
        """The node last started in ``data_dir`` (its ports and name), with ``overrides`` applied."""
        state = read_state(Path(data_dir).absolute() / STATE_FILE)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in state.get("node", {}).items() if k in fields}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        kwargs["data_dir"] = Path(data_dir)
        return cls(**kwargs)

    def _write_state(self, **pids) -> None:
        node = dataclasses.asdict(self)
        node["data_dir"] = str(self.data_dir)
        node["home"] = str(self.home) if self.home is not None else None
        node["extra_config"] = list(self.extra_config)
        self.state_path.write_text(json.dumps({"node": node, **pids}, indent=2) + "\n")

    # -- the environment RabbitMQ's scripts read ------------------------------------------------

    def env(self) -> dict[str, str]:
        d = self.data_dir
        env = dict(os.environ)
        # Keep a caller's Erlang and RabbitMQ settings out of our node.
        for key in list(env):
            if key.startswith(("RABBITMQ_", "ERL_")):
                del env[key]
        env.update(
            {
                # The Erlang cookie lives in $HOME/.erlang.cookie: keep it in the data dir (or the cluster's).
                "HOME": str(self.home or d),
                "RABBITMQ_NODENAME": self.node_name,
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                # Erlang distribution on loopback only.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": " ".join(
                    [
                        "-kernel inet_dist_use_interface {127,0,0,1}",
                        *([_connect_from(self.dist_source)] if self.dist_source else []),
                        *([self.erl_args] if self.erl_args else []),
                    ]
                ),
            }
        )
        return env

    def _write_config(self) -> None:
        d = self.data_dir
        (d / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    "# Written by `proj broker`; rewritten at every start.",
                    f"listeners.tcp.1 = 127.0.0.1:{self.port}",
                    "management.tcp.ip = 127.0.0.1",
                    f"management.tcp.port = {self.management_port}",
                    f"collect_statistics_interval = {self.stats_interval_ms}",
                    # Above proj's default task time limit (PROJ_TASK_TIME_LIMIT, 25 min), so a long task
                    # is never redelivered while it still runs (RabbitMQ's default is 30 min). 4.3 also
                    # shows it on each consumer (the management API's consumers, ``consumer_timeout``).
                    f"consumer_timeout = {CONSUMER_TIMEOUT_MS}",
                    f"default_user = {self.user}",
                    f"default_pass = {self.password}",
                    "log.file.level = info",
                    *self.extra_config,
                    "",
                ]
            )
        )
        (d / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (d / "rabbitmq-env.conf").write_text("# Intentionally empty: settings come from `proj broker`.\n")
        if not (d / "advanced.config").exists():
            (d / "advanced.config").write_text("[].\n")

    def _choose_ports(self, state: dict) -> None:
        """Distribution and epmd ports: kept from the last start of this data dir, else free ones."""
        saved = state.get("node", {})
        taken = (self.port, self.management_port)
        if not self.dist_port:
            wanted = saved.get("dist_port") or self.port + 20000
            self.dist_port = wanted if wanted <= 65535 and port_is_free(wanted) else free_port(taken)
        if not self.epmd_port:
            if not self.own_epmd:
                raise BrokerError(f"node {self.node_name} shares an epmd but was given no epmd_port")
            wanted = saved.get("epmd_port")
            self.epmd_port = wanted if wanted and port_is_free(wanted) else free_port(taken + (self.dist_port,))

    # -- lifecycle -----------------------------------------------------------------------------

    def is_running(self) -> bool:
        state = self._read_state()
        return pid_alive(state.get("pid"))

    def start(self, timeout: float = START_TIMEOUT) -> Node:
        """Start the node in the background; return once it accepts AMQP connections."""
        runtime = find_runtime()
        # Every refusal comes before the data dir is created: a refused start leaves nothing behind.
        state = self._read_state()
        if pid_alive(state.get("pid")):
            raise BrokerError(
                f"a node already runs from {self.data_dir} (pid {state['pid']}): "
                f"`proj broker stop --data-dir {self.data_dir}` first"
            )
        saved = state.get("rabbitmq")
        if saved and _release(saved) != _release(runtime.version) and (self.data_dir / "mnesia").is_dir():
            raise BrokerError(
                f"{self.data_dir} holds the data of a RabbitMQ {saved} node, which RabbitMQ {runtime.version} cannot "
                f"open: start it with PROJ_RABBITMQ={_release(saved)}, or pick another --data-dir"
            )
        for name, port in (("AMQP", self.port), ("management", self.management_port)):
            if not port_is_free(port):
                raise BrokerError(
                    f"{name} port {port} on 127.0.0.1 is taken: stop what listens there or pick another "
                    f"with --{'port' if name == 'AMQP' else 'management-port'}"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._choose_ports(state)
        self._write_config()
        (self.data_dir / "log").mkdir(exist_ok=True)

        env = runtime.env(self.env())
        epmd_pid = None
        if self.own_epmd:
            epmd_pid = spawn_epmd(self.epmd_port, env, self.data_dir, self.data_dir / "log" / "epmd.log", runtime).pid
        # Under bubblewrap (4.3) the pid is bubblewrap's, which runs the script as its child in the same
        # process group: the group's signals (kill, freeze) reach the Erlang VM as on the host.
        server = spawn(
            runtime.argv("rabbitmq-server", self._binds()), env, self.data_dir, self.data_dir / "log" / "server.out"
        )
        self._write_state(
            pid=server.pid, pgid=server.pid, epmd_pid=epmd_pid, started_at=time.time(), rabbitmq=runtime.version
        )
        try:
            self.wait_ready(timeout, process=server)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT, process: subprocess.Popen | None = None) -> None:
        """Wait until an AMQP client can log in and the management API answers."""

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise BrokerError(
                    f"rabbitmq-server exited with status {process.returncode} during start-up: "
                    f"see {self.data_dir / 'log'}"
                )
            if port_accepts(self.port) and port_accepts(self.management_port):
                try:
                    with Connection(self.url, connect_timeout=2) as conn:
                        conn.ensure_connection(max_retries=1)
                    return
                except Exception:  # not ready yet: the listener opens before boot completes
                    pass
            time.sleep(0.2)
        raise BrokerError(
            f"RabbitMQ did not accept AMQP on 127.0.0.1:{self.port} within {timeout:.0f} s: see {self.data_dir / 'log'}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the node of this data dir (and its epmd). True if something was running."""
        state = self._read_state()
        pgid, epmd_pid = state.get("pgid"), state.get("epmd_pid")
        was_running = pid_alive(state.get("pid"))
        beam = _read_int(self.data_dir / "rabbitmq.pid")
        # SIGTERM to the Erlang VM is a clean shutdown (queues and messages flushed to disk).
        for pid in (beam, state.get("pid")):
            if in_group(pid, pgid):
                signal_pid(pid, signal.SIGTERM)
        # The node needs epmd only to be found by CLI tools and peers, not to shut down: ending it
        # now means a caller killed mid-stop (honcho's 5 s grace) leaves nothing behind, since the
        # VM finishes its shutdown on its own.
        if pid_alive(epmd_pid):
            signal_pid(epmd_pid, signal.SIGTERM)
        if not wait_gone(pgid, timeout, group=True):
            signal_group(pgid, signal.SIGKILL)
            wait_gone(pgid, 5, group=True)
        wait_gone(epmd_pid, 5)
        if state:
            # Forget the pids; keep the ports, the name and the version for the next start.
            self._write_state(rabbitmq=state.get("rabbitmq"))
        return was_running

    def restart(self) -> Node:
        """Stop and start again with the same data: durable queues and persistent messages survive."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the node: a crash, not a shutdown (for fault tests)."""
        state = self._read_state()
        pgid = state.get("pgid")
        if group_alive(pgid):
            signal_group(pgid, signal.SIGKILL)
            wait_gone(pgid, 10, group=True)

    def freeze(self) -> None:
        """SIGSTOP every process of the node: frozen, not dead (a paused VM, a long stall). Its TCP
        connections stay open and its port still accepts connections, but nothing answers."""
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen node runs again, from where it stopped."""
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, sig: int) -> None:
        if not signal_group(self._read_state().get("pgid"), sig):
            raise BrokerError(f"node {self.node_name} is not running")

    @property
    def version(self) -> str | None:
        """The RabbitMQ version this data dir's node last started with (None before its first start)."""
        return self._read_state().get("rabbitmq")

    def _binds(self) -> tuple[Path, ...]:
        """What a node's scripts write: its data dir, and $HOME (the Erlang cookie) when it is elsewhere."""
        return (self.data_dir,) if self.home is None else (self.data_dir, self.home)

    def status(self) -> dict:
        state = self._read_state()
        running = pid_alive(state.get("pid"))
        return {
            "running": running,
            "rabbitmq": state.get("rabbitmq"),
            "node_name": self.node_name,
            "data_dir": str(self.data_dir),
            "pid": _read_int(self.data_dir / "rabbitmq.pid") if running else None,
            "port": self.port,
            "management_port": self.management_port,
            "amqp_accepting": running and port_accepts(self.port),
            "management_accepting": running and port_accepts(self.management_port),
            "url": self.url,
            "management_url": self.management_url,
        }

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node (the tutorial's inspection tool)."""
        return self._cli("rabbitmqctl", args, timeout)

    def rabbitmq_queues(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``rabbitmq-queues -n NODE ARGS`` against this node (quorum queue members)."""
        return self._cli("rabbitmq-queues", args, timeout)

    def _cli(self, tool: str, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
        # The node's own RabbitMQ: 3.10's CLI cannot talk to a 4.3 node, nor 4.3's to a 3.10 one.
        runtime = find_runtime()
        return subprocess.run(
            [*runtime.argv(tool, self._binds()), "-n", self.node_name, *args],
            env=runtime.env(self.env()),
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_foreground(self) -> int:
        """Start, then stay attached until SIGINT or SIGTERM, then stop cleanly (for the Procfile)."""
        stopping = []

        def on_signal(signum, frame):
            stopping.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()

            say(f" [*] RabbitMQ {self.version} {self.node_name} ready: CELERY_BROKER_URL={hide_password(self.url)}")
            say(f" [*] management API: {hide_password(self.management_url)}")
            while not stopping and self.is_running():
                time.sleep(0.2)
            if not stopping:
                print(f"RabbitMQ node {self.node_name} exited by itself: see {self.data_dir / 'log'}")
                return 1
            return 0
        finally:
            self.stop()
            for s, handler in old.items():
                signal.signal(s, handler)


def spawn_epmd(port: int, env: dict, cwd: Path, log: Path, runtime: Runtime | None = None) -> subprocess.Popen:
    """Erlang's port mapper on 127.0.0.1:``port``, where nodes register and peers and CLI tools find them."""
    argv = (runtime or find_runtime()).epmd_argv()
    return spawn([*argv, "-port", str(port), "-address", "127.0.0.1"], env, cwd, log)


def _connect_from(address: str) -> str:
    """The Erlang flag that makes a node's outgoing distribution connections come from ``address``."""
    return "-kernel inet_dist_connect_options [{ip,{" + address.replace(".", ",") + "}}]"


def _release(version: str) -> str:
    """``4.3`` of ``4.3.6``: nodes of one release read each other's data."""
    return ".".join(version.split(".")[:2])


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
