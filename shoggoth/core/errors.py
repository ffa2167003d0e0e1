"""The exception types the CLI turns into exit codes, and deferring Ctrl-C over short writes."""

import re
import reprlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MESSAGE_MAX = 1000
"""The most characters of a BadInput message: the last guard against a line that quotes a
user's value whole (values are quoted with `shown`, which cuts them far shorter)."""


class BadInput(ValueError):
    """Input that cannot be used. The CLI prints the message as one line and exits with code 2.

    The message names the input and says what is wrong with it.
    """

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (clip(args[0], MESSAGE_MAX), *args[1:])
        super().__init__(*args)


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters (the cut marked with …)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: object, limit: int = 80) -> str:
    """`value` as an error message quotes it, its repr cut to `limit` characters. Built by
    reprlib, so a value too big to print (the lists a YAML alias bomb repeats) costs no more
    than its first few items."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = limit
    short.maxlevel, short.maxlist, short.maxdict = 3, 8, 8
    try:
        text = short.repr(value)
    except ValueError:  # an int with more digits than Python turns into text
        text = f"<a {type(value).__name__} too long to show>"
    return clip(text, limit)


class Interrupted(Exception):
    """The user interrupted a long command after it saved its progress; the CLI exits with 130."""


def first_line(error: BaseException) -> str:
    """An exception's first line (its type's name when it has no message): the part of a
    library's error that fits in a one-line `error:` message."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def is_interrupt(error: BaseException) -> bool:
    """Whether `error` is a Ctrl-C in disguise: DuckDB turns an interrupt inside a query into
    its own InterruptException, or into RuntimeError("Query interrupted") on some paths."""
    return (
        isinstance(error, KeyboardInterrupt)
        or type(error).__name__ == "InterruptException"
        or (isinstance(error, RuntimeError) and str(error).startswith("Query interrupted"))
    )


ENVIRONMENT = (
    "No space left on device",
    "Read-only file system",
    "Disk quota exceeded",
    "Permission denied",
    "Operation not permitted",
    "Could not read enough bytes",
    "File too large",
)
"""What a library's error says when the machine, not the input, stopped a command."""


def is_environmental(error: BaseException) -> bool:
    """Whether `error` is a full disk, a read-only or immutable file, a truncated file…,
    raised by a library (DuckDB's IOException, pyarrow's, …) rather than as an OSError."""
    text = str(error)
    return type(error).__name__ in ("IOException", "ArrowIOError") or any(
        words in text for words in ENVIRONMENT
    )


def environment_line(error: BaseException) -> str:
    """The one line such an error gets: what the machine said, without a library's JSON."""
    text = first_line(error)
    for words in ENVIRONMENT:
        if words in text:
            where = re.search(r'file \\?"([^"\\]+)', text)
            return f"{where.group(1)}: {words}" if where else words
    return text


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then raise KeyboardInterrupt.

    For short writes: a Ctrl-C that lands inside a DuckDB call surfaces as a DuckDB error, not as
    KeyboardInterrupt, so the write is finished first and the interrupt delivered after it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
