"""The exception and warning types clipzs raises for the user; the CLI prints each as a single line."""

from __future__ import annotations


class ClipzsError(Exception):
    """A problem the user can fix (bad argument, missing file, failed download), not a bug.

    `parameter` names the library parameter the message is about, so the CLI can word it as its flag.
    """

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter


class ClipzsWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it once, as one line.

    Warn with an instance (`warnings.warn(ClipzsWarning(message, parameter="use_cache"))`) when the message
    names a parameter, so the CLI can word it as its flag."""

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter
