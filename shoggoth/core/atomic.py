"""Atomic writes: a file or directory appears complete or not at all."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shoggoth.core.errors import BadInput


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary path in `path`'s folder, then rename it to `path`; on
    any failure the temporary file is removed and `path` is left as it was. A symbolic link is
    followed (the file it points to is replaced, the link kept); an output that is not a
    regular file (a device such as /dev/null or /dev/full, a FIFO) is written in place, never
    replaced by a file, and a socket or folder is refused."""
    path = Path(os.path.realpath(path))
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            _write_in_place(path, write)
            return
        raise BadInput(f"{path}: not a regular file; nothing was written")
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


def _write_in_place(path: Path, write: Callable[[str], None]) -> None:
    """`write` into a temporary file, then its bytes copied into the device or FIFO `path`."""
    fd, tmp = tempfile.mkstemp(prefix=".shoggoth-out.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except OSError as e:
        raise BadInput(f"{path}: cannot be written ({e.strerror or e})") from None
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


_HELD: dict[Path, int] = {}
"""Resume folders this process works in, with the descriptor that holds each one's lock."""


def resume_folder(root: Path, name: str, key: dict[str, Any]) -> tuple[Path, str]:
    """`root/name-<digest of key>`, the folder a long run keeps its finished pieces in so that
    only a run with the same key resumes from it, and the digest. The folder is created and
    locked (flock) for as long as this process works in it: a second process on the same run
    is refused in one line, and another run's folder is removed only when no process holds it
    (a leftover that can never be resumed). `name` may not leave `root`."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise BadInput(f"{name!r}: cannot name a folder (it would leave {root})")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    mine = root / f"{name}-{digest[:12]}"
    for other in root.glob(f"{glob.escape(name)}-*") if root.is_dir() else []:
        if other != mine and other.parent == root and _free(other):
            shutil.rmtree(other, ignore_errors=True)
    try:
        mine.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"{mine}: cannot be created ({e.strerror or e})") from None
    if mine not in _HELD:
        fd = os.open(mine, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BadInput(
                f"{mine}: another shoggoth command is running this same work now; "
                "wait for it to finish (its result will be in the database)"
            ) from None
        _HELD[mine] = fd
    return mine, digest[:12]


def _free(folder: Path) -> bool:
    """Whether no process holds `folder`'s lock (see `resume_folder`)."""
    if folder in _HELD:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def drop_resume_folder(folder: Path) -> None:
    """Remove a finished run's folder (releasing its lock), and its root when nothing else is
    left there."""
    shutil.rmtree(folder, ignore_errors=True)
    fd = _HELD.pop(folder, None)
    if fd is not None:
        os.close(fd)
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        try:
            folder.parent.rmdir()
        except OSError:  # another run made its folder meanwhile
            pass


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
