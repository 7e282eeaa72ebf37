"""Running the real parts: processes ended by PID, ``celery -A proj worker`` processes, the event recorder."""
