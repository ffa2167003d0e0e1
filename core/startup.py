"""Ctrl-C while shoggoth starts: the libraries take seconds to import, and an interrupt there
would end in a traceback from deep inside one of them. Importing this module first (shoggoth.py
does) makes such an interrupt exit 130 with one line; nothing has been written yet. `main()`
puts Python's own handler back once the commands are loaded (`restore()`). It also runs before
any library is imported, which is where the few environment settings that libraries read at
import time belong."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _exit_interrupted(_signum: int, _frame: FrameType | None) -> None:
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)


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
