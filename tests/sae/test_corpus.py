"""Training text: the built-in corpus, local formats, bad datasets, and context packing."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoggoth.core.errors import BadInput
from shoggoth.sae.train.contexts import pack_contexts, split_documents
from shoggoth.sae.train.corpus import builtin_texts, cache_dir, load_texts

DOCS = ["The first document talks about rain.", "A second one, about the sea.", "Third: moons."]


def test_builtin_corpus_is_large_offline_and_cached(minilm):
    texts = builtin_texts()
    assert len(texts) > 1000 and all(isinstance(t, str) and t.strip() for t in texts)
    n = sum(len(ids) for ids in minilm.tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert n >= 500_000  # what `shoggoth train` promises to train on without repeating
    (cache,) = cache_dir().glob("builtin-corpus-*.json")
    written = cache.stat().st_ino, cache.stat().st_mtime_ns
    assert builtin_texts() == texts
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == written  # read, not rebuilt


def test_txt_jsonl_parquet_folder_and_saved_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:2]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in DOCS) + "\n")
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "c.parquet")
    assert load_texts(str(tmp_path / "a.txt")) == DOCS[:2]
    assert load_texts(str(tmp_path / "b.jsonl"), "body") == DOCS
    assert load_texts(str(tmp_path / "c.parquet"), "body") == DOCS
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.txt").write_text(DOCS[0])
    (folder / "y.txt").write_text(DOCS[1])
    assert load_texts(str(folder)) == DOCS[:2]
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(saved))
    assert load_texts(str(saved)) == DOCS
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:1]})}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    assert load_texts(str(tmp_path / "saved_dict")) == DOCS[:1]


def test_bad_datasets_are_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (tmp_path / "nocol.jsonl").write_text('{"body": "ok"}\n')
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "nocol.parquet")
    (tmp_path / "nothing").mkdir()
    cases = {
        str(tmp_path / "missing.txt"): "no such file",
        str(tmp_path / "empty.txt"): "contains no text",
        str(tmp_path / "bad.jsonl"): "line 2: not valid JSON",
        str(tmp_path / "nocol.jsonl"): "line 1: no text column 'text'",
        str(tmp_path / "nocol.parquet"): "no text column 'text' (columns: body)",
        str(tmp_path / "nothing"): "no .txt, .jsonl or .parquet",
        "someone/some-dataset": "needs network",
    }
    for dataset, problem in cases.items():
        with pytest.raises(BadInput) as err:
            load_texts(dataset)
        assert problem in str(err.value) and "\n" not in str(err.value), dataset


@pytest.mark.parametrize("which", ["minilm", "tiny_gpt2"])
def test_pack_contexts_wraps_like_measured_prompts(which, request):
    model = request.getfixturevalue(which)
    tok = model.tokenizer
    ctx = pack_contexts(tok, DOCS * 20, 16, is_causal=model.is_causal)
    assert ctx.shape[1] == 16 and len(ctx) > 3
    if model.is_causal:
        assert (ctx[:, 0] == tok.bos_token_id).all()
        body = ctx[:, 1:]
    else:
        assert (ctx[:, 0] == tok.cls_token_id).all() and (ctx[:, -1] == tok.sep_token_id).all()
        body = ctx[:, 1:-1]
    # The bodies, joined, are the documents' tokens with a separator after each document.
    sep = tok.eos_token_id if model.is_causal else tok.sep_token_id
    stream = []
    for ids in tok(DOCS * 20, add_special_tokens=False)["input_ids"]:
        stream += ids + [sep]
    flat = body.reshape(-1).tolist()
    assert flat == stream[: len(flat)]
    assert len(stream) - len(flat) < body.shape[1]  # only the incomplete last body is dropped
    capped = pack_contexts(tok, DOCS * 20, 16, is_causal=model.is_causal, max_contexts=2)
    assert capped.tolist() == ctx[:2].tolist()


def test_context_too_small(minilm):
    with pytest.raises(BadInput, match="context size 2"):
        pack_contexts(minilm.tokenizer, DOCS, 2, is_causal=False)


def test_split_documents_is_disjoint_and_deterministic():
    docs = [f"doc {i}" for i in range(100)]
    train, held = split_documents(docs)
    assert len(held) == 4 and set(train).isdisjoint(held) and len(train) + len(held) == 100
    assert split_documents(docs) == (train, held)


def test_chitchat_without_a_chat_template_is_plain_turns_under_training_personas():
    """A tokenizer with no chat template gets each 4-turn piece as plain text, the system prompt
    first when the piece has one; the order is fixed, so two loads are equal."""
    from shoggoth.sae.train.chitchat import TURNS, conversations, system_of, training_personas

    docs = load_texts("chitchat", max_chars=100_000, tokenizer=None)
    assert docs == load_texts("chitchat", max_chars=100_000, tokenizer=None)
    personas = training_personas()
    first = conversations()[0]
    assert docs[0] == "\n\n".join([system_of(0, personas), *first[:TURNS]])
    assert docs[2] == "\n\n".join(first[2 * TURNS : 3 * TURNS])  # no system turn
    assert sum(len(d) for d in docs[:-1]) < 100_000 <= sum(len(d) for d in docs)
