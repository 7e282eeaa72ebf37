"""The Celery app. Settings live in ``proj.config``; the task lives in ``proj.tasks``."""

from celery import Celery

# "proj.signals" hooks the tutorial's console lines onto the worker's signals.
app = Celery("proj", include=["proj.tasks", "proj.signals"])
app.config_from_object("proj.config")
# The default app of every thread, not only the importing one: otherwise .delay() from another
# thread (a web server's pool) uses Celery's fallback app, which routes to a 'celery' queue that
# nobody consumes: confirmed by the broker, then never run. Found by `proj chaos`.
app.set_default()

# The stuck-message guard's remote-control command, registered wherever the app is loaded, so
# `celery -A proj inspect proj_stuck` knows it too (not only the workers that answer it). And a worker
# whose node froze fails over without waiting on that node again (proj/failover.py). And `celery -A proj
# worker` relaunches itself as `python -m proj.worker`, without Celery's other commands in memory (proj/lean.py).
from proj import confirms, failover, guard, lean, majority, timelimit  # noqa: E402, F401

failover.install(app)
# A worker on a cluster node cut off from the majority moves to a node of the majority (proj/majority.py).
majority.install(app)
# The hard time limit's timers of finished tasks released at once, not after 25 minutes (proj/timelimit.py).
timelimit.install(app)
# A publisher confirm waited for within PROJ_PUBLISH_TIMEOUT, not restarted by every heartbeat (proj/confirms.py).
confirms.install()
