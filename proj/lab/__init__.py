"""``proj lab``: the tutorial's experiments, run on demand on a real broker with real workers.

Usage::

    proj lab round-robin          # two workers, unlimited prefetch, the five messages: who got which
    proj lab fair-dispatch        # heavy/light workload, unlimited prefetch then prefetch 1
    proj lab redelivery           # SIGKILL the worker running a long task; it moves on, redelivered
    proj lab durability           # enqueue with no worker, restart the broker, the queue survives
    proj lab all                  # every scenario in turn, one summary at the end

Each scenario prints a table and a verdict quoting the tutorial, and writes a JSON record, a PNG
timeline and a self-contained HTML page into ``--out`` (``lab-out/``). The record comes from
Celery's event stream (the one Flower reads), never from log text.

Modules: ``session`` (broker, workers, events, progress, clean-up), ``scenarios`` (the four
experiments and their verdicts), ``record`` (events -> deliveries, makespans), ``chart`` (PNG),
``report`` (console table, HTML page), ``cli`` (the click command).
"""
