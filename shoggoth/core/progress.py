"""Progress of a long loop: a rich bar on a terminal, plain periodic lines otherwise.

A run under `nohup`, a batch scheduler or a pipe has no terminal to draw a bar on; it gets one
line every `every` seconds (done/total, rate, ETA) so its log shows that it is alive.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO, TypeAlias

Log: TypeAlias = Callable[[str], None]
"""Where a command's step messages go: `print`, `stderr_log()`, or a test's list.append."""


def stderr_log() -> Log:
    """A long command's step messages: dim lines on stderr, so stdout keeps only the result."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    return lambda message: console.print(message, style="dim", highlight=False)


class Progress:
    """`with Progress("harvest", total, done, unit="docs") as p: p.advance(n, rate="...")`."""

    def __init__(
        self,
        title: str,
        total: int,
        completed: int = 0,
        unit: str = "items",
        every: float = 30.0,
        stream: TextIO | None = None,
        bar: bool = True,
    ) -> None:
        self.title, self.total, self.completed, self.unit = title, total, completed, unit
        self.every = every
        self.draw = bar  # (False: plain lines even on a terminal, beside another library's bar)
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.start_count = completed
        self.last_line = self.started
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Progress:
        if self.draw and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn(self.title),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(f"{self.unit} ·"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(
                self.title, total=self.total, completed=self.completed, rate=""
            )
        else:
            self._line("started")
        return self

    def advance(self, n: int, rate: str = "") -> None:
        """Count `n` more done; `rate` is shown beside the count."""
        self.completed += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n, rate=rate)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every or self.completed >= self.total:
            self.last_line = now
            self._line(rate)

    def rate(self) -> float:
        """Units per second so far in this run (0 before anything was done)."""
        elapsed = time.monotonic() - self.started
        return (self.completed - self.start_count) / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        """Seconds left at this run's average pace (None before anything was done)."""
        done = self.completed - self.start_count
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (self.total - self.completed)

    def _line(self, rate: str) -> None:
        eta = self.eta_seconds()
        parts = [f"{self.title}: {self.completed:,}/{self.total:,} {self.unit}"]
        if rate:
            parts.append(rate)
        if eta is not None:
            parts.append(f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s")
        print(" · ".join(parts), file=self.stream, flush=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, value, tb)
