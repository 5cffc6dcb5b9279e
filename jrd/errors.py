"""The one exception root for expected failures.

A `JrdError` is something a person can fix: the CLIs print its message as
one line, without a traceback, and exit with its `exit_code`.  Anything else
that escapes is a bug and is logged with its traceback.
"""


class JrdError(Exception):
    """An expected failure with a one-line, actionable message."""

    exit_code = 1


class ConfigError(JrdError):
    """The config file is missing, unreadable or invalid."""

    exit_code = 2


class UsageError(JrdError):
    """A command line that cannot be carried out as given."""

    exit_code = 2


class PreflightError(JrdError):
    """The machine is not ready: a missing binary, a busy port, a lock held."""

    exit_code = 3


class NginxConfigError(JrdError):
    """nginx refused a rendered configuration (`nginx -t` failed)."""

    exit_code = 4


class CertError(JrdError):
    """A certificate or key is missing, corrupt, mismatched or unusable."""

    exit_code = 5


class SupervisorError(JrdError):
    """supervisord could not be started or did not answer."""

    exit_code = 6


class Interrupted(JrdError):
    """A wait was cut short because jrd was asked to stop (SIGTERM/SIGINT)."""

    exit_code = 0


class StartupError(JrdError):
    """A supervised program did not come up."""

    exit_code = 7


class ReloadApplyError(JrdError):
    """A reload installed its new files, but an action that applies them failed."""


class ControlError(JrdError):
    """The daemon answered a control request with an error."""


class DaemonNotRunning(JrdError):
    """Nothing answers on the control socket."""

    exit_code = 7  # LSB: "program is not running"


class ControlPermissionDenied(JrdError):
    """The control socket is not open to this account."""

    exit_code = 4  # LSB: "user had insufficient privilege"
