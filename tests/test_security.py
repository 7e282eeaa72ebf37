"""Locked-down defaults, each proven for real: JSON only (a pickled task is never unpickled nor run), the
private broker and Flower listen on the loopback only, no secret is committed, and credentials in URLs
are never printed (worker banner and logs, new-task errors, Flower, ``proj broker status``).

What runs where is read from the kernel (/proc/net/tcp{,6} and each process's sockets), what a worker
did from its own log and Celery's event stream, what is committed from git.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import urllib.parse
import uuid
from ipaddress import ip_address
from pathlib import Path

import pytest
from helpers import TIMEOUT, publish, wait_until
from kombu import Connection, Producer
from test_flower import FlowerProcess

from proj import config
from proj.rabbit.node import STATE_FILE, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: A user of the session's node whose password no output may show.
SECRET_USER, SECRET_PASSWORD = "secret-user", "S3cr3t-pw-a41f9"


# -- what the kernel says a process listens on -----------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if m := re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd)):
                inodes.add(int(m.group(1)))
    return inodes


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order.
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    inodes = _socket_inodes(pid)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], int(fields[9])
                if state == "0A" and inode in inodes:  # 0A: LISTEN
                    address, port = local.split(":")
                    found.add((_address(address), int(port, 16)))
    return found


def node_pids(node) -> dict[str, int]:
    state = json.loads((node.data_dir / STATE_FILE).read_text())
    return {"beam": int((node.data_dir / "rabbitmq.pid").read_text()), "epmd": state["epmd_pid"]}


# -- JSON only -------------------------------------------------------------------------------------


class Unpickled:
    """Touches a file when unpickled: the proof that a worker ran pickle.loads on a message."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def publish_pickled_task(url: str, message: str, proof: Path) -> str:
    """A complete Celery (protocol 2) task message for proj.tasks.work, pickled, as a pickle producer sends it."""
    task_id = str(uuid.uuid4())
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None, "proof": Unpickled(proof)}
    body = pickle.dumps(((message,), {}, embed), protocol=pickle.HIGHEST_PROTOCOL)
    headers = {
        "lang": "py",
        "task": "proj.tasks.work",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "argsrepr": repr((message,)),
        "kwargsrepr": "{}",
        "origin": "test_security",
        "retries": 0,
        "eta": None,
        "expires": None,
        "shadow": None,
        "timelimit": [None, None],
    }
    with Connection(url) as conn:
        Producer(conn).publish(
            body,
            exchange="",
            routing_key=config.QUEUE_NAME,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers=headers,
            delivery_mode=2,
            correlation_id=task_id,
            declare=list(config.task_queues),
        )
    return task_id


def test_a_pickled_task_message_is_never_unpickled_nor_run_by_a_worker(fresh_queue, recorder, start_worker, tmp_path):
    # Given a pickled proj.tasks.work message whose unpickling would create a file, and a JSON one behind it
    proof = tmp_path / "unpickled"
    pickled_id = publish_pickled_task(fresh_queue.url, "Pickled message.", proof)
    (json_id,) = publish(fresh_queue.url, ["Json message."])

    # When one worker (one message at a time, in queue order) has got through both
    worker = start_worker("pickle-w1", fresh_queue.url)
    recorder.wait_for(lambda r: json_id in r.tasks and r.tasks[json_id].done, TIMEOUT)

    # Then the JSON task ran
    assert recorder.tasks[json_id].succeeded
    # And the pickled one was never unpickled, never started, never reported by the worker
    assert not proof.exists(), "a worker unpickled a message"
    record = recorder.tasks.get(pickled_id)
    assert record is None or not (record.received or record.started or record.succeeded or record.failed), record
    assert "Pickled message." not in worker.log()
    assert worker.log().count(" [x] Received ") == 1


# -- the loopback only -----------------------------------------------------------------------------


def test_private_broker_listens_on_127_0_0_1_only(broker):
    # Given the session's node, started by proj.rabbit.node
    pids = node_pids(broker)

    # When the kernel is asked what the Erlang VM and its epmd listen on
    beam, epmd = listening(pids["beam"]), listening(pids["epmd"])

    # Then the VM listens on 127.0.0.1 only: AMQP, management and Erlang distribution
    assert {address for address, _ in beam} == {"127.0.0.1"}, beam
    assert {broker.port, broker.management_port} <= {port for _, port in beam}
    # And epmd on the loopback only (IPv4 and IPv6)
    assert epmd and all(ip_address(address).is_loopback for address, _ in epmd), epmd


def test_flower_listens_on_127_0_0_1_only_when_no_address_is_given(broker, tmp_path):
    # Given Flower started without --address and without a password
    flower = FlowerProcess(tmp_path / "flower.log", broker.url, basic_auth=None, address=None)
    try:
        flower.start().wait_ready()

        # When the kernel is asked what it listens on
        sockets = listening(flower.proc.pid)
    finally:
        flower.stop()

    # Then it is its port on 127.0.0.1 only (Flower's own default would be every interface)
    assert sockets == {("127.0.0.1", flower.port)}, sockets


def test_flowers_api_answers_401_without_credentials_until_the_readme_variable_opens_it(broker, tmp_path):
    # Given Flower on the loopback without FLOWER_BASIC_AUTH, and the variable the README names
    text = (REPO_ROOT / "README.md").read_text()
    assert "FLOWER_UNAUTHENTICATED_API" in text and "401" in text
    closed = FlowerProcess(tmp_path / "closed.log", broker.url, basic_auth=None)
    opened = FlowerProcess(
        tmp_path / "open.log", broker.url, basic_auth=None, env={"FLOWER_UNAUTHENTICATED_API": "true"}
    )
    try:
        closed.start()
        opened.start()
        closed.wait_ready()
        opened.wait_ready()

        # When each is asked for its workers through the API
        # Then the first answers 401 (Flower 2 closes its API without credentials), the second 200
        assert closed.get("/api/workers", auth=False)[0] == 401
        assert opened.get("/api/workers", auth=False)[0] == 200
    finally:
        closed.stop()
        opened.stop()


# -- nothing secret in git -------------------------------------------------------------------------

#: Tokens and keys that must never be in a tracked file.
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "API key": re.compile(r"\bsk-[A-Za-z0-9]{32,}\b"),
}
#: A password in a URL or a *_PASS/*_PASSWORD setting outside the tests is one of these placeholders, or
#: RabbitMQ's guest (which only ever logs in from the loopback).
PLACEHOLDER = re.compile(
    r"guest|change-me|password|PASSWORD|pass|[a-z]|\*+|\.\.\.|<[^>]*>|\$\{[^}]*\}|\$\(?\w+\)?|\{[^}]*\}|",
)
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^:/@\s'\"]+:([^@\s'\"/]*)@")
PASSWORD_SETTING = re.compile(
    r"^\s*(?:export\s+)?\w*(?:PASS|PASSWORD|SECRET|TOKEN)\w*\s*[=:]\s*['\"]?([^'\"\s#]+)", re.M
)
BASIC_AUTH_SETTING = re.compile(r"FLOWER_BASIC_AUTH\s*[=:]\s*['\"]?[^:'\"\s]+:([^'\"\s,}#\[\]]+)")
#: Compose's and sh's ${VAR}, ${VAR:-default}, ${VAR:?message}: a reference, not a value.
INTERPOLATION = re.compile(r"\$\{[^}]*\}")


def committed_files() -> list[Path]:
    """Tracked files and new files git would add (not ignored): what a commit can contain."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=TIMEOUT,
    )
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {result.stderr.decode(errors='replace').strip()}")
    return [REPO_ROOT / name for name in result.stdout.decode().split("\0") if name and (REPO_ROOT / name).is_file()]


def test_no_key_token_or_real_password_is_committed():
    findings = []
    for path in committed_files():
        # Given every file a commit can contain
        relative = path.relative_to(REPO_ROOT)
        assert path.name not in (".env", ".erlang.cookie", "id_rsa") and path.suffix not in (".pem", ".key"), relative
        try:
            text = INTERPOLATION.sub("${}", path.read_text())
        except (UnicodeDecodeError, OSError):
            continue  # binary (a screenshot): no text secret in it

        # Then it holds no key or token
        findings += [f"{relative}: {kind}" for kind, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
        # And outside the tests (which use made-up passwords to prove they are never printed) every
        # password in a URL or a setting is a placeholder
        if relative.parts[0] != "tests":
            for pattern in (URL_PASSWORD, PASSWORD_SETTING, BASIC_AUTH_SETTING):
                for value in pattern.findall(text):
                    if not PLACEHOLDER.fullmatch(value) and not value.endswith(("change-me", "password")):
                        findings.append(f"{relative}: password {value!r}")
    assert not findings, findings


def test_env_files_are_ignored_by_git_and_docker():
    # Given the places a developer's credentials live
    # When git is asked whether it would commit them
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", ".env", ".rabbitmq/.erlang.cookie"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    # Then it ignores both (.env holds the passwords; the data dir holds the Erlang cookie)
    assert result.stdout.split() == [".env", ".rabbitmq/.erlang.cookie"], result
    # And the Docker build context leaves out .env and every .env.* too
    patterns = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".env.*"} <= patterns


# -- credentials are never printed -----------------------------------------------------------------


@pytest.fixture
def secret_url(broker, mgmt):
    """The session node's URL for a user with a distinctive password (created for the test, then deleted)."""
    user = urllib.parse.quote(SECRET_USER, safe="")
    mgmt.request("PUT", f"users/{user}", {"password": SECRET_PASSWORD, "tags": ""})
    mgmt.request("PUT", f"permissions/%2F/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
    try:
        yield f"amqp://{SECRET_USER}:{SECRET_PASSWORD}@127.0.0.1:{broker.port}//"
    finally:
        mgmt.request("DELETE", f"users/{user}")


def cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def test_worker_banner_and_log_never_show_the_brokers_password(fresh_queue, secret_url, start_worker):
    # Given a worker logged in with a distinctive password, and one that is refused (a wrong one)
    worker = start_worker("secret-w1", secret_url)
    refused_url = secret_url.replace(SECRET_PASSWORD, SECRET_PASSWORD[::-1])
    refused = start_worker("secret-w2", refused_url, wait=False)

    # When the first runs a task and the second has been refused (it stops with one line at start-up)
    publish(secret_url, ["Secret task."])
    worker.wait_for_line(" [x] Done", TIMEOUT)
    wait_until(lambda: "refused the worker: login refused" in refused.log(), TIMEOUT, "the second worker is refused")

    # Then neither log shows either password; both show the user with the password masked (Celery's
    # banner masks it as **, proj's start-up line as ***)
    for log, mask in ((worker.log(), "**"), (refused.log(), "***")):
        assert SECRET_PASSWORD not in log and SECRET_PASSWORD[::-1] not in log
        assert f"amqp://{SECRET_USER}:{mask}@127.0.0.1:{fresh_queue.port}//" in log


@pytest.mark.parametrize("case", ["wrong-password", "unreachable"])
def test_new_task_errors_never_show_the_password(secret_url, case):
    # Given new-task pointed at the broker with a wrong password, or at a port where nothing listens
    url = (
        secret_url.replace(SECRET_PASSWORD, SECRET_PASSWORD + "-wrong")
        if case == "wrong-password"
        else re.sub(r":\d+//$", f":{free_port(avoid=(5672,))}//", secret_url)
    )

    # When it publishes
    result = cli("new-task", "Hello...", env=dict(os.environ, CELERY_BROKER_URL=url))

    # Then one line says what failed, with the user and no password
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"new-task: could not publish to amqp://{SECRET_USER}:***@127.0.0.1:"), line
    assert SECRET_PASSWORD not in result.stdout + result.stderr


def test_flower_never_shows_the_brokers_or_its_own_password(broker, secret_url, tmp_path):
    # Given Flower logged in to the broker and its management API with a distinctive password
    management_url = f"http://{SECRET_USER}:{SECRET_PASSWORD}@127.0.0.1:{broker.management_port}/api/"
    own_password = "Fl0wer-own-pw-6d0b"
    flower = FlowerProcess(
        tmp_path / "flower.log", secret_url, management_url=management_url, basic_auth=f"admin:{own_password}"
    )
    try:
        flower.start().wait_ready()

        # When its broker page is shown
        status, page = flower.get("/broker")
    finally:
        flower.stop()

    # Then neither the page nor Flower's log shows a password
    assert status == 200
    assert f"amqp://{SECRET_USER}:**@127.0.0.1:{broker.port}//" in page
    for text in (page, flower.log()):
        assert SECRET_PASSWORD not in text and own_password not in text


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_proj_broker_status_never_shows_the_password(broker, as_json):
    # Given the session's node (guest:guest)
    # When `proj broker status` describes it
    result = cli(
        "proj",
        "broker",
        "status",
        "--data-dir",
        str(broker.data_dir),
        *(["--json"] if as_json else []),
        env=dict(os.environ),
    )

    # Then it says where the node is, with the password masked
    assert result.returncode == 0, result.stderr
    assert f"amqp://guest:***@127.0.0.1:{broker.port}//" in result.stdout
    assert "guest:guest@" not in result.stdout
