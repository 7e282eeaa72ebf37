"""proj's app as a kombu that renamed ``Timer._queue`` would run it: proj.compat must turn the purge off."""

import dataclasses

from proj import compat
from proj.celery import app

compat.TIMER_HEAP = dataclasses.replace(compat.TIMER_HEAP, attr="_queue_renamed_by_a_future_kombu")

__all__ = ("app",)
