"""What shoggoth prints comes partly from databases and files other people made: a name holding
terminal control sequences must not retitle, clear or rewrite the user's terminal, and an error
message is one line whatever its values hold."""

from __future__ import annotations

import re
from typing import Any, TextIO

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""C0 control characters but tab and newline (and DEL)."""
SGR = re.compile(r"\x1b\[[0-9;]*m")
"""Select Graphic Rendition: the colour sequences rich writes to a terminal (harmless)."""


def visible(char: str) -> str:
    """A control character as caret notation (ESC → ^[, BEL → ^G)."""
    return "^" + chr(ord(char) ^ 0x40)


def one_line(text: str) -> str:
    """`text` with every control character shown (a newline as ^J): one line on a terminal."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: visible(m.group()), text)


def inert(text: str) -> str:
    """`text` as a terminal may receive it: colour sequences kept, carriage returns kept (a
    progress line), every other control character shown in caret notation."""
    out, last = [], 0
    for match in SGR.finditer(text):
        out.append(CONTROL.sub(_show, text[last : match.start()]))
        out.append(match.group())
        last = match.end()
    out.append(CONTROL.sub(_show, text[last:]))
    return "".join(out)


def _show(match: re.Match[str]) -> str:
    return match.group() if match.group() == "\r" else visible(match.group())


class InertTerminal:
    """A text stream that passes what is written through `inert` (for a terminal's stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(inert(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
