"""A network partition between the nodes of a cluster on one machine: one node cut off from the others.

Every node of a :class:`proj.rabbit.cluster.Cluster` makes its outgoing Erlang distribution connections
from a loopback address of its own (``Node.dist_source``, from :func:`source_address`) and accepts them on
its own port (``Node.dist_port``). :func:`partition` adds iptables rules that drop every packet of the
distribution connections between node ``n`` and each other node, both ways and whichever side opened
the connection: what a switch that fails between the nodes does. Nothing is closed or refused; the
nodes find out by themselves (Erlang's tick, ``net_ticktime``). AMQP, the management API and the CLI
tools (which connect from 127.0.0.1) still reach every node, as clients on the node's side of a real
partition do. :func:`heal` deletes the rules again.

The rules carry a comment naming the cluster's first AMQP port, so :func:`heal_all` (run by
``Cluster.stop``) removes this cluster's rules only. iptables needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import os
import shutil
import subprocess

#: What every rule's comment starts with.
TAG = "proj-netsplit"
CHAIN = "OUTPUT"  # loopback packets pass OUTPUT once (and INPUT once): one chain is enough


class NetsplitError(RuntimeError):
    """A partition could not be made or healed; the message says what to do."""


def source_address(port: int) -> str:
    """The loopback address (127.1.X.Y) a node listening on AMQP ``port`` connects to its peers from."""
    return f"127.1.{port // 256}.{port % 256}"


def partition(cluster, n: int) -> None:
    """Cut node ``n`` off from every other node of ``cluster`` (clients still reach all of them)."""
    _check(cluster)
    for rule in _rules(cluster, n):
        if not _exists(rule):
            _iptables("-I", CHAIN, *rule)


def heal(cluster, n: int) -> None:
    """Remove the rules :func:`partition` added for node ``n``."""
    for rule in _rules(cluster, n):
        while _exists(rule):
            _iptables("-D", CHAIN, *rule)


def heal_all(cluster) -> int:
    """Remove every rule of ``cluster`` (all its nodes); the number removed. Nothing to do without iptables."""
    if shutil.which("iptables") is None or os.geteuid() != 0:
        return 0
    listed = _iptables("-S", CHAIN).stdout.splitlines()
    removed = 0
    for line in listed:
        if f" --comment {_comment(cluster)} " in f"{line} ":
            _iptables("-D", CHAIN, *line.split()[2:])  # "-A OUTPUT <rule>" -> the rule
            removed += 1
    return removed


def partitioned(cluster, n: int) -> bool:
    """Whether node ``n``'s rules are in place."""
    return all(_exists(rule) for rule in _rules(cluster, n))


def _comment(cluster) -> str:
    return f"{TAG}-{cluster.port}"


def _rules(cluster, n: int) -> list[list[str]]:
    node = cluster.node(n)
    tag = ["-m", "comment", "--comment", _comment(cluster)]
    rules = []
    for i in range(1, cluster.size + 1):
        if i == n:
            continue
        peer = cluster.node(i)
        for a, b in ((node, peer), (peer, node)):
            # a's connection to b, both directions: a -> b's port, and b's port -> a.
            rules.append(["-s", a.dist_source, "-p", "tcp", "--dport", str(b.dist_port), *tag, "-j", "DROP"])
            rules.append(["-d", a.dist_source, "-p", "tcp", "--sport", str(b.dist_port), *tag, "-j", "DROP"])
    return rules


def _check(cluster) -> None:
    if shutil.which("iptables") is None:
        raise NetsplitError("iptables is not installed, and a partition is made with it: apt-get install iptables")
    if os.geteuid() != 0:
        raise NetsplitError("a partition is made with iptables, which needs root: run this as root")
    missing = [node.node_name for node in cluster.nodes if not node.dist_source or not node.dist_port]
    if missing:
        raise NetsplitError(
            f"{', '.join(missing)} started without an address of its own for the Erlang distribution: "
            "stop the cluster and start it again with this version of proj"
        )


def _exists(rule: list[str]) -> bool:
    return _iptables("-C", CHAIN, *rule, check=False).returncode == 0


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetsplitError(f"iptables {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
    return done
