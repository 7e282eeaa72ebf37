"""RabbitMQ itself: a private node (``node``), a cluster of them (``cluster``), the management API client."""
