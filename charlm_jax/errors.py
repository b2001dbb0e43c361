"""The one error type users see.

Every problem a user can fix (a bad path, a prompt with unknown characters, a
negative temperature, a broken checkpoint) is raised as ``CharLMError`` with a
message naming the problem and the fix. The CLI prints it as one line on stderr
and exits with status 2; library callers can catch it.
"""


class CharLMError(Exception):
    """A problem with the user's input, stated with its fix."""


class MachineError(CharLMError):
    """The machine, not the input, failed: a full disk, a read-only file system, a directory that cannot
    be written. Stated with its fix like any ``CharLMError``; the CLI exits with status 1 for it."""

    exit_status = 1


class CharLMWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""
