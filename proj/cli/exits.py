"""One table of exit statuses for every command: ``proj ...`` and ``new-task``.

The rule (README, "Exit statuses"): 0 when the command did what it was asked, 1 when what it checks
does not hold (a verdict failed, a node or a worker is down), 2 on bad usage or when it cannot run
at all (a bad setting, a broker it cannot reach or that refuses it).
"""

#: It did what it was asked, or what it checks holds.
OK = 0
#: What it checks does not hold: a lab or chaos verdict failed, a node is down, a worker is unhealthy.
FAILED = 1
#: Bad usage (click's own status for a bad option), or it cannot run: a bad setting, a broker that cannot
#: be reached or refuses, a node that cannot start.
CANNOT_RUN = 2
#: Interrupted by Ctrl+C or SIGTERM, after stopping everything it started: the shell's own status for SIGINT.
INTERRUPTED = 130
