"""Atomic writes: a file or directory appears complete or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shoggoth.core.errors import BadInput


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary path in `path`'s folder, then rename it to `path`; on
    any failure the temporary file is removed and `path` is left as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise BadInput(f"{path}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write `data` as JSON to `path` through a temporary file in the same directory."""
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent, default=str)

    write_atomic(path, dump)


def save_npz_atomic(path: Path, arrays: dict[str, Any]) -> None:
    """numpy arrays to an .npz file, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(path, write)


def resume_folder(root: Path, name: str, key: dict[str, Any]) -> tuple[Path, str]:
    """`root/name-<digest of key>`, the folder a long run keeps its finished pieces in so that
    only a run with the same key resumes from it, and the digest. Other `name-*` folders are
    another run's leftovers, which can never be resumed: they are removed."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    mine = root / f"{name}-{digest[:12]}"
    for other in root.glob(f"{name}-*") if root.is_dir() else []:
        if other != mine:
            shutil.rmtree(other, ignore_errors=True)
    return mine, digest[:12]


def drop_resume_folder(folder: Path) -> None:
    """Remove a finished run's folder, and its root when nothing else is left there."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        folder.parent.rmdir()


def publish(built: Path, out: Path) -> None:
    """Move `built` to `out` by rename; an old `out` is swapped away only after that succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        os.replace(built, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(built, out)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
