"""``proj bench``: the work queue measured against the tutorial's raw pika ``worker.py``, side by side."""
