"""The one error type users see.

Every problem a user can fix (a bad path, a prompt with unknown characters, a
negative temperature, a broken checkpoint) is raised as ``CharLMError`` with a
message naming the problem and the fix. The CLI prints it as one line on stderr
and exits with status 2; library callers can catch it.
"""


class CharLMError(Exception):
    """A problem with the user's input, stated with its fix."""


class CharLMWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""
