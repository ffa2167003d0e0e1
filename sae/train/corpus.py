"""Training text: the built-in corpus, local files and folders, or a Hugging Face dataset.

The built-in corpus is text every Python installation carries: the docstrings of the standard
library and the language reference's help topics (`pydoc_data.topics`). Nothing is downloaded
and no third-party text is copied into this repository. It is built once per Python version and
cached (atomically) under ~/.cache/shoggoth.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoggoth.core.atomic import write_json_atomic
from shoggoth.core.cache import cache_dir
from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.text import jsonl_rows
from shoggoth.sae.models import hub_reachable
from shoggoth.sae.train.chitchat import CHITCHAT, chat_texts

BUILTIN = "builtin"
CORPUS_VERSION = 1
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _stdlib_docstrings() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 6:
                    yield doc


def builtin_texts() -> list[str]:
    """The built-in corpus as a list of documents (stdlib docstrings + pydoc help topics)."""
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    cached = cache_dir() / f"builtin-corpus-v{CORPUS_VERSION}-{version}.json"
    if cached.is_file():
        try:
            return json.loads(cached.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache is rebuilt below
    from pydoc_data.topics import topics

    texts = [t for _, t in sorted(topics.items())] + list(_stdlib_docstrings())
    write_json_atomic(cached, texts, indent=None)
    return texts


def _txt_documents(path: Path) -> list[str]:
    """A .txt file's documents: paragraphs separated by blank lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _jsonl_documents(path: Path, column: str) -> list[str]:
    docs = []
    for n, row in jsonl_rows(path, "--dataset"):
        if column not in row:
            raise BadInput(f"{path} line {n}: no text column '{column}'")
        if isinstance(row[column], str) and row[column].strip():
            docs.append(row[column])
    return docs


def _parquet_documents(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise BadInput(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    if column not in table.column_names:
        names = ", ".join(table.column_names)
        raise BadInput(f"{path}: no text column '{column}' (columns: {names})")
    return [t for t in table.column(column).to_pylist() if isinstance(t, str) and t.strip()]


def _file_documents(path: Path, column: str) -> list[str]:
    if path.suffix == ".txt":
        return _txt_documents(path)
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, column)
    if path.suffix == ".parquet":
        return _parquet_documents(path, column)
    raise BadInput(f"dataset '{path}': unsupported file type (expected .txt, .jsonl or .parquet)")


def _saved_dataset_documents(path: Path, column: str) -> list[str]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    if column not in ds.column_names:
        raise BadInput(
            f"dataset '{path}': no text column '{column}' (columns: {', '.join(ds.column_names)})"
        )
    return [t for t in ds[column] if isinstance(t, str) and t.strip()]


def _hub_documents(name: str, column: str, max_chars: int) -> list[str]:
    """Stream a hub dataset's train split until `max_chars` characters of text are read."""
    if not hub_reachable():
        raise BadInput(
            f"dataset '{name}': not a local path, and loading it from the Hugging Face hub needs "
            "network (unreachable or HF_HUB_OFFLINE is set)"
        )
    import datasets

    try:
        stream = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as e:  # the hub's errors vary by cause; all mean this name cannot be used
        first = first_line(e)
        raise BadInput(f"dataset '{name}': could not be loaded: {first}") from None
    docs, total = [], 0
    for row in stream:
        if column not in row:
            names = ", ".join(row)
            raise BadInput(f"dataset '{name}': no text column '{column}' (columns: {names})")
        text = row[column]
        if isinstance(text, str) and text.strip():
            docs.append(text)
            total += len(text)
            if total >= max_chars:
                break
    return docs


def load_texts(dataset: str, text_column: str = "text", max_chars: int = 50_000_000,
               tokenizer: Any = None) -> list[str]:
    """The documents of `dataset`: 'builtin', 'chitchat' (conversations in `tokenizer`'s chat
    template, first `max_chars` characters), a local .txt/.jsonl/.parquet file, a folder of
    them, a `save_to_disk` folder, or a Hugging Face hub dataset name (streamed, first
    `max_chars` characters). Raises BadInput naming the dataset when it is missing or empty."""
    if dataset == BUILTIN:
        return builtin_texts()
    if dataset == CHITCHAT:
        return chat_texts(tokenizer, max_chars)
    path = Path(dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            docs = _saved_dataset_documents(path, text_column)
        else:
            files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            if not files:
                raise BadInput(
                    f"dataset '{dataset}': folder holds no .txt, .jsonl or .parquet files"
                )
            docs = [d for f in files for d in _file_documents(f, text_column)]
    elif path.is_file():
        docs = _file_documents(path, text_column)
    elif dataset.startswith(("/", "./", "../", "~")) or path.suffix in TEXT_SUFFIXES:
        raise BadInput(f"dataset '{dataset}': no such file or directory")
    else:
        docs = _hub_documents(dataset, text_column, max_chars)
    if not docs:
        raise BadInput(f"dataset '{dataset}': contains no text")
    return docs
