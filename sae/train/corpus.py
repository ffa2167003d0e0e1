"""Training text: the built-in corpus, local files and folders, or a Hugging Face dataset (from
the local datasets cache when it is there). A dataset whose rows hold chat conversations is
rendered in the model's chat template (chat_corpus.py).

The built-in corpus is text every Python installation carries: the docstrings of the standard
library and the language reference's help topics (`pydoc_data.topics`). Nothing is downloaded
and no third-party text is copied into this repository. It is built once per Python version and
cached (atomically) under ~/.cache/shoggoth.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

from shoggoth.battery.personas import Persona
from shoggoth.core.atomic import write_json_atomic
from shoggoth.core.cache import cache_dir
from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.text import jsonl_rows
from shoggoth.sae.models import hub_reachable
from shoggoth.sae.train.chat_corpus import (
    Conversation,
    Piece,
    chat_column,
    conversation_of,
    persona_system,
    render_conversation,
    require_template,
)
from shoggoth.sae.train.chitchat import CHITCHAT, chat_texts, pieces, training_personas

if TYPE_CHECKING:
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

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
            return cast("list[str]", json.loads(cached.read_text()))
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


Item = str | Conversation
"""One document of a dataset as read: a text, or a conversation still to be rendered."""


def _is_list_type(t: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _jsonl_documents(path: Path, column: str) -> Iterator[Item]:
    rows = list(jsonl_rows(path, "--dataset"))
    first = rows[0][1] if rows else {}

    def holds_lists(name: str) -> bool:
        return isinstance(next((r[name] for _, r in rows if r.get(name) is not None), None), list)

    chat = chat_column(column, first, holds_lists)
    for n, row in rows:
        if chat is not None:
            if chat not in row:
                raise BadInput(f"dataset '{path}' line {n}: no conversation column '{chat}'")
            conversation = conversation_of(row[chat], str(path), n, "line")
            if conversation is not None:
                yield conversation
            continue
        if column not in row:
            raise BadInput(f"{path} line {n}: no text column '{column}'")
        if isinstance(row[column], str) and row[column].strip():
            yield row[column]


def _parquet_documents(path: Path, column: str) -> Iterator[Item]:
    import pyarrow.parquet as pq

    def unreadable(e: Exception) -> BadInput:
        return BadInput(f"{path}: not a readable parquet file ({type(e).__name__})")

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise unreadable(e) from None
    schema = file.schema_arrow
    chat = chat_column(column, schema.names, lambda c: _is_list_type(schema.field(c).type))
    if chat is None and column not in schema.names:
        names = ", ".join(schema.names)
        raise BadInput(f"{path}: no text column '{column}' (columns: {names})")
    batches = file.iter_batches(columns=[chat or column])
    n = 0
    while True:
        try:
            values = next(batches).column(0).to_pylist()
        except StopIteration:
            return
        except Exception as e:  # a damaged page
            raise unreadable(e) from None
        yield from _column_items(values, chat, str(path), n)
        n += len(values)


def _column_items(values: list[object], chat: str | None, where: str, n: int) -> Iterator[Item]:
    """A column's values from row n + 1 on as documents: conversations where the column is a
    chat column, else its non-blank texts."""
    for row, value in enumerate(values, start=n + 1):
        if chat is not None:
            conversation = conversation_of(value, where, row)
            if conversation is not None:
                yield conversation
        elif isinstance(value, str) and value.strip():
            yield value


def _file_documents(path: Path, column: str) -> Iterator[Item]:
    if path.suffix == ".txt":
        return iter(_txt_documents(path))
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, column)
    if path.suffix == ".parquet":
        return _parquet_documents(path, column)
    raise BadInput(f"dataset '{path}': unsupported file type (expected .txt, .jsonl or .parquet)")


def _saved_dataset_documents(path: Path, column: str) -> Iterator[Item]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    schema = ds.data.schema
    chat = chat_column(column, ds.column_names, lambda c: _is_list_type(schema.field(c).type))
    if chat is None and column not in ds.column_names:
        raise BadInput(
            f"dataset '{path}': no text column '{column}' (columns: {', '.join(ds.column_names)})"
        )
    n = 0
    for batch in ds.select_columns([chat or column]).iter(batch_size=1024):
        values = list(batch[chat or column])
        yield from _column_items(values, chat, str(path), n)
        n += len(values)


def in_datasets_cache(name: str) -> bool:
    """Whether `datasets.load_dataset(name)` has prepared `name` in the local datasets cache
    (HF_DATASETS_CACHE, by default ~/.cache/huggingface/datasets), where it loads from offline:
    the folder datasets' own cache lookup reads (namespace___name/config/version/hash)."""
    import datasets.config
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    if len(parts) > 2 or not all(parts):
        return False
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any((p / "dataset_info.json").is_file() for p in root.glob("*/*/*"))


def _hub_documents(name: str, column: str) -> Iterator[Item]:
    """A hub dataset's train split, streamed: from the local datasets cache when `name` is in
    it (offline too), from the hub otherwise."""
    if not in_datasets_cache(name) and not hub_reachable():
        raise BadInput(
            f"dataset '{name}': not a local path, not in the Hugging Face datasets cache, and "
            "loading it from the hub needs network (unreachable or HF_HUB_OFFLINE is set)"
        )
    import datasets

    try:
        # datasets answers from its cache when the hub cannot be reached (or HF_HUB_OFFLINE).
        loaded = datasets.load_dataset(name, streaming=True)
    except Exception as e:  # the hub's errors vary by cause; all mean this name cannot be used
        first = first_line(e)
        raise BadInput(f"dataset '{name}': could not be loaded: {first}") from None
    if isinstance(loaded, datasets.IterableDatasetDict):
        splits = list(loaded)
        if not splits:
            return
        # 'train', else the first training split (UltraChat's train_sft), else the first.
        split = (
            "train"
            if "train" in loaded
            else next((s for s in splits if s.startswith("train")), splits[0])
        )
        loaded = loaded[split]
    rows = iter(loaded)
    first_row = next(rows, None)
    if first_row is None:
        return
    chat = chat_column(column, first_row, lambda c: isinstance(first_row[c], list))
    for n, row in enumerate(itertools.chain([first_row], rows), 1):
        if chat is not None:
            conversation = conversation_of(row.get(chat), name, n)
            if conversation is not None:
                yield conversation
            continue
        if column not in row:
            names = ", ".join(row)
            raise BadInput(f"dataset '{name}': no text column '{column}' (columns: {names})")
        text = row[column]
        if isinstance(text, str) and text.strip():
            yield text


def _documents(dataset: str, text_column: str) -> tuple[Iterator[Item], bool]:
    """The documents of a dataset other than the built-in ones, in order, and whether they
    are streamed from the hub (then read only as far as needed)."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _saved_dataset_documents(path, text_column), False
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise BadInput(f"dataset '{dataset}': folder holds no .txt, .jsonl or .parquet files")
        return itertools.chain.from_iterable(_file_documents(f, text_column) for f in files), False
    if path.is_file():
        return _file_documents(path, text_column), False
    if dataset.startswith(("/", "./", "../", "~")) or path.suffix in TEXT_SUFFIXES:
        raise BadInput(f"dataset '{dataset}': no such file or directory")
    return _hub_documents(dataset, text_column), True


def load_texts(
    dataset: str,
    text_column: str = "text",
    max_chars: int = 50_000_000,
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_name: str = "",
) -> list[str]:
    """The documents of `dataset`: 'builtin', 'chitchat' (conversations in `tokenizer`'s chat
    template, first `max_chars` characters), a local .txt/.jsonl/.parquet file, a folder of
    them, a `save_to_disk` folder, or a Hugging Face dataset name (streamed, first `max_chars`
    characters; from the local datasets cache when it is there). A dataset whose rows hold
    chat conversations (chat_corpus.py) is rendered in `tokenizer`'s chat template (model
    `model_name`), first `max_chars` characters, each conversation without a system turn under
    the training personas as chitchat's pieces are. Raises BadInput naming the dataset when it
    is missing, empty or malformed."""
    if dataset == BUILTIN:
        return builtin_texts()
    if dataset == CHITCHAT:
        return chat_texts(tokenizer, max_chars)
    items, streamed = _documents(dataset, text_column)
    docs: list[str] = []
    total = 0
    personas: list[Persona] | None = None
    for item in items:
        if isinstance(item, Conversation):
            if personas is None:
                require_template(tokenizer, dataset, model_name)
                personas = training_personas()
            text = render_conversation(tokenizer, item, persona_system(item, len(docs), personas))
        else:
            text = item
        docs.append(text)
        total += len(text)
        if (streamed or personas is not None) and total >= max_chars:
            break
    if not docs:
        raise BadInput(f"dataset '{dataset}': contains no text")
    return docs


def load_pieces(
    dataset: str,
    text_column: str = "text",
    max_chars: int = 50_000_000,
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_name: str = "",
) -> list[Piece]:
    """The pieces a difference dictionary pairs (paired.make_pairs), in the order of
    load_texts's documents (so that both hold out the same ones): chitchat's pieces of turns; a
    chat dataset's conversations, until `max_chars` characters of messages (make_pairs passes
    over those with a system turn of their own: the personas take that place); each document
    of any other dataset as one user turn."""
    if dataset == CHITCHAT:
        return list(pieces())
    if dataset == BUILTIN:
        return [[doc] for doc in builtin_texts()]
    items, streamed = _documents(dataset, text_column)
    out: list[Piece] = []
    total = chats = own_system = 0
    for item in items:
        if isinstance(item, Conversation):
            if not chats:
                require_template(tokenizer, dataset, model_name)
            chats += 1
            own_system += item.has_system
            out.append(item)
            total += sum(len(m["content"]) for m in item.messages)
        else:
            out.append([item])
            total += len(item)
        if (streamed or chats) and total >= max_chars:
            break
    if not out:
        raise BadInput(f"dataset '{dataset}': contains no text")
    if chats and own_system == len(out):
        raise BadInput(
            f"dataset '{dataset}': every conversation has a system turn of its own; "
            "persona/reference pairs put the training personas and the reference in "
            "that place and need conversations without one"
        )
    return out
