"""Worker-side hooks: the tutorial's ready line once the worker consumes."""

from celery.signals import worker_ready

from .console import say


@worker_ready.connect
def announce_ready(sender=None, **kwargs) -> None:
    say(" [*] Waiting for messages. To exit press CTRL+C")
