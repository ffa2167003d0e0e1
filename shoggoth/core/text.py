"""Reading the user's text files: UTF-8 only, and one BadInput line naming the file otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoggoth.core.errors import BadInput


def read_text(path: Path, what: str = "") -> str:
    """The file's text; BadInput when it is missing, a folder, unreadable or not UTF-8."""
    name = f"{what} {path}".strip()
    if path.exists() and not path.is_file() and not path.is_dir():
        # a FIFO or a device would block or never end
        raise BadInput(f"{name}: not a regular file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{name}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{name}: is a directory, expected a file") from None
    except PermissionError:
        raise BadInput(f"{name}: permission denied") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"{name}: not UTF-8 text (byte {e.start})") from None


def jsonl_rows(path: Path, what: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; BadInput naming the file
    and line for a line that is not a JSON object, and for a file that is not UTF-8."""
    name = f"{what} {path}".strip()
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise BadInput(f"{name} line {n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise BadInput(f"{name} line {n}: expected a JSON object")
        yield n, row
