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


def _ignore_interrupts_at_exit() -> None:
    """The last exit hook (registered first). Past it Python finalizes: it puts the default
    SIGINT action back for every handler of its own (`_PySignal_Fini`), and the kernel hands a
    Ctrl-C to any thread that does not block it (DuckDB's, torch's, OpenMP's), so the process
    would die by the signal with no line. Everything is saved and written by then, so SIGINT is
    ignored, process-wide, until the process has exited with the command's code; Python leaves
    an ignored signal ignored. (A Ctrl-C still pending here ends it as before: 130, one line.)
    Only in the `shoggoth` program: a process that uses shoggoth as a library keeps its own."""
    if PROGRAM and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


atexit.register(_ignore_interrupts_at_exit)


PROGRAM = False
"""True when shoggoth runs as its own program (`entry`), not as a library inside another
process (the tests): only then may a command limit or end the whole process."""


def running_as_program() -> bool:
    """Whether this process is the `shoggoth` program."""
    return PROGRAM
