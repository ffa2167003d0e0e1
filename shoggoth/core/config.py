"""Config dataclasses → CLI flags, YAML config files, validation and saved metadata.

Every command has one dataclass (a subclass of `Config`) whose fields carry a docstring each.
This module turns such a class into click options (help text = the field's docstring), merges an
optional YAML file under the flags the user typed, and returns a plain dict for the metadata
saved beside outputs. YAML values go through the same click types as flags, and every config
checks itself when it is built (`Config.__post_init__`): required fields, bounds declared with
`option(...)`, finite floats, then the class's own `check()` for rules that span fields.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from simple_parsing.docstring import get_attribute_docstring

from shoggoth.core.errors import BadInput, clip, shown
from shoggoth.core.placement import placement_of
from shoggoth.core.text import load_yaml

C = TypeVar("C")


class Bounds(typing.TypedDict, total=False):
    """Bounds shared by every option of one name (`option(..., **CONFIDENCE)`)."""

    min: float
    max: float
    above: float
    below: float


CONFIDENCE: Bounds = {"above": 0.5, "below": 1}
"""The bounds of every --confidence: an interval's level, over one half and short of one."""
BOOTSTRAP: Bounds = {"min": 10, "max": 100_000}
"""The bounds of every --bootstrap (resamples): fewer than 10 gives no interval worth a name."""
TIMEOUT: Bounds = {"min": 0}
"""The bounds of every --timeout (seconds; 0: no limit)."""
SEED_MAX = 2**31 - 1
"""The largest --seed: numpy's generators take seeds below 2**32, and some commands derive
further seeds from it by adding small offsets."""


class PathType(click.Path):
    """click.Path that refuses a path holding a NUL byte, which no file name can hold (the
    stat click makes, and every open after it, would raise ValueError: a traceback)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if "\0" in str(value):
            problem = "not a usable path (it holds a NUL byte)"
            if param is None:  # a value from a config file: convert() names the option
                self.fail(f"{shown(value)}: {problem}")
            raise BadInput(
                f"{param.opts[0] if param.opts else param.name} {shown(value)}: {problem}"
            )
        return super().convert(value, param, ctx)


PATH = PathType(path_type=Path)
"""The click type of every path option and argument (and --config)."""


def option(
    default: Any = None,
    *,
    required: str | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    repeat: bool = False,
    was: dict[str, Any] | None = None,
) -> Any:
    """A config field with checks: `required` (why it is needed, shown when it is missing),
    inclusive bounds `min`/`max` and exclusive bounds `above`/`below`. `repeat`: a list field
    given as a repeated flag (`--sae-dir A --sae-dir B`) instead of positional arguments.
    `was`: the field's deprecated flags, still accepted for one release with a one-line note:
    old flag → None (it takes a value, as the field does) or the value a bare old flag means
    (`{"--json": "json"}`)."""
    meta = {
        "required": required,
        "min": min,
        "max": max,
        "above": above,
        "below": below,
        "repeat": repeat or None,
        "was": was,
    }
    kept = {k: v for k, v in meta.items() if v is not None}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=kept)
    return dataclasses.field(default=default, metadata=kept)


def _positional(f: dataclasses.Field, hint: Any) -> bool:
    """A list field without `repeat` is given as positional arguments."""
    return typing.get_origin(hint) is list and not f.metadata.get("repeat")


def flag_name(name: str, positional: bool = False) -> str:
    """How the user names a field: `--batch`, or `inputs` for a positional argument."""
    return name if positional else "--" + name.replace("_", "-")


class Config:
    """Base of the command configs: validates itself when built (see the module docstring)."""

    def __post_init__(self) -> None:
        _repeated_as_lists(self)
        _database_links_followed(self)
        validate(self)

    def check(self) -> None:
        """Rules that span several fields; BadInput in one line when one fails."""


def _repeated_as_lists(config: Any) -> None:
    """A repeatable option given one value (from Python, or a YAML file written before it was
    repeatable) becomes a list of that value; paths become Paths."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if not f.metadata.get("repeat"):
            continue
        value = getattr(config, f.name)
        items = [] if value is None else value if isinstance(value, list) else [value]
        if typing.get_args(hints[f.name]) == (Path,):
            items = [Path(v) for v in items]
        setattr(config, f.name, items)


def _database_links_followed(config: Config) -> None:
    """A `db` given as a symbolic link becomes the file it points to, once, before anything
    reads it: a command that rebuilds the database aside and renames it into place then
    replaces the file, not the link (and its FAISS folder lies beside the file)."""
    db = getattr(config, "db", None)
    if isinstance(db, Path) and db.is_symlink():
        setattr(config, "db", Path(os.path.realpath(db)))  # noqa: B010 (any config with a db)


def _bounds_problem(value: float, meta: typing.Mapping[str, Any]) -> str | None:
    if "min" in meta and value < meta["min"]:
        return f"must be at least {meta['min']}"
    if "max" in meta and value > meta["max"]:
        return f"must be at most {meta['max']}"
    if "above" in meta and value <= meta["above"]:
        return f"must be greater than {meta['above']}"
    if "below" in meta and value >= meta["below"]:
        return f"must be less than {meta['below']}"
    return None


def validate(config: Any) -> None:
    """Check a config's required fields, bounds and floats, then its own `check()`."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = flag_name(f.name, _positional(f, hints[f.name]))
        if f.metadata.get("required") and (value is None or value == []):
            raise BadInput(f"{name}: required ({f.metadata['required']})")
        for item in value if isinstance(value, list) else [value]:
            _check_number(name, item, f.metadata)
    if _places_a_model(config):  # a bad --device-map is refused before anything loads
        placement_of(config.device_map, config.max_memory)
    config.check()


def _places_a_model(config: Any) -> bool:
    """Whether a config has the --device-map and --max-memory of a command that loads a
    model."""
    names = {f.name for f in dataclasses.fields(config)}
    return {"device_map", "max_memory"} <= names


def _check_number(name: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{name} {value}: must be a finite number")
    problem = _bounds_problem(value, meta)
    if problem:
        raise BadInput(f"{name} {shown(value)}: {problem}")


def field_help(cls: type, name: str) -> str:
    """The docstring written under field `name` of dataclass `cls` (empty when there is none)."""
    doc = get_attribute_docstring(cls, name)
    text = doc.docstring_below or doc.comment_inline or doc.comment_above or ""
    return " ".join(text.split())


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """The click type for a field annotation and whether the field is a boolean flag."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _click_type(args[0])
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if annotation is bool:
        return click.BOOL, True
    if annotation is int:
        return click.INT, False
    if annotation is float:
        return click.FLOAT, False
    if annotation is str:
        return click.STRING, False
    if annotation is Path:
        return PATH, False
    if origin is list:
        (item,) = typing.get_args(annotation)
        return _click_type(item)[0], False
    raise TypeError(f"unsupported config field type {annotation!r}")


def convert(cls: type, name: str, value: Any) -> Any:
    """A value from a config file as its field's type, by the same click type a flag uses;
    BadInput naming the option when it does not fit."""
    hint = typing.get_type_hints(cls)[name]
    ctype, is_flag = _click_type(hint)
    optional = type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise BadInput(f"option '{name}': must not be empty")
    if typing.get_origin(hint) is list:
        # A repeatable option may hold one value, as its flag may be given once.
        # A text list (the words of a query) may be one string; a list of paths may not,
        # since `inputs: a.duckdb b.duckdb` would name one file with a space in it.
        repeat = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("repeat")
        text = typing.get_args(hint) == (str,)
        items = (
            value
            if isinstance(value, list)
            else [value]
            if (isinstance(value, str) and text or repeat)
            else value
        )
        if not isinstance(items, list):
            raise BadInput(f"option '{name}': expected a list, got {shown(value)}")
        return [_convert_one(ctype, name, v) for v in items]
    if is_flag and not isinstance(value, bool):
        raise BadInput(f"option '{name}': expected true or false, got {shown(value)}")
    return _convert_one(ctype, name, value)


def _convert_one(ctype: Any, name: str, value: Any) -> Any:
    # YAML already typed the value: only exact kinds pass (no bool as int, no number as path).
    wanted = {click.INT: (int,), click.FLOAT: (int, float)}.get(ctype, (str,))
    if (
        isinstance(value, bool)
        and ctype is not click.BOOL
        or not isinstance(value, wanted + ((bool,) if ctype is click.BOOL else ()))
    ):
        kind = {click.INT: "an integer", click.FLOAT: "a number"}.get(ctype, "a string")
        raise BadInput(f"option '{name}': expected {kind}, got {shown(value)}")
    try:
        return ctype.convert(value, None, None)
    except click.BadParameter as e:
        raise BadInput(f"option '{name}': {clip(e.format_message(), 200)}") from None


def config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding one click option per field of `cls`, plus `--config FILE.yaml`.

    The decorated function receives a ready `cls` instance as its only argument.
    """
    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        @click.pass_context
        def wrapper(ctx: click.Context, **kwargs: Any) -> Any:
            config_file = kwargs.pop("config")
            old = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith(WAS)}
            typed = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in kwargs.items()
                if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT and v != ()
            }
            for key, value in old.items():
                if value is None or value == () or value is False:
                    continue
                name, flag = _old_flag(cls, key)
                deprecated(flag, flag_name(name))
                typed.setdefault(name, list(value) if isinstance(value, tuple) else value)
            return fn(load_config(cls, config_file, typed))

        for f in reversed(_in_help_order(dataclasses.fields(cls))):
            for i, (old_flag, meaning) in enumerate((f.metadata.get("was") or {}).items()):
                ctype, is_flag = _click_type(hints[f.name])
                wrapper = click.option(
                    old_flag,
                    f"{WAS}{f.name}__{i}",
                    hidden=True,
                    is_flag=meaning is not None,
                    flag_value=meaning,
                    type=None if meaning is not None else ctype,
                    multiple=meaning is None and typing.get_origin(hints[f.name]) is list,
                    default=None,
                )(wrapper)
            if _positional(f, hints[f.name]):  # list[...]: positional arguments
                (item,) = typing.get_args(hints[f.name])
                wrapper = click.argument(
                    f.name, nargs=-1, type=PATH if item is Path else click.STRING
                )(wrapper)
                # Click gives arguments no help of their own: document it in the command's.
                wrapper.__doc__ = (
                    f"{inspect.cleandoc(fn.__doc__ or '')}\n\n{f.name.upper()}: "
                    f"{field_help(cls, f.name)}"
                )
                continue
            ctype, is_flag = _click_type(hints[f.name])
            flag = flag_name(f.name)
            repeat = typing.get_origin(hints[f.name]) is list
            default = f.default if f.default is not dataclasses.MISSING else None
            decls = [f"{flag}/--no-{flag[2:]}"] if is_flag else [flag]
            wrapper = click.option(
                *decls,
                f.name,
                type=None if is_flag else ctype,
                is_flag=is_flag,
                multiple=repeat,
                default=None if repeat else default,
                show_default=not repeat and default not in (None, ""),
                help=field_help(cls, f.name) + (" (repeatable)" if repeat else ""),
            )(wrapper)
        wrapper = click.option(
            "--config",
            "config",
            type=PATH,
            default=None,
            help="YAML file with values for any of these options; flags given on the command "
            "line override it.",
        )(wrapper)
        return wrapper

    return decorate


WAS = "was__"
"""Prefix of the hidden click parameters that carry a deprecated flag's value."""


def _old_flag(cls: type, key: str) -> tuple[str, str]:
    """(field name, old flag) of a hidden deprecated parameter's key."""
    name, index = key[len(WAS) :].rsplit("__", 1)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return name, list(fields[name].metadata["was"])[int(index)]


def deprecated(old: str, new: str) -> None:
    """The one-line note a deprecated flag or config key gets (on stderr)."""
    click.echo(
        f"note: {old} is deprecated and will be removed in the next release; use {new}", err=True
    )


def _in_help_order(fields: tuple[dataclasses.Field, ...]) -> list[dataclasses.Field]:
    """The fields as `--help` lists them: --db and --sae first (what every command is about),
    then the rest in their declared order."""
    first = {"db": 0, "sae": 1, "sae_dir": 2}
    return sorted(fields, key=lambda f: first.get(f.name, len(first)))


def read_config_file(cls: type, path: Path) -> dict[str, Any]:
    """The values of a YAML config file for `cls`, each converted to its field's type."""
    loaded = load_yaml(path, "--config") or {}
    if not isinstance(loaded, dict):
        raise BadInput(f"--config {path}: expected a mapping of option names to values")
    names = {f.name for f in dataclasses.fields(cls)}
    renamed = {
        old[2:].replace("-", "_"): f.name
        for f in dataclasses.fields(cls)
        for old, meaning in (f.metadata.get("was") or {}).items()
        if meaning is None
    }
    values: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name in renamed and name not in names:
            deprecated(f"'{key}' in {path}", f"'{renamed[name]}'")
            name = renamed[name]
        if name not in names:
            known = ", ".join(sorted(names))
            raise BadInput(f"--config {path}: unknown option '{clip(str(key))}' (known: {known})")
        try:
            values[name] = convert(cls, name, value)
        except BadInput as e:
            raise BadInput(f"--config {path}: {e}") from None
    return values


def load_config(cls: type[C], path: Path | None, overrides: dict[str, Any]) -> C:
    """Build `cls` from its defaults, then the YAML file at `path`, then `overrides`; the
    result has validated itself."""
    values = read_config_file(cls, path) if path is not None else {}
    values.update(overrides)
    return cls(**values)


def config_metadata(config: Any) -> dict[str, Any]:
    """The config as JSON-ready metadata (paths as strings)."""

    def plain(v: Any) -> Any:
        return (
            str(v)
            if isinstance(v, Path)
            else [plain(x) for x in v]
            if isinstance(v, list | tuple)
            else v
        )

    out = {k: plain(v) for k, v in dataclasses.asdict(config).items()}
    if _places_a_model(config) and config.device_map is not None:
        # the map itself, not only the file it was read from
        out["placement"] = dataclasses.asdict(placement_of(config.device_map, config.max_memory))
    return out
