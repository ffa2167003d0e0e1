"""The one exception type for bad user input."""


class BadInput(ValueError):
    """Input that cannot be used. The CLI prints the message as one line and exits with code 2.

    The message names the input and says what is wrong with it.
    """


class Interrupted(Exception):
    """The user interrupted a long command after it saved its progress; the CLI exits with 130."""
