"""Every ``proj`` command: ``proj broker|queues|dead|demo|lab|chaos|bench``, one exit-status table for all."""

from proj.cli.main import main

__all__ = ("main",)
