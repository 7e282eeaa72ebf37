"""proj's task for pytest-celery's worker container: tests/test_celery_setup.py copies this file into the
container's /app, whose generated app.py imports it. proj itself is installed in the image."""

from proj.tasks import work  # noqa: F401  (a shared task: registered on the container's app)
