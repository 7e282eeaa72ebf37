"""The proj app with Celery settings overridden for one benchmark run: ``celery -A proj.bench.tuned worker``.

``proj bench`` tries a setting (events off, another pool, ...) on its own worker processes only,
without touching ``proj.config``: the settings come as JSON in ``PROJ_BENCH_SETTINGS`` and are
applied with ``app.conf.update`` before the worker reads its configuration, so they win over
``proj.config`` exactly as a changed line there would.
"""

from __future__ import annotations

import json
import os

from proj.celery import app

#: The environment variable holding the JSON object of settings to override.
SETTINGS_ENV = "PROJ_BENCH_SETTINGS"

app.conf.update(json.loads(os.environ.get(SETTINGS_ENV) or "{}"))

__all__ = ("app",)


# -- The change proj.consumer made, undone, to measure it ---------------------------------------

from celery.worker.consumer import Consumer as CeleryConsumer  # noqa: E402

from proj.consumer import Consumer  # noqa: E402


class ConfirmedEventsConsumer(Consumer):
    """proj's consumer with task events published as Celery does: each waits for a publisher confirm."""

    def connection_for_write(self, url=None, heartbeat=None):
        return CeleryConsumer.connection_for_write(self, url=url, heartbeat=heartbeat)


class KombuReaderConsumer(Consumer):
    """proj's consumer read by kombu's reader (a frame at a time), as before proj/reader.py."""

    def connect(self):
        return CeleryConsumer.connect(self)


class CeleryEventBufferConsumer(Consumer):
    """proj's consumer with Celery's event buffer: published when 24 task events are in it."""

    def register_with_event_loop(self, hub):
        super().register_with_event_loop(hub)
        if self.event_dispatcher is not None:
            self.event_dispatcher.buffer_limit = 24
