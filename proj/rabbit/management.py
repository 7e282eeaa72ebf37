"""The management API client, under its former name: it lives in the app now, ``proj/management.py``.

The worker sets task_queue's dead-letter policy through it and Flower's config reads its URLs, and the
app imports none of the tooling (tests/test_layout.py). Tooling modules may still import it from here.
"""

from proj.management import (  # noqa: F401
    DEFAULT_MANAGEMENT_PORT,
    Management,
    ManagementError,
    configured_management_url,
    hide_password,
    management_url_from_broker,
    management_urls,
    vhost_from_broker,
)
