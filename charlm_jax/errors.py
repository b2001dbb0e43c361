"""The one error type users see.

Every problem a user can fix (a bad path, a prompt with unknown characters, a
negative temperature, a broken checkpoint) is raised as ``CharLMError`` with a
message naming the problem and the fix. The CLI prints it as one line on stderr
and exits with status 2; library callers can catch it.
"""


class CharLMError(Exception):
    """A problem with the user's input, stated with its fix.

    ``str(error)`` names the fix in the Python API's words (``resume=True``); ``cli``, when the fix
    differs on the command line, in the CLI's (``--resume``), which the CLI prints instead.
    """

    def __init__(self, message: str, *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli

    @property
    def cli_message(self) -> str:
        return self.cli if self.cli is not None else str(self)


# How a fix is named in each place: ``worded`` fills a template's slots with both sets.
API_WORDS = {
    "resume": "resume=True",
    "out": "out_dir",
    "text": "text",
    "epochs": "epochs (overrides={'epochs': N})",
    "max_steps": "Limits(max_steps=)",
    "time_limit": "Limits(max_seconds=)",
}
CLI_WORDS = {
    "resume": "--resume",
    "out": "--out",
    "text": "--text",
    "epochs": "--epochs",
    "max_steps": "--max-steps",
    "time_limit": "--time-limit",
}


def worded(template: str, error: type[CharLMError] = CharLMError, **values: object) -> CharLMError:
    """An error whose fix names the API's arguments, and the CLI's flags when the CLI prints it: the
    template's ``{resume}``, ``{out}``, ``{text}``, ``{epochs}``, ``{max_steps}``, ``{time_limit}``."""
    return error(template.format(**API_WORDS, **values), cli=template.format(**CLI_WORDS, **values))


class MachineError(CharLMError):
    """The machine, not the input, failed: a full disk, a read-only file system, a directory that cannot
    be written. Stated with its fix like any ``CharLMError``; the CLI exits with status 1 for it."""

    exit_status = 1


class CharLMWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""
