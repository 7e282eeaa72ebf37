"""The tutorial's ``new_task.py``: publish one task to ``task_queue``.

Usage::

    new-task First message.          # or: python -m proj.new_task First message.
     [x] Sent 'First message.'

The message is the arguments joined by spaces, or ``Hello World!``. The publish is persistent and
confirmed by the broker before ` [x] Sent` is printed.

Many messages at once, one per line of a file (``-``: standard input), published pipelined and
all confirmed before the ` [x] Sent` lines (proj/bulk.py)::

    new-task --file messages.txt
    seq 1000 | new-task --file -

``-h``/``--help`` prints this usage and sends nothing; after ``--`` every word is message text
(``new-task -- --help`` sends ``--help``).

Exit status: 0 sent; 2 nothing sent (bad usage, a malformed setting, a broker it cannot reach or that
refuses the message): the one table of every command (proj/cli/exits.py, README "Exit statuses").
"""

from __future__ import annotations

import sys

from proj import config

# The exit-status table of proj/cli/exits.py, spelled out: the app imports none of the tooling.
EXIT_OK = 0
EXIT_CANNOT_RUN = 2

USAGE = """usage: new-task [-h] [--] [WORD ...]

Publish the words, joined by spaces, as one task to task_queue (default: 'Hello World!'),
persistent and confirmed by the broker; each '.' is one unit of work (PROJ_SECONDS_PER_DOT).
After '--' every word is message text: new-task -- --help sends '--help'.

The broker is CELERY_BROKER_URL (default amqp://guest:guest@localhost:5672//).
Exit status: 0 sent, 2 nothing sent (bad setting, broker unreachable or refusing)."""

HELP_OPTIONS = ("-h", "--help")


def parse_args(args: list[str]) -> str | None:
    """The message the words make, or None when they ask for the usage (``-h``/``--help`` before any ``--``)."""
    if "--" in args:
        cut = args.index("--")
        before, after = args[:cut], args[cut + 1 :]
    else:
        before, after = args, []
    if any(word in HELP_OPTIONS for word in before):
        return None
    return " ".join(before + after) or "Hello World!"


def describe_broker_error(exc: BaseException) -> str:
    """What failed, in a few words, for an error raised while connecting or publishing."""
    import socket

    from amqp import exceptions as amqp_exc

    from proj.tasks import PublishError

    if isinstance(exc, PublishError):
        if exc.__cause__ is None:  # refused by the broker: the error says why
            return str(exc)
        exc = exc.__cause__
    while isinstance(exc.__cause__ or exc.__context__, BaseException) and not isinstance(
        exc, (amqp_exc.AMQPError, OSError)
    ):
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, amqp_exc.AccessRefused) or "ACCESS_REFUSED" in str(exc):
        return "login refused: check the user name and password in CELERY_BROKER_URL"
    if isinstance(exc, amqp_exc.PreconditionFailed) or "PRECONDITION_FAILED" in str(exc):
        return f"the broker refused the queue declaration: {exc.reply_text if hasattr(exc, 'reply_text') else exc}"
    if isinstance(exc, amqp_exc.NotAllowed) or "NOT_ALLOWED" in str(exc):
        return f"the broker refused the virtual host: {exc}; check the vhost in CELERY_BROKER_URL"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is RabbitMQ running there? (`proj broker start` runs one)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out: is the host and port in CELERY_BROKER_URL right?"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc})"
    return f"{type(exc).__name__}: {exc}"


AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def broker_url_problem(url: str) -> str | None:
    """What is wrong with a CELERY_BROKER_URL, in words, or None if it looks like an AMQP URL."""
    import urllib.parse

    for one in url.split(";"):
        parts = urllib.parse.urlsplit(one.strip())
        if parts.scheme not in AMQP_SCHEMES:
            return "it is not an AMQP URL: use amqp://USER:PASSWORD@HOST:5672/VHOST"
        try:
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError:
            return "its port is not a number: use amqp://USER:PASSWORD@HOST:5672/VHOST"
        if not parts.hostname:
            return "it names no host: use amqp://USER:PASSWORD@HOST:5672/VHOST"
    return None


def publish(message: str, broker_url: str | None = None):
    """Publish ``message`` as ``proj.tasks.work`` to ``broker_url`` (default: the app's); return the AsyncResult.

    Raises on broker errors."""
    from proj.celery import app
    from proj.tasks import check_message, work

    check_message(message)  # before connecting: a refused message never reaches the broker
    # Connection attempts, retries and the confirm wait all fit in PROJ_PUBLISH_TIMEOUT (config.py).
    with app.connection_for_write(url=broker_url) as conn:
        conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=config.PUBLISH_TIMEOUT)
        return work.apply_async(args=[message], connection=conn, ignore_result=True)


def read_lines(path: str) -> list[str]:
    """The messages of a file, one per line (``-``: standard input); a final newline ends the last one."""
    if path == "-":
        text = sys.stdin.buffer.read().decode("utf-8")
    else:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def send_file(args: list[str]) -> int:
    """``new-task --file FILE``: every line of FILE a task, all confirmed, else each failure on its own line."""
    from proj.bulk import BulkPublishError
    from proj.celery import app
    from proj.console import say
    from proj.management import hide_password
    from proj.tasks import PublishError, send_many

    def fail(line: str) -> int:
        print(f"new-task: {line}", file=sys.stderr)
        return EXIT_CANNOT_RUN

    path = args[0].partition("=")[2] if args[0].startswith("--file=") else (args[1] if len(args) > 1 else "")
    if not path or len(args) > (1 if args[0].startswith("--file=") else 2):
        return fail("usage: new-task --file FILE (one message per line; - for standard input)")
    try:
        messages = read_lines(path)
    except OSError as exc:
        return fail(f"cannot read {path}: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return fail(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8")
    if not messages:
        return fail(f"{path} holds no message: write one message per line")
    broker = hide_password(app.conf.broker_url)
    problem = broker_url_problem(app.conf.broker_url)
    if problem:
        return fail(f"CELERY_BROKER_URL={broker!r} is malformed: {problem}")
    try:
        send_many(messages)
    except (TypeError, ValueError) as exc:  # refused at the producer, nothing published
        return fail(f"nothing sent: {exc}")
    except BulkPublishError as exc:
        queued = set(exc.confirmed)
        for task_id, message in zip(exc.ids, messages, strict=True):
            if task_id in queued:
                say(f" [x] Sent {message!r}")
        for failure in exc.failures:
            print(f"new-task: not queued: {failure}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except PublishError as exc:
        return fail(f"nothing sent to {broker}: {describe_broker_error(exc)}")
    for message in messages:
        say(f" [x] Sent {message!r}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and (args[0] == "--file" or args[0].startswith("--file=")):
        return send_file(args)
    message = parse_args(args)
    if message is None:
        try:
            print(USAGE, flush=True)
        except BrokenPipeError:  # `new-task --help | head`: the reader has what it wanted
            sys.stdout = None
        return EXIT_OK

    from proj.celery import app
    from proj.console import say
    from proj.management import hide_password

    url = app.conf.broker_url
    problem = broker_url_problem(url)
    if problem:
        print(f"new-task: CELERY_BROKER_URL={hide_password(url)!r} is malformed: {problem}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        publish(message)
    except ValueError as exc:  # refused at the producer: too large
        print(f"new-task: message refused: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except Exception as exc:  # any broker failure gets one line, never a traceback
        broker = hide_password(app.conf.broker_url)
        print(f"new-task: could not publish to {broker}: {describe_broker_error(exc)}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    say(f" [x] Sent {message!r}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
