"""The one exception type clipzs raises for bad input; the CLI prints it as a single line."""


class ClipzsError(Exception):
    """A problem the user can fix (bad argument, missing file, failed download), not a bug."""
