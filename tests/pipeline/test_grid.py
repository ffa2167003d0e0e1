"""`shoggoth generate` and `shoggoth grid` on the tiny GPT-2: batched, KV-cached generation
against transformers' own `generate`; the grid's bookkeeping (which text under which context)
with planted answers against an independent full forward pass; resuming after an interruption;
bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import copy_db
from streamlit.testing.v1 import AppTest

import shoggoth.pipeline.action.generate
import shoggoth.pipeline.action.grid
from shoggoth import cli
from shoggoth.index.action.answers import finish_set, start_set, write_answers
from shoggoth.sae.generation import (
    generate_batch,
    load_generator,
    prefix_kv,
    prompt_ids,
    shared_length,
)
from shoggoth.sae.models import load_model
from shoggoth.sae.prompts import build_prompt
from shoggoth.sae.sae_dir import load_sae_dir

QUESTIONS = ["Why is the sky blue?", "What causes thunder in a storm at night?", "Why rain?"]
GRID = ["--min-docs", "2", "--calibration", "2", "--bootstrap", "20"]


def test_batched_generation_matches_transformers_generate(tiny_gpt2_dir):
    gen = load_generator(str(tiny_gpt2_dir), "cpu")
    rows = [
        prompt_ids(gen.tokenizer, "You are a pirate captain.", q, "auto", True) for q in QUESTIONS
    ]
    n = shared_length(rows)
    assert 0 < n < min(map(len, rows))
    out = generate_batch(gen, rows[0][:n], prefix_kv(gen, rows[0][:n]), [r[n:] for r in rows], 10)
    stops = gen.stop_ids
    for row, (ids, why) in zip(rows, out, strict=True):
        ref = gen.hf.generate(
            torch.tensor([row]),
            attention_mask=torch.ones(1, len(row), dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=sorted(stops),
            pad_token_id=gen.tokenizer.pad_token_id or 0,
        )[0, len(row) :].tolist()
        assert ids == ref[: len(ids)]
        assert (why == "length" and len(ids) == 10) or (why == "eos" and ref[len(ids)] in stops)
    # Sampling is seeded: the same seed gives the same answers, another seed others.
    args = (gen, rows[0][:n], prefix_kv(gen, rows[0][:n]), [r[n:] for r in rows], 10, 1.5)
    assert generate_batch(*args, seed=3) == generate_batch(*args, seed=3)
    assert generate_batch(*args, seed=3) != generate_batch(*args, seed=4)


def interrupting(real, call: int):
    """`real`, except that its `call`-th call raises KeyboardInterrupt (Ctrl-C there)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapped


def plant_answers(db: Path, items: list[str]) -> pd.DataFrame:
    """Known answers of both personas of the test battery, as `generate` would store them."""
    rows = pd.DataFrame(
        [
            {
                "persona": p,
                "paraphrase": j,
                "item_id": i,
                "text": f"{'Arr, the sea' if p == 'pirate' else 'Happy to help'} says answer {j} "
                f"about {i.split('-')[0]}.",
                "n_tokens": 9,
                "stop_reason": "eos",
            }
            for p in ("pirate", "helper")
            for j in range(3)
            for i in items
        ]
        + [
            {
                "persona": "control_none",
                "paraphrase": 0,
                "item_id": i,
                "n_tokens": 7,
                "text": f"Plainly, here is the answer about {i.split('-')[0]}.",
                "stop_reason": "eos",
            }
            for i in items
        ]
    )
    start_set(
        db,
        "own",
        {"model": "planted", "template": "auto", "max_tokens": 0, "temperature": 0.0, "seed": 0},
        {},
    )
    write_answers(db, "own", rows)
    finish_set(db, "own")
    return rows


@pytest.fixture(scope="module")
def planted(labelled_db, tmp_path_factory):
    """(database with planted answers, the same after `shoggoth grid`)."""
    work = tmp_path_factory.mktemp("grid")
    db = copy_db(labelled_db, work / "answers.duckdb")
    with duckdb.connect(str(db), read_only=True) as con:
        items = [
            r[0]
            for r in con.execute(
                "SELECT item_id::VARCHAR FROM items ORDER BY item_id LIMIT 4"
            ).fetchall()
        ]
    plant_answers(db, items)
    done = copy_db(db, work / "grid.duckdb")
    assert cli.main(["grid", "--db", str(done), *GRID]) == 0
    assert cli.main(["grid", "--db", str(done), "--neutral", "own", *GRID]) == 0
    return db, done


@pytest.mark.parametrize("neutral", ["battery", "own"])
def test_each_document_reads_its_text_under_its_context(planted, tiny_sae_dir, neutral):
    _, db = planted
    with duckdb.connect(str(db), read_only=True) as con:
        docs = con.execute(
            "SELECT * FROM grid_documents WHERE neutral = ? ORDER BY doc", [neutral]
        ).df()
        acts = con.execute(
            "SELECT doc, feature, mean_act FROM grid_doc_features WHERE neutral = ?", [neutral]
        ).df()
        answers = con.execute("SELECT * FROM answers").df()
        prompts = dict(
            ((p, j), t)
            for p, j, t in con.execute(
                "SELECT persona::VARCHAR, paraphrase, prompt FROM persona_prompts"
            ).fetchall()
        )
        items = {
            i: (q, a)
            for i, q, a in con.execute(
                "SELECT item_id::VARCHAR, question, answer FROM items"
            ).fetchall()
        }
        sae_row = con.execute("SELECT hook, value_decimals, model FROM saes").fetchone()
        paired = con.execute(
            "SELECT persona::VARCHAR AS persona, paraphrase, item_id::VARCHAR "
            "AS item_id, feature, mean_act FROM doc_features"
        ).df()
    # 2 personas × 3 prompts × 4 items, three cells each, and one baseline per item.
    assert len(docs) == 2 * 3 * 4 * 3 + 4
    assert docs["cell"].value_counts().to_dict() == {
        "in_action": 24,
        "neutral_text": 24,
        "text_only": 24,
        "baseline": 4,
    }
    own = answers.set_index(["persona", "paraphrase", "item_id"])["text"]
    model, sae = load_model(sae_row[2], "cpu"), load_sae_dir(tiny_sae_dir, "cpu")
    hook, scale = sae_row[0], 10.0 ** sae_row[1]
    for d in docs.itertuples():
        text = (
            items[d.item_id][1]
            if pd.isna(d.text_persona)
            else own[(d.text_persona, int(d.text_paraphrase), d.item_id)]
        )
        # The cell decides the text and the context: own text exactly where the cell says so.
        reference = (
            pd.isna(d.text_persona) if neutral == "battery" else d.text_persona == "control_none"
        )
        assert reference == (d.cell in ("neutral_text", "baseline"))
        assert (d.context == "control_none") == (d.cell in ("text_only", "baseline"))
        p = build_prompt(
            model.tokenizer,
            prompts[(d.context, d.context_paraphrase)],
            items[d.item_id][0],
            text,
            prepend_bos=model.prepend_bos,
        )
        with torch.inference_mode():
            x = model.bridge.run_with_cache(torch.tensor([p.input_ids]), names_filter=hook)[1]
            f = torch.round(sae.encode(x[hook][0][torch.tensor(p.mask)]) * scale) / scale
        expected = f.mean(0).numpy()
        stored = np.zeros_like(expected)
        mine = acts[acts["doc"] == d.doc]
        stored[mine["feature"].to_numpy()] = mine["mean_act"].to_numpy()
        assert d.n_tokens == sum(p.mask)
        np.testing.assert_allclose(stored, expected, atol=2e-5 + 1 / scale)
    if neutral == "own":
        return
    # The neutral answer under a persona prompt is the paired design's document, exactly.
    cell = docs[docs["cell"] == "neutral_text"].merge(acts, on="doc")
    same = cell.merge(
        paired, on=["persona", "paraphrase", "item_id", "feature"], suffixes=("", "_paired")
    )
    assert len(same) == len(cell)
    np.testing.assert_allclose(same["mean_act"], same["mean_act_paired"], atol=1e-6)


def test_grid_tables_and_labels(planted):
    _, db = planted
    with duckdb.connect(str(db), read_only=True) as con:
        features = con.execute("SELECT * FROM grid_features WHERE neutral = 'battery'").df()
        effects = con.execute("SELECT * FROM grid_effects WHERE neutral = 'battery'").df()
        fdr = con.execute("SELECT * FROM grid_fdr").df()
        own = con.execute(
            "SELECT count(*) FROM grid_documents WHERE neutral = 'own' AND "
            "cell = 'baseline' AND text_persona = 'control_none'"
        ).fetchone()[0]
        run = con.execute(
            "SELECT config_json FROM runs WHERE command = 'grid' ORDER BY started_at LIMIT 1"
        ).fetchone()
        d_sae = con.execute("SELECT d_sae FROM saes").fetchone()[0]
    assert len(features) == d_sae and features["feature"].is_unique
    live = features[features["n_docs_firing"] > 0]
    assert set(effects["feature"]) == set(live["feature"])
    assert set(effects["persona"]) == {"pirate", "helper"}
    assert (effects["n_prompts"] == 3).all()
    ok = effects["context_low"].notna()
    assert (effects.loc[ok, "context_low"] <= effects.loc[ok, "context"]).all()
    assert len(fdr) == 8 and run is not None and '"answer_set": "own"' in run[0]
    assert own == 4  # one reference document per item, the model's own neutral answer


def test_an_interrupted_grid_resumes_to_the_same_tables(planted, tmp_path, monkeypatch):
    answers, done = planted
    db = copy_db(answers, tmp_path / "db.duckdb")
    real = shoggoth.pipeline.action.grid.encode_aggregate
    monkeypatch.setattr(shoggoth.pipeline.action.grid, "encode_aggregate", interrupting(real, 3))
    assert cli.main(["grid", "--db", str(db), *GRID]) == 130
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM grid_features").fetchone()[0] == 0
    assert len(list(Path(f"{db}.grid").glob("*/*.npz"))) == 2
    monkeypatch.setattr(shoggoth.pipeline.action.grid, "encode_aggregate", real)
    assert cli.main(["grid", "--db", str(db), *GRID]) == 0
    assert not Path(f"{db}.grid").exists()
    for table in ("grid_doc_features", "grid_features", "grid_effects", "grid_fdr"):
        query = f"SELECT * EXCLUDE (sae_id) FROM {table} WHERE neutral = 'battery' ORDER BY ALL"
        with (
            duckdb.connect(str(db), read_only=True) as a,
            duckdb.connect(str(done), read_only=True) as b,
        ):
            pd.testing.assert_frame_equal(a.execute(query).df(), b.execute(query).df())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generate_resumes_and_refuses(labelled_db, tmp_path, monkeypatch, capfd):
    args = ["--max-tokens", "6", "--items-per-topic", "2", "--batch", "2"]
    fresh = copy_db(labelled_db, tmp_path / "fresh.duckdb")
    assert cli.main(["generate", "--db", str(fresh), *args]) == 0
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    real = shoggoth.pipeline.action.generate.write_answers
    monkeypatch.setattr(shoggoth.pipeline.action.generate, "write_answers", interrupting(real, 3))
    assert cli.main(["generate", "--db", str(db), *args]) == 130
    monkeypatch.setattr(shoggoth.pipeline.action.generate, "write_answers", real)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM answers").fetchone()[0] == 4
    assert cli.main(["generate", "--db", str(db), *args]) == 0
    query = "SELECT * FROM answers ORDER BY ALL"
    with (
        duckdb.connect(str(db), read_only=True) as a,
        duckdb.connect(str(fresh), read_only=True) as b,
    ):
        got, want = a.execute(query).df(), b.execute(query).df()
        meta = a.execute("SELECT model, max_tokens, status FROM answer_sets").fetchall()
    pd.testing.assert_frame_equal(got, want)
    # 2 personas × 3 prompts and the no-persona control × 4 items (2 per topic, two topics),
    # at most 6 tokens each.
    assert len(got) == 28 and (got["n_tokens"] <= 6).all()
    assert set(got["persona"]) == {"pirate", "helper", "control_none"}
    assert set(got["stop_reason"]) <= {"eos", "length"}
    assert meta[0][1:] == (6, "finished")
    capfd.readouterr()
    before = _sha(db)
    for bad, words in (
        (["--max-tokens", "7", "--items-per-topic", "2"], "other settings"),
        (["--persona-names", "nobody"], "--persona-names nobody: unknown 'nobody'"),
        (["--name", "bad name"], "--name"),
    ):
        assert cli.main(["generate", "--db", str(db), *bad]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert _sha(db) == before
    plain = copy_db(labelled_db, tmp_path / "plain.duckdb")
    assert cli.main(["grid", "--db", str(plain)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shoggoth generate" in err[0]


def test_the_explorer_shows_answers_and_grid_effects(planted, tmp_path):
    db = copy_db(planted[1], tmp_path / "db.duckdb")
    os.environ["SHOGGOTH_DB"] = str(db)
    with duckdb.connect(str(db), read_only=True) as con:
        strongest = con.execute(
            "SELECT feature, content, content_low, content_high FROM grid_effects WHERE "
            "neutral = 'battery' AND persona = 'pirate' AND (content_low > 0 OR content_high < 0)"
            " ORDER BY abs(content) / greatest(content_high - content_low, 1e-9) DESC LIMIT 1"
        ).fetchone()
        text = con.execute(
            "SELECT text FROM answers WHERE persona = 'pirate' ORDER BY item_id, paraphrase LIMIT 1"
        ).fetchone()[0]
        label = con.execute(
            "SELECT grid_label FROM grid_features WHERE feature = 0 AND neutral = 'battery'"
        ).fetchone()[0]
    at = AppTest.from_file(
        str(Path(__file__).parents[2] / "explorer" / "app.py"), default_timeout=120
    )
    at.run()
    assert "Context × content (shoggoth grid)" in [h.value for h in at.subheader]
    at.query_params.update({"persona": "pirate"})
    at.switch_page("views/personas.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert text in [t.value for t in at.text]
    links = [(link.proto.label or "").replace("\\", "") for link in at.get("page_link")]
    assert strongest is not None  # the planted pirate answers move some feature
    assert any(
        f"feature {strongest[0]} " in x and f"×{np.exp(strongest[1]):.2f}" in x for x in links
    ), links
    at.query_params.update({"feature": "0"})
    at.switch_page("views/feature.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Context and content: the mask in action" in [h.value for h in at.subheader]
    assert any(
        f"**{label}** on answer set own against the battery reference" in m.value
        for m in at.markdown
    )
