"""RabbitMQ itself: a private node (``node``), a cluster of them (``cluster``).

The management API client is the app's (proj/management.py): the workers set their dead-letter policy with it.
"""
