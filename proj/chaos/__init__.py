"""``proj chaos``: publish numbered tasks, break things at random, then account for every task.

The way RabbitMQ's own Jepsen tests count messages: every task the broker confirmed must have
completed at least once (lost = 0), nothing may run that was never published (unexpected = 0),
the queue must end empty, every task that ran twice must have been hit by a fault, and no worker
may hold a message without starting it past a bound.

Rooms:

- ``schedule.py``      the seeded fault schedule and task messages (pure: same seed, same schedule), both runs'
- ``state.py``         the settings and the one state every part of a run shares
- ``broker.py``        the run's broker: a private node or cluster, or a given one; what task_queue holds
- ``worker_slots.py``  the run's workers: started, stopped, started again, every process ended
- ``publisher.py``     the numbered tasks, confirmed, paced through the faults (both runs')
- ``monitor.py``       the ledger tailed, every worker process id noted (both runs')
- ``faults.py``        the fault loop (both runs'), and the process run's fault injector
- ``watch.py``         the held-message watch: a message a worker holds without starting it is a verdict
- ``checker.py``       the verdict: counting, then explaining each duplicate (pure)
- ``report.py``        the report: the verdict and what the run did, as report.json holds it
- ``run.py``           the run: the parts in order, the drain, the teardown
- ``compose.py``       the same run on the compose cluster's containers (``--compose``): what differs there,
                       where to publish and the node faults (crash, freeze, isolate, partition)
- ``ledger.py``, ``ledger_hook.py``  the ledger, and the worker module (``--include``) that writes it

The command, with ``--compose``, is ``proj/cli/chaos.py``.
"""
