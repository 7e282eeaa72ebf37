"""RabbitMQ's "Work queues" tutorial as a Celery app: ``celery -A proj worker``."""

from proj.celery import app

__all__ = ("app",)
