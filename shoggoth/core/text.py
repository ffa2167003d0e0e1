"""Reading the user's text files: UTF-8 only, and one BadInput line naming the file otherwise.
YAML files (configs, personas) are read by `load_yaml`, bounded in size, nesting and the
values their aliases expand to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from shoggoth.core.errors import BadInput, clip, first_line


def read_text(path: Path, what: str = "", limit: int | None = None) -> str:
    """The file's text (newlines as '\\n'); BadInput when it is missing, a folder, unreadable,
    not UTF-8, or with `limit`, over `limit` bytes (then no more than `limit` + 1 are read)."""
    name = f"{what} {path}".strip()
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            # a FIFO or a device would block or never end
            raise BadInput(f"{name}: not a regular file")
        with path.open("rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except FileNotFoundError:
        raise BadInput(f"{name}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{name}: is a directory, expected a file") from None
    except PermissionError:
        raise BadInput(f"{name}: permission denied") from None
    except MemoryError:
        raise BadInput(f"{name}: too large to read into memory") from None
    except BadInput:
        raise
    except ValueError as e:  # "embedded null byte"
        raise BadInput(f"{name}: not a usable file name ({first_line(e)})") from None
    except OSError as e:  # /proc/self/mem: Input/output error, …
        raise BadInput(f"{name}: {e.strerror or first_line(e)}") from None
    if limit is not None and len(data) > limit:
        raise BadInput(f"{name}: larger than {limit / 2**20:g} MiB; refused")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{name}: not UTF-8 text (byte {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it


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


YAML_MAX_BYTES = 4 << 20
"""The largest YAML file read (configs and personas files are kilobytes)."""
YAML_MAX_VALUES = 1_000_000
"""The most values (scalars, lists, mappings) a YAML file may hold, each alias counted as the
values it repeats: nine levels of nine aliases ("billion laughs") are a 300-byte file."""
YAML_MAX_DEPTH = 64
"""The deepest nesting of lists and mappings in a YAML file (Python's recursion ends near
500)."""


class YamlRefused(yaml.YAMLError):
    """A YAML file too big once its aliases are expanded, or nested too deep."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document over YAML_MAX_VALUES values (aliases expanded)
    or nested deeper than YAML_MAX_DEPTH, and an alias to the node that holds it, while
    composing, before anything is built. Subclass it to construct differently."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values: dict[yaml.Node, int] = {}  # a node: the values it expands to

    def compose_node(self, parent: Any, index: Any) -> Any:
        alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        if self._depth >= YAML_MAX_DEPTH:
            raise YamlRefused(f"nested more than {YAML_MAX_DEPTH} levels deep", mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        values = self._values.get(node)
        if values is None:
            if alias:
                raise YamlRefused("an alias inside the value it names", mark)
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode)
                else []
            )
            values = 1 + sum(self._values[child] for child in children)
            self._values[node] = values
        if values > YAML_MAX_VALUES:
            raise YamlRefused(
                f"holds more than {YAML_MAX_VALUES:,} values (an alias counts as "
                "the values it repeats)",
                mark,
            )
        return node


def yaml_problem(error: yaml.YAMLError) -> str:
    """' line N: not valid YAML (what the parser expected)' for a one-line error message."""
    mark = getattr(error, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None)
    if isinstance(error, YamlRefused):
        return f"{where}: refused, {problem}"
    return f"{where}: not valid YAML" + (f" ({clip(problem, 200)})" if problem else "")


def load_yaml(path: Path, what: str = "", loader: type[BoundedLoader] = BoundedLoader) -> Any:
    """The YAML file's content, by `loader` (BoundedLoader or a subclass of it); BadInput naming
    the file when it cannot be read (see `read_text`), is over YAML_MAX_BYTES, is not YAML, is
    too big once its aliases are expanded or too deeply nested, or holds a value Python cannot
    build (an integer of 5,000 digits, the 45th of a month)."""
    name = f"{what} {path}".strip()
    text = read_text(path, what, limit=YAML_MAX_BYTES)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        raise BadInput(f"{name}{yaml_problem(e)}") from None
    except BadInput:
        raise
    except (ValueError, OverflowError, RecursionError) as e:
        raise BadInput(
            f"{name}: holds a value that cannot be used ({clip(first_line(e), 200)})"
        ) from None
