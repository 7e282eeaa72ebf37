"""The Celery app. Settings live in ``proj.config``; the task lives in ``proj.tasks``."""

from celery import Celery

# "proj.worker" hooks the tutorial's console lines onto the worker's signals.
app = Celery("proj", include=["proj.tasks", "proj.worker"])
app.config_from_object("proj.config")
