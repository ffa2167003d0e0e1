"""Config dataclasses → CLI flags, YAML config files and saved metadata.

Every command has one dataclass whose fields carry a docstring each. This module turns such a
class into click options (help text = the field's docstring), merges an optional YAML file under
the flags the user typed, and returns a plain dict for the metadata saved beside outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from simple_parsing.docstring import get_attribute_docstring

from sae.errors import BadInput

C = TypeVar("C")


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
        return bool, True
    if annotation in (int, float, str):
        return annotation, False
    if annotation is Path:
        return click.Path(path_type=Path), False
    raise TypeError(f"unsupported config field type {annotation!r}")


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
            typed = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in kwargs.items()
                if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
                and v != ()
            }
            return fn(load_config(cls, config_file, typed))

        for f in reversed(dataclasses.fields(cls)):
            if typing.get_origin(hints[f.name]) is list:  # list[...]: positional arguments
                (item,) = typing.get_args(hints[f.name])
                wrapper = click.argument(
                    f.name, nargs=-1,
                    type=click.Path(path_type=Path) if item is Path else click.STRING)(wrapper)
                # Click gives arguments no help of their own: document it in the command's.
                wrapper.__doc__ = (f"{inspect.cleandoc(fn.__doc__ or '')}\n\n{f.name.upper()}: "
                                   f"{field_help(cls, f.name)}")
                continue
            ctype, is_flag = _click_type(hints[f.name])
            flag = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else None
            if is_flag:
                decls = [f"{flag}/--no-{flag[2:]}"]
            else:
                decls = [flag]
            wrapper = click.option(
                *decls,
                f.name,
                type=None if is_flag else ctype,
                is_flag=is_flag,
                default=default,
                show_default=default not in (None, ""),
                help=field_help(cls, f.name),
            )(wrapper)
        wrapper = click.option(
            "--config",
            "config",
            type=click.Path(path_type=Path),
            default=None,
            help="YAML file with values for any of these options; flags given on the command "
            "line override it.",
        )(wrapper)
        return wrapper

    return decorate


def yaml_problem(error: yaml.YAMLError) -> str:
    """' line N: not valid YAML (what the parser expected)' for a one-line error message."""
    mark = getattr(error, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None)
    return f"{where}: not valid YAML" + (f" ({problem})" if problem else "")


def load_config(cls: type[C], path: Path | None, overrides: dict[str, Any]) -> C:
    """Build `cls` from its defaults, then the YAML file at `path`, then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise BadInput(f"{path}: config file does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise BadInput(f"{path}{yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise BadInput(f"{path}: expected a mapping of option names to values")
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in names:
                known = ", ".join(sorted(names))
                raise BadInput(f"{path}: unknown option '{key}' (known: {known})")
            values[name] = value
    values.update(overrides)
    return cls(**values)


def config_metadata(config: Any) -> dict[str, Any]:
    """The config as JSON-ready metadata (paths as strings)."""
    def plain(v: Any) -> Any:
        return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(
            v, list | tuple) else v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
