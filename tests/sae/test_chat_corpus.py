"""Chat corpora: rows holding a list of chat messages (UltraChat's and tulu's `messages`, lmsys's
`conversation`) from .jsonl, .parquet, a save_to_disk folder and the HF datasets cache (offline),
rendered in the model's chat template under the training personas; pairs for a difference
dictionary; bad rows and template-less models refused in one line; a short training run."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoggoth import cli
from shoggoth.battery.personas import Persona
from shoggoth.core.errors import BadInput
from shoggoth.sae.prompts import EMPTY_SYSTEM
from shoggoth.sae.train.chat_corpus import Conversation
from shoggoth.sae.train.chitchat import system_of, training_personas
from shoggoth.sae.train.corpus import load_pieces, load_texts


def chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


CHATS = [
    chat(("user", "What is rain?"), ("assistant", "Water that falls from clouds.")),
    chat(
        ("user", "Why is the sky blue?"),
        ("assistant", "Blue light scatters most."),
        ("user", "And at sunset?"),
        ("assistant", "The light crosses more air: red."),
    ),
    chat(("user", "Tell me about the moon."), ("assistant", "It circles the earth.")),
    chat(("user", "Hi."), ("assistant", "Hello! How can I help?")),
    chat(
        ("system", "You are a poet."),
        ("user", "Write about the sea."),
        ("assistant", "Waves fold the light."),
    ),
]
"""Conversations 0-3 have no system turn (persona, persona, none, empty); 4 has its own."""


@pytest.fixture(scope="module")
def tok(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_gpt2_dir)


def template(tok, messages, system=None):
    head = [] if system is None else [{"role": "system", "content": system}]
    return tok.apply_chat_template(head + messages, tokenize=False)


def expected(tok, chats=CHATS, start=0):
    """The documents the chats render to: their own system turn, or the training persona
    slot chitchat gives piece i."""
    personas = training_personas()
    return [
        template(tok, c)
        if c[0]["role"] == "system"
        else template(tok, c, system_of(start + i, personas))
        for i, c in enumerate(chats)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ultrachat(path, chats=CHATS):
    """UltraChat 200k's row shape: prompt, prompt_id, messages."""
    return write_jsonl(
        path,
        [
            {"prompt": c[-2]["content"], "prompt_id": f"id{i}", "messages": c}
            for i, c in enumerate(chats)
        ],
    )


def lmsys(path, chats=CHATS):
    """lmsys-chat-1m's row shape: the messages under `conversation`, a list of structs."""
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "conversation_id": f"c{i}",
                    "model": "vicuna-13b",
                    "conversation": c,
                    "turn": len(c) // 2,
                    "language": "English",
                }
                for i, c in enumerate(chats)
            ]
        ),
        path,
    )
    return path


def test_messages_rows_render_in_the_chat_template_under_the_training_personas(tmp_path, tok):
    docs = load_texts(str(ultrachat(tmp_path / "ultra.jsonl")), tokenizer=tok)
    assert docs == expected(tok)
    personas = training_personas()
    # Conversation 2 runs with no system turn: exactly apply_chat_template of its messages.
    assert docs[2] == tok.apply_chat_template(CHATS[2], tokenize=False)
    # 0 and 1 wear a training persona as their system turn, 3 an empty system turn.
    for i in (0, 1):
        assert docs[i].startswith(f"<|endoftext|><|system|>\n{system_of(i, personas)}<|end|>\n")
        assert docs[i].endswith(
            tok.apply_chat_template(CHATS[i], tokenize=False).removeprefix("<|endoftext|>")
        )
    assert docs[3] == template(tok, CHATS[3], "")
    # A conversation with its own system turn keeps it, and wears no persona.
    assert docs[4] == tok.apply_chat_template(CHATS[4], tokenize=False)
    assert docs[4].count("<|system|>") == 1 and "You are a poet." in docs[4]
    # lmsys's `conversation` column, a save_to_disk folder (tulu's shape) and a DatasetDict.
    assert load_texts(str(lmsys(tmp_path / "lmsys.parquet")), tokenizer=tok) == docs
    saved = tmp_path / "tulu"
    datasets.Dataset.from_list(
        [{"id": f"t{i}", "messages": c, "source": "x"} for i, c in enumerate(CHATS)]
    ).save_to_disk(str(saved))
    assert load_texts(str(saved), tokenizer=tok) == docs
    split = tmp_path / "split"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"messages": c} for c in CHATS])}
    ).save_to_disk(str(split))
    assert load_texts(str(split), tokenizer=tok) == docs
    # A folder of both: the persona slots run on across its files.
    folder = tmp_path / "folder"
    folder.mkdir()
    ultrachat(folder / "a.jsonl")
    lmsys(folder / "b.parquet")
    assert load_texts(str(folder), tokenizer=tok) == docs + expected(tok, start=len(CHATS))


def test_the_column_chat_rows_are_read_from(tmp_path, tok):
    """--text-column may name a column of messages; a text column wins over `messages`; a
    named column that is absent is not looked for elsewhere; max_chars stops the rendering."""
    rows = [{"dialog": c} for c in CHATS]
    path = write_jsonl(tmp_path / "dialog.jsonl", rows)
    assert load_texts(str(path), "dialog", tokenizer=tok) == expected(tok)
    with pytest.raises(BadInput, match="line 1: no text column 'text'"):
        load_texts(str(path), tokenizer=tok)  # the default finds only messages/conversation
    both = write_jsonl(tmp_path / "both.jsonl", [{"text": "Plain text.", "messages": CHATS[0]}])
    assert load_texts(str(both), tokenizer=tok) == ["Plain text."]
    assert load_texts(str(both), "messages", tokenizer=tok) == expected(tok, CHATS[:1])
    pq.write_table(pa.table({"dialog": CHATS}), tmp_path / "dialog.parquet")
    assert load_texts(str(tmp_path / "dialog.parquet"), "dialog", tokenizer=tok) == expected(tok)
    many = ultrachat(tmp_path / "many.jsonl", CHATS * 10)
    first = load_texts(str(many), tokenizer=tok, max_chars=1)
    assert first == expected(tok)[:1]
    assert load_texts(str(many), tokenizer=tok, max_chars=len(first[0]) + 1) == expected(tok)[:2]


@pytest.mark.parametrize(
    "row, problem",
    [
        (
            {"messages": [{"role": "human", "content": "Hi."}]},
            "message 1 has unknown role 'human' (expected system, user, assistant)",
        ),
        (
            {"messages": [{"from": "human", "value": "Hi."}]},
            "message 1 is not a {role, content} object",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi."}, "Hello."]},
            "message 2 is not a {role, content} object",
        ),
        ({"messages": [{"role": "user", "content": None}]}, "message 1 is not a {role, content}"),
        ({"messages": "Hi."}, "not a list of chat messages (str)"),
        ({"prompt": "Hi."}, "no conversation column 'messages'"),
    ],
)
def test_bad_rows_name_the_dataset_the_row_and_the_problem(tmp_path, tok, row, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CHATS[0]}, row])
    with pytest.raises(BadInput) as err:
        load_texts(str(path), tokenizer=tok)
    message = str(err.value)
    assert message.startswith(f"dataset '{path}' line 2: ")
    assert problem in message and "\n" not in message


def test_a_bad_parquet_row_and_a_model_without_a_chat_template(tmp_path, tok, tiny_gpt2_base_dir):
    path = tmp_path / "lmsys.parquet"
    pq.write_table(
        pa.table({"conversation": [CHATS[0], CHATS[1], chat(("user", "Hi."), ("tool", "{}"))]}),
        path,
    )
    with pytest.raises(
        BadInput,
        match=rf"^dataset '{path}' row 3: message 2 has unknown role "
        "'tool'",
    ):
        load_texts(str(path), tokenizer=tok)
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(tiny_gpt2_base_dir)
    good = str(ultrachat(tmp_path / "ultra.jsonl"))
    for load in (load_texts, load_pieces):
        with pytest.raises(BadInput) as err:
            load(good, tokenizer=base, model_name="tiny-base")
        assert str(err.value) == (
            f"dataset '{good}': holds chat conversations, and model "
            "'tiny-base' has no chat template to render them in"
        )


def test_a_template_that_refuses_a_conversation_is_one_line(tmp_path, tok):
    from helpers import NO_SYSTEM_TEMPLATE

    strict = tok.__class__.from_pretrained(tok.name_or_path)
    strict.chat_template = NO_SYSTEM_TEMPLATE
    path = str(ultrachat(tmp_path / "ultra.jsonl"))
    # A persona goes to the head of the first turn, as in chitchat; the corpus's own system
    # turn cannot.
    with pytest.raises(
        BadInput,
        match=rf"^dataset '{path}' line 5: the model's chat template "
        "refuses it: System role not supported$",
    ):
        load_texts(path, tokenizer=strict)
    docs = load_texts(str(ultrachat(tmp_path / "no_system.jsonl", CHATS[:4])), tokenizer=strict)
    persona = system_of(0, training_personas())
    assert docs[0] == strict.apply_chat_template(
        [{"role": "user", "content": f"{persona}\n\n{CHATS[0][0]['content']}"}, CHATS[0][1]],
        tokenize=False,
    )


def test_pairs_put_the_persona_and_the_reference_where_the_system_turn_is(tmp_path, tok):
    from shoggoth.sae.train.paired import make_pairs

    path = str(ultrachat(tmp_path / "ultra.jsonl"))
    pieces = load_pieces(path, tokenizer=tok)
    assert [p.messages for p in pieces if isinstance(p, Conversation)] == CHATS
    personas = [
        Persona("pirate", "fiction", "", ("You are a pirate captain.",)),
        Persona("helper", "assistant", "", ("Help the user kindly.",)),
    ]
    pairs = make_pairs(tok, pieces, personas, EMPTY_SYSTEM, 256, prepend_bos=True)
    assert len(pairs) == 4 and pairs.persona_of == [0, 1, 0, 1]  # the poet's passed over
    for j, messages in enumerate(CHATS[:4]):
        prompt = personas[j % 2].prompts[0]
        ids = tok(template(tok, messages, prompt), add_special_tokens=False)["input_ids"]
        ref = tok(template(tok, messages, ""), add_special_tokens=False)["input_ids"]
        assert pairs.persona_ids[j] == ids and pairs.reference_ids[j] == ref
        measured = [t for t, k in zip(ids, pairs.persona_keep[j], strict=True) if k]
        text = tok.decode(measured)
        assert messages[-1]["content"] in text and prompt not in text
    own = str(ultrachat(tmp_path / "own.jsonl", CHATS[4:] * 3))
    with pytest.raises(BadInput, match="every conversation has a system turn of its own"):
        load_pieces(own, tokenizer=tok)


def test_a_cached_hub_dataset_loads_offline(tmp_path, tok, monkeypatch):
    """A dataset name `datasets` prepared in its cache before (HF_DATASETS_CACHE) loads under
    HF_HUB_OFFLINE, its training split picked (UltraChat's is train_sft); a name not in the
    cache still needs network, in one line."""
    from datasets.packaged_modules.generator.generator import Generator

    cache = tmp_path / "hf" / "datasets"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)

    def rows():
        for i, c in enumerate(CHATS):
            yield {"prompt": c[-2]["content"], "prompt_id": f"id{i}", "messages": c}

    # What load_dataset("someone/UltraChat") leaves in the cache: namespace___name/config/
    # version/commit, written by a datasets builder.
    Generator(
        cache_dir=str(cache),
        dataset_name="ultra_chat",
        repo_id="someone/UltraChat",
        generator=rows,
        split=datasets.NamedSplit("train_sft"),
        config_id="default",
        hash="0123456789abcdef",
    ).download_and_prepare()
    assert load_texts("someone/UltraChat", tokenizer=tok) == expected(tok)
    with pytest.raises(
        BadInput,
        match="^dataset 'someone/other': not a local path, not in the "
        "Hugging Face datasets cache, .* needs network",
    ):
        load_texts("someone/other", tokenizer=tok)


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


TINY = [
    "--context-size",
    "64",
    "--d-sae",
    "64",
    "--k",
    "8",
    "--batch-tokens",
    "256",
    "--eval-tokens",
    "512",
    "--lr",
    "3e-3",
    "--checkpoint-every",
    "0",
    "--device",
    "cpu",
]


@pytest.mark.slow
def test_train_on_a_messages_jsonl(capfd, tmp_path, tiny_gpt2_dir, tiny_gpt2_base_dir):
    """`shoggoth train --dataset FILE.jsonl` with UltraChat rows trains a residual SAE and a
    difference dictionary; a bad row and a template-less model are one line, exit 2."""
    many = [
        chat(
            ("user", f"Question {i}: why is the sky blue?"),
            ("assistant", f"Answer {i}: sunlight scatters off the air, blue the most."),
        )
        for i in range(400)
    ]
    data = ultrachat(tmp_path / "ultra.jsonl", many)
    out = tmp_path / "sae"
    code, _, err = run(
        capfd,
        "train",
        "--model",
        tiny_gpt2_dir,
        "--dataset",
        data,
        "--layer",
        "1",
        "--target",
        "residual",
        "--target",
        "difference",
        "--tokens",
        "2048",
        "--out",
        out,
        *TINY,
    )
    assert code == 0, err
    for name in ("blocks.1.hook_resid_post-d64", "blocks.1.hook_resid_post-d64-difference"):
        meta = json.loads((out / name / "shoggoth.json").read_text())
        assert meta["dataset"] == str(data) and meta["training_tokens"] >= 2048
        assert "persona_signal" in meta["evaluation"]
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"messages": many[0]}, {"messages": [{"role": "bot", "content": "x"}]}],
    )
    for model, dataset, words in (
        (tiny_gpt2_dir, bad, [f"dataset '{bad}' line 2", "unknown role 'bot'"]),
        (
            tiny_gpt2_base_dir,
            data,
            [f"dataset '{data}'", f"model '{tiny_gpt2_base_dir}'", "no chat template"],
        ),
    ):
        code, stdout, err = run(
            capfd,
            "train",
            "--model",
            model,
            "--dataset",
            dataset,
            "--tokens",
            "2048",
            "--out",
            tmp_path / "x",
            *TINY,
        )
        lines = err.strip().splitlines()
        assert code == 2 and stdout == "" and len(lines) == 1, err
        assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "sae", "ultra.jsonl"]
