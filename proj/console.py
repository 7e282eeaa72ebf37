"""The tutorial's console vocabulary: `` [x] Sent ...``, `` [x] Received ...``, `` [x] Done``.

Celery redirects a worker's stdout into its log at WARNING level; these lines go to the real
stdout instead, bare, so a worker's terminal reads like the tutorial's ``worker.py``.
"""

from __future__ import annotations

import sys

#: What a worker prints once it consumes: the tutorial's ``worker.py`` line, from proj's workers and the pika reference.
READY_LINE = " [*] Waiting for messages. To exit press CTRL+C"


def say(line: str) -> None:
    """Print one tutorial line on the process's real stdout, flushed at once."""
    stream = sys.__stdout__ or sys.stdout
    stream.write(line + "\n")
    stream.flush()
