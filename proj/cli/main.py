"""The ``proj`` command: thin click wrappers that parse, then call the modules that do the work."""

from __future__ import annotations

import functools
import importlib
import json
import sys
from pathlib import Path

import click

from proj.cli import tools
from proj.cli.exits import CANNOT_RUN, FAILED, INTERRUPTED, OK
from proj.management import hide_password
from proj.rabbit import cluster as cluster_mod
from proj.rabbit import node as broker_mod

#: Commands that live in their own modules, imported only when used ("module:attribute").
#: A module that is not there (yet) is left out of the command list.
LAZY_COMMANDS = {
    "lab": "proj.cli.lab:lab",
    "queues": "proj.cli.queues:queues",
    "bench": "proj.cli.bench:bench",
    "dead": "proj.cli.dead:dead",
    "chaos": "proj.cli.chaos:chaos",
    "health": "proj.cli.health:health",
}

#: What a lazy command needs of the tooling extra (proj/cli/tools.py), checked when it runs (its --help needs none).
#: ``proj chaos --compose`` checks its own (proj/cli/chaos.py).
NEEDS_TOOLS = {
    "lab": ("matplotlib",),
    "bench": ("pika",),
}


class Group(click.Group):
    """A click group that lists each subcommand's whole summary, wrapped, instead of cutting it at 80 columns."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class LazyGroup(Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def _lazy(self, name: str) -> click.Command | None:
        module_name, attr = LAZY_COMMANDS[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None
            raise
        command = getattr(module, attr)
        if name in NEEDS_TOOLS and not getattr(command, "_needs_tools", False):
            command.callback = _requiring_tools(name, NEEDS_TOOLS[name], command.callback)
            command._needs_tools = True
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name in LAZY_COMMANDS if self._lazy(name) is not None]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        return self._lazy(name)


def _requiring_tools(name: str, modules: tuple[str, ...], callback):
    @functools.wraps(callback)
    def run(*args, **kwargs):
        tools.require(name, *modules)
        return callback(*args, **kwargs)

    return run


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """RabbitMQ's work-queue tutorial as a Celery app."""


# -- proj broker ---------------------------------------------------------------------------------

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".rabbitmq"),
    show_default=True,
    help="Every file the node writes (data, logs, config, plugins) lives here.",
)


def node_options(f):
    f = click.option("--node-name", default=None, help="Erlang node name (default proj-PORT@localhost).")(f)
    f = click.option("--management-port", type=int, default=None, help="Management API/UI port [15672].")(f)
    f = click.option("--port", type=int, default=None, help="AMQP port on 127.0.0.1 [5672].")(f)
    return data_dir_option(f)


def _node(data_dir: Path, port: int | None, management_port: int | None, node_name: str | None) -> broker_mod.Node:
    """Settings given on the command line, else those of the node last started in the data dir, else defaults."""
    return broker_mod.Node.from_data_dir(data_dir, port=port, management_port=management_port, node_name=node_name)


def _fail(message: str) -> None:
    """Bad usage, or the broker command cannot do what it was asked: one line, exit status 2."""
    click.echo(f"proj: {message}", err=True)
    sys.exit(CANNOT_RUN)


@cli.group(cls=Group)
def broker() -> None:
    """A private RabbitMQ node on 127.0.0.1, all its files in one data dir."""


cluster_option = click.option(
    "--cluster",
    "cluster_size",
    type=click.IntRange(3, 7),
    default=None,
    help="A cluster of N nodes (3 to 7) in the data dir: node i on --port + i - 1, --management-port + i - 1.",
)


#: stop and status find a cluster in the data dir by themselves; --cluster N only names its size.
found_cluster_option = click.option(
    "--cluster",
    "cluster_size",
    type=click.IntRange(3, 7),
    default=None,
    help="The data dir's cluster of N nodes (3 to 7); found there without this option too.",
)


def _cluster(data_dir: Path, size: int | None, port: int | None = None, management_port: int | None = None):
    """The cluster of a data dir (its saved settings, or these); None if it holds none and no size is given."""

    if size is None and not cluster_mod.is_cluster_dir(data_dir):
        return None
    return cluster_mod.Cluster.from_data_dir(data_dir, size=size, port=port, management_port=management_port)


@broker.command()
@node_options
@cluster_option
@click.option("--foreground", is_flag=True, help="Stay attached; stop the node on Ctrl+C or SIGTERM.")
def start(data_dir, port, management_port, node_name, cluster_size, foreground) -> None:
    """Start a node (or a cluster) and return once it accepts AMQP connections."""
    try:
        cluster = _cluster(data_dir, cluster_size, port, management_port)
        if cluster is not None:
            if foreground or node_name:
                _fail(f"{'--foreground' if foreground else '--node-name'} is for one node, not a cluster: leave it out")
            cluster.start()
            _print_cluster_started(cluster)
            return
        node = _node(data_dir, port, management_port, node_name)
        if foreground:
            sys.exit(node.run_foreground())
        node.start()
    except broker_mod.BrokerError as exc:
        _fail(str(exc))
    _print_started(node)


def _print_started(node: broker_mod.Node) -> None:
    click.echo(f" [*] RabbitMQ {node.version} node {node.node_name} running, data in {node.data_dir}")
    click.echo(f"export CELERY_BROKER_URL={node.url}")
    click.echo(f"export PROJ_MANAGEMENT_URL={node.management_url}")


def _print_cluster_started(cluster) -> None:
    click.echo(
        f" [*] RabbitMQ {cluster.nodes[0].version} cluster of {cluster.size} nodes running, data in {cluster.data_dir}"
    )
    for i, node in enumerate(cluster.nodes, 1):
        click.echo(
            f" [*] node {i} {node.node_name}: AMQP 127.0.0.1:{node.port}, management 127.0.0.1:{node.management_port}"
        )
    # Quoted: the failover list's ';' would end the command in a shell.
    click.echo(f"export CELERY_BROKER_URL='{cluster.url}'")
    click.echo(f"export PROJ_MANAGEMENT_URL='{cluster.management_url}'")
    click.echo("export PROJ_QUEUE_TYPE=quorum")


@broker.command()
@data_dir_option
@found_cluster_option
def stop(data_dir, cluster_size) -> None:
    """Stop the node (or every node of the cluster) of a data dir (its data stays)."""
    try:
        cluster = _cluster(data_dir, cluster_size)
    except broker_mod.BrokerError as exc:
        _fail(str(exc))
    if cluster is not None:
        if cluster.stop():
            click.echo(f" [*] RabbitMQ cluster of {cluster.size} nodes stopped")
        else:
            click.echo(f" [*] no node of the cluster was running from {cluster.data_dir}")
        return
    node = broker_mod.Node.from_data_dir(data_dir)
    if node.stop():
        click.echo(f" [*] RabbitMQ node {node.node_name} stopped")
    else:
        click.echo(f" [*] no node was running from {node.data_dir}")


@broker.command()
@node_options
@cluster_option
def restart(data_dir, port, management_port, node_name, cluster_size) -> None:
    """Stop and start the node (or cluster), keeping its data: durable queues and persistent messages survive."""
    try:
        cluster = _cluster(data_dir, cluster_size, port, management_port)
        if cluster is not None:
            if node_name:
                _fail("--node-name is for one node, not a cluster: leave it out")
            cluster.restart()
            _print_cluster_started(cluster)
            return
        node = _node(data_dir, port, management_port, node_name)
        node.restart()
    except broker_mod.BrokerError as exc:
        _fail(str(exc))
    _print_started(node)


@broker.command()
@data_dir_option
@found_cluster_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(data_dir, cluster_size, as_json) -> None:
    """Say whether the node (or cluster) of a data dir runs, and on which ports.

    Exit status 0 if it runs (every node of a cluster), 1 if it does not (or some nodes are down).
    """
    try:
        cluster = _cluster(data_dir, cluster_size)
    except broker_mod.BrokerError as exc:
        _fail(str(exc))
    if cluster is not None:
        _cluster_status(cluster, as_json)
        return
    node = broker_mod.Node.from_data_dir(data_dir)
    info = node.status()
    # Where the node is, not its password: status output ends up in logs and bug reports.
    info["url"], info["management_url"] = hide_password(info["url"]), hide_password(info["management_url"])
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif info["running"]:
        click.echo(
            f" [*] {info['node_name']} running (pid {info['pid']}): AMQP 127.0.0.1:{info['port']}, "
            f"management 127.0.0.1:{info['management_port']}, data in {info['data_dir']}"
        )
        click.echo(f"CELERY_BROKER_URL={info['url']}")
        click.echo(f"PROJ_MANAGEMENT_URL={info['management_url']}")
    else:
        click.echo(f" [*] no node running from {info['data_dir']}")
    sys.exit(OK if info["running"] else FAILED)


def _cluster_status(cluster, as_json: bool) -> None:
    info = cluster.status()
    info["url"] = ";".join(hide_password(u) for u in info["url"].split(";"))
    info["management_url"] = hide_password(info["management_url"])
    for node in info["nodes"]:
        node["url"], node["management_url"] = hide_password(node["url"]), hide_password(node["management_url"])
    code = OK if info["health"] == "healthy" else FAILED  # the JSON and the first line say which nodes
    if as_json:
        click.echo(json.dumps(info, indent=2))
        sys.exit(code)
    click.echo(
        f" [*] cluster of {info['size']} nodes in {info['data_dir']}: {info['health']}, "
        f"{info['running']}/{info['size']} running"
        + (f", partitioned from {', '.join(info['partitions'])}" if info["partitions"] else "")
    )
    for node in info["nodes"]:
        state = "running" if node["in_cluster"] else ("starting or cut off" if node["running"] else "down")
        pid = f" (pid {node['pid']})" if node["running"] else ""
        click.echo(
            f"     node {node['number']} {node['node_name']}: {state}{pid}, AMQP 127.0.0.1:{node['port']}, "
            f"management 127.0.0.1:{node['management_port']}"
        )
    for q in info["quorum_queues"]:
        click.echo(
            f"     quorum queue {q['name']}: leader {q['leader']}, {len(q['online'])}/{len(q['members'])} "
            f"replicas online, {q['messages']} messages"
        )
    if info["running"]:
        click.echo(f"CELERY_BROKER_URL={info['url']}")
        click.echo(f"PROJ_MANAGEMENT_URL={info['management_url']}")
    sys.exit(code)


def _existing_cluster(data_dir: Path):

    if not cluster_mod.is_cluster_dir(data_dir):
        _fail(f"no cluster in {data_dir.absolute()}: `proj broker start --cluster 3 --data-dir {data_dir}` starts one")
    return cluster_mod.Cluster.from_data_dir(data_dir)


@broker.command("kill-node")
@data_dir_option
@click.argument("number", type=int)
def kill_node(data_dir, number) -> None:
    """SIGKILL node NUMBER of the cluster (1-based): a crash, for trying failover."""
    try:
        cluster = _existing_cluster(data_dir)
        node = cluster.kill_node(number)
    except broker_mod.BrokerError as exc:
        _fail(str(exc))
    running = len(cluster.running_nodes())
    click.echo(f" [!] node {number} ({node.node_name}) killed with SIGKILL; {running}/{cluster.size} nodes running")


@broker.command("start-node")
@data_dir_option
@click.argument("number", type=int)
def start_node(data_dir, number) -> None:
    """Start node NUMBER of the cluster again; return once the cluster runs it."""
    try:
        cluster = _existing_cluster(data_dir)
        node = cluster.start_node(number)
    except broker_mod.BrokerError as exc:
        _fail(str(exc))
    running = len(cluster.running_nodes())
    click.echo(f" [*] node {number} ({node.node_name}) back in the cluster; {running}/{cluster.size} nodes running")


# -- proj demo -----------------------------------------------------------------------------------


@cli.command()
@click.option("--seconds-per-dot", type=float, default=0.2, show_default=True, help="Work time of one '.'.")
@click.option(
    "--workers",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    help="Workers (one process each) sharing the five messages round-robin.",
)
def demo(seconds_per_dot, workers) -> None:
    """Private broker, two workers, the tutorial's five messages: who got which."""
    # Here, not at the top: the demo's harness (workers, event recorder) is loaded only when it runs.
    from proj.cli.demo import run

    sys.exit(run(seconds_per_dot=seconds_per_dot, workers=workers))


def main(argv: list[str] | None = None) -> int:
    """Run one ``proj`` command; its exit status follows proj/cli/exits.py (README, "Exit statuses")."""
    try:
        code = cli.main(args=argv, prog_name="proj", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            return INTERRUPTED
        click.echo("Aborted.", err=True)
        return FAILED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except ModuleNotFoundError as exc:
        if not tools.is_missing_tool(exc):
            raise
        # a library of the tooling extra that the command's own check did not name: the same one line
        args = sys.argv[1:] if argv is None else argv
        command = next((a for a in args if not a.startswith("-")), "")
        click.echo(tools.message(command), err=True)
        return CANNOT_RUN
    except SystemExit as exc:
        if exc.code is None:
            return OK
        if isinstance(exc.code, int):
            return exc.code
        # SystemExit("one line"), as Python would print it: never swallow what the user must read.
        click.echo(str(exc.code), err=True)
        return CANNOT_RUN
    return code if isinstance(code, int) else OK


if __name__ == "__main__":
    sys.exit(main())
