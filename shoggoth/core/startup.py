"""Ctrl-C while shoggoth starts: the libraries take seconds to import, and an interrupt there
would end in a traceback from deep inside one of them. Importing this module first (shoggoth/cli.py
does) makes such an interrupt exit 130 with one line; nothing has been written yet. `main()`
puts Python's own handler back once the commands are loaded (`restore()`). It also runs before
any library is imported, which is where the few environment settings that libraries read at
import time belong."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import FrameType


def hard_exit(line: str, code: int) -> None:
    """Print `line` on stderr and end the process now (threads stuck in a library included)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    os._exit(code)


def _exit_interrupted(_signum: int, _frame: FrameType | None) -> None:
    hard_exit("interrupted", 130)


# torchrun's ranks other than 0 (`train --ddp`) show no progress bars: rank 0's stands for all.
# tqdm reads its TQDM_* settings when it is first imported, so this must come before that.
if os.environ.get("RANK", "0") != "0":
    os.environ.setdefault("TQDM_DISABLE", "1")

# A background job starts with SIGINT ignored; keep it so.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _exit_interrupted)


def restore() -> None:
    """Python's KeyboardInterrupt again, unless SIGINT is ignored."""
    if signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def finishing() -> None:
    """Once the command has returned: its output goes out now (not at exit, where a pipe's
    buffer would otherwise wait), and a Ctrl-C while Python shuts down (joining library
    threads, running their exit hooks) exits 130 with one line, as at any other moment,
    instead of Python killing itself by the signal. Its work is already saved."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _exit_interrupted)


def _hold_interrupts_at_exit() -> None:
    """The last exit hook (registered first): past it Python puts the default SIGINT action
    back as it finalizes, and a Ctrl-C in that instant would kill the process by the signal.
    Everything is saved by then, so the signal is held until the process has exited."""
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


atexit.register(_hold_interrupts_at_exit)


PROGRAM = False
"""True when shoggoth runs as its own program (`entry`), not as a library inside another
process (the tests): only then may a command limit or end the whole process."""


def running_as_program() -> bool:
    """Whether this process is the `shoggoth` program."""
    return PROGRAM
