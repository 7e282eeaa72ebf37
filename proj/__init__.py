"""RabbitMQ's "Work queues" tutorial as a Celery app: ``celery -A proj worker``."""

from .celery import app

__all__ = ("app",)
