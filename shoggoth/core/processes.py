"""Child processes that die with their parent.

A server shoggoth starts (the Streamlit explorer) must not outlive the command that started it:
SIGTERM and SIGINT to the parent are forwarded to the child and waited for, and on Linux the
kernel also sends the child SIGTERM when the parent dies without a chance to forward (kill -9).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_child(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `command`; it receives SIGTERM when this process dies."""
    return subprocess.Popen(list(command), env=env, preexec_fn=_die_with_parent)


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the child and wait for it (SIGKILL after `timeout` seconds)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_forwarding(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the child; SIGTERM to this process stops the child first and then raises
    KeyboardInterrupt here (as Ctrl-C does), so the caller exits the usual way."""
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_child(proc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
