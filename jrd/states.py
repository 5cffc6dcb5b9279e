"""Named states, with no imports of their own.

Program states are supervisord's own names (supervisor/states.py), so that
what `jrdctl status` and the metrics show matches supervisord's log.
"""

# The programs jrd supervises.
PROGRAMS = ("jupyter", "nginx")

STOPPED = "STOPPED"
STARTING = "STARTING"
RUNNING = "RUNNING"
BACKOFF = "BACKOFF"
STOPPING = "STOPPING"
EXITED = "EXITED"
FATAL = "FATAL"
UNKNOWN = "UNKNOWN"

PROGRAM_STATES = (STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN)
# States in which supervisord has a process, or is trying to have one: a stop acts on them.
STOPPABLE_STATES = (RUNNING, STARTING, BACKOFF)
# States in which supervisord will not start the program again by itself.
STOPPED_STATES = (STOPPED, EXITED, FATAL)

# Restart reasons: a bounded set, for the metrics label.
REASON_CRASH = "crash"
REASON_UNHEALTHY = "unhealthy"
REASON_REQUESTED = "requested"
REASON_RELOAD = "reload"
RESTART_REASONS = (REASON_CRASH, REASON_UNHEALTHY, REASON_REQUESTED, REASON_RELOAD)

# Results of reloads and renewals.
RESULT_SUCCESS = "success"
RESULT_FAILURE = "failure"
