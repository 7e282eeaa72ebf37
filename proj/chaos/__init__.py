"""``proj chaos``: publish numbered tasks, break things at random, then account for every task.

The way RabbitMQ's own Jepsen tests count messages: every task the broker confirmed must have
completed at least once (lost = 0), nothing may run that was never published (unexpected = 0),
the queue must end empty, and every task that ran twice must have been hit by a fault.

Rooms:

- ``schedule.py``  the seeded fault schedule and task messages (pure: same seed, same schedule)
- ``checker.py``   the verdict, from the published set, the ledger rows and the faults (pure)
- ``run.py``       the run: private broker, workers, publisher, fault injector, drain
- ``cli.py``       the ``proj chaos`` command
"""
