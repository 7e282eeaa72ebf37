"""``python -m proj.worker``: ``celery -A proj worker`` without loading every other Celery command.

Usage::

    python -m proj.worker -l INFO            # same options as: celery -A proj worker -l INFO
    python -m proj.worker -P solo -n w1@%h

``celery`` builds its whole command line before it runs ``worker``: every subcommand, the ``amqp``
shell's prompt_toolkit, and each installed plugin (Flower registers one, with Tornado), all kept in
the worker's memory for its life (and copied into every prefork pool process). This runs Celery's own
``worker`` command, options and all, with the proj app: measured 50 -> 34 MiB resident after imports.
``celery -A proj worker`` relaunches itself as this (proj/lean.py).
"""

from __future__ import annotations

import sys

from proj.celery import app


def main(argv: list[str] | None = None) -> int:
    # start-up: Celery's command line (click, every command's module) only when the worker runs, not on import
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    args = sys.argv[1:] if argv is None else argv
    # What `celery -A proj` sets before it runs a subcommand: the app, nothing else (proj has no preload options).
    obj = CLIContext(app=app, no_color=None, workdir=None, quiet=False)
    return worker.main(args=args, prog_name="python -m proj.worker", obj=obj, standalone_mode=True) or 0


if __name__ == "__main__":
    sys.exit(main())
