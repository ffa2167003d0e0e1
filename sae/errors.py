"""The one exception type for bad user input."""


class BadInput(ValueError):
    """Input that cannot be used. The CLI prints the message as one line and exits with code 2.

    The message names the input and says what is wrong with it.
    """
