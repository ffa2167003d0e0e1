"""Machine-readable output: every command that prints results takes `--format table|json`, and
JSON goes through here (DataFrames as lists of rows, numpy scalars as numbers, NaN as null)."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import click

Format = Literal["table", "json"]
"""table (for reading) or json (for scripts)."""


def plain(value: Any) -> Any:
    """`value` as JSON can hold it."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame
        return [plain(r) for r in value.to_dict(orient="records")]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def number(value: object) -> float | None:
    """`value` as a float; None where it is missing, NULL, NaN or not a number (a stored
    estimate that was not measured)."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def shown(value: object, spec: str = ".2f", missing: str = "n/a") -> str:
    """A number for reading: formatted with `spec`, or `missing` where there is none (NULL,
    NaN, None). The one place a table, a line or a page turns a missing number into words."""
    out = number(value)
    return missing if out is None else format(out, spec)


def print_json(value: Any) -> None:
    """`value` as indented JSON on stdout."""
    click.echo(json.dumps(plain(value), indent=1))
