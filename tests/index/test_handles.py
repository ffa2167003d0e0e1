"""Feature handles on a planted harvest in a real DuckDB file: the tokens and two-token phrases a
feature fires on beyond their base rate name it; "the" never wins unless the feature is about
"the"; a feature that fires everywhere is `diffuse`; one answer's odd token names nothing; and
the label's persona joins the handle in `feature_names`."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from shoggoth.battery.personas import load_items, load_personas
from shoggoth.index.catalog.handles import write_handles
from shoggoth.index.store.schema import create_index_tables, create_label_tables, create_schema

SAE = "planted"
COMMON = ["Ġthe", "Ġof", "Ġand", "Ġa", "Ġto", "Ġin", "Ġis", "Ġit", "Ġthat", "Ġwas"]
CONTENT = [f"Ġword{i}" for i in range(120)]


def answers(rng: np.random.Generator, items: list[str]) -> dict[str, list[str]]:
    """Zipf-like answers: common words ~40% of tokens; 'rain', 'pirate' and 'sea' planted in
    some answers, 'sea' after 'the' in half of those; one odd token in one answer."""
    out = {}
    for k, item in enumerate(items):
        words = [
            str(rng.choice(COMMON)) if rng.random() < 0.4 else str(rng.choice(CONTENT))
            for _ in range(int(rng.integers(18, 30)))
        ]
        if k % 3 == 0:
            words[int(rng.integers(1, len(words)))] = "Ġrain"
        if k % 5 == 1:
            words[int(rng.integers(1, len(words)))] = "Ġpirate"
        if k % 2 == 0:
            at = int(rng.integers(2, len(words)))
            words[at] = "Ġsea"
            words[at - 1] = "Ġthe" if k % 4 == 0 else str(rng.choice(CONTENT))
        if k == 7:
            words[3] = "Ġzyzzyva"
        out[item] = words
    return out


def fires(feature: int, words: list[str], pos: int, rng: np.random.Generator) -> float:
    """The planted activation of `feature` on words[pos] (0: silent)."""
    w, prev = words[pos], words[pos - 1] if pos else None
    if feature == 0:  # rain, plus a sparse weak background
        return 1.0 + 0.1 * rng.random() if w == "Ġrain" else (0.1 if rng.random() < 0.02 else 0.0)
    if feature == 1:  # everywhere alike: diffuse
        return 0.5 + 0.05 * rng.random()
    if feature == 2:  # everywhere a little, strongly on pirate
        return 2.0 if w == "Ġpirate" else 0.2
    if feature == 3:  # "the sea", not "sea" after anything else
        return 1.5 if w == "Ġsea" and prev == "Ġthe" else 0.0
    if feature == 4:  # "the" itself
        return 0.8 if w == "Ġthe" else 0.0
    if feature == 5:  # one odd token in one answer
        return 3.0 if w == "Ġzyzzyva" else 0.0
    return 0.0  # 6: dead


def planted_db(path) -> duckdb.DuckDBPyConnection:
    rng = np.random.default_rng(0)
    personas, items = load_personas()[:3], load_items()[:40]
    con = duckdb.connect(str(path))
    create_schema(con, personas, items)
    text = answers(rng, [i.item_id for i in items])
    tokens = pd.DataFrame(
        [(SAE, item, pos, 0, w) for item, ws in text.items() for pos, w in enumerate(ws)],
        columns=["sae_id", "item_id", "pos", "token_id", "token"],
    )
    docs, acts = [], []
    for p in personas:
        for para in (0, 1):
            for item, ws in text.items():
                docs.append((SAE, p.name, para, item, len(ws)))
                for pos in range(len(ws)):
                    for f in range(7):
                        v = fires(f, ws, pos, rng)
                        if v > 0:
                            acts.append((SAE, p.name, para, item, pos, f, v))
    documents = pd.DataFrame(
        docs, columns=["sae_id", "persona", "paraphrase", "item_id", "n_tokens"]
    )
    activations = pd.DataFrame(
        acts, columns=["sae_id", "persona", "paraphrase", "item_id", "pos", "feature", "value"]
    )
    for table, frame in (
        ("tokens", tokens),
        ("documents", documents),
        ("activations", activations),
    ):
        con.register("frame", frame)
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")
        con.unregister("frame")
    create_index_tables(con)
    return con


def test_handles_name_what_a_feature_fires_on_beyond_its_base_rate(tmp_path):
    con = planted_db(tmp_path / "h.duckdb")
    assert write_handles(con, SAE) == 6  # every feature that fires; the dead one has none
    rows = {
        f: (h, t)
        for f, h, t in con.execute(
            "SELECT feature, handle, terms FROM feature_handles WHERE sae_id = ?", [SAE]
        ).fetchall()
    }
    assert rows[0][1][0] == "rain" and rows[0][0].startswith("“rain”")
    assert rows[1] == ("diffuse", [])
    assert rows[2][1] == ["pirate"]  # not "the", on which it also fires
    assert rows[3][1] == ["the sea"]  # the phrase, not either word alone
    assert rows[4][1] == ["the"]  # only when the feature is about "the"
    assert rows[5] == ("diffuse", [])  # one answer's odd token names nothing
    assert 6 not in rows

    # The label's persona joins the handle, and follows a relabel.
    create_label_tables(con)
    con.execute(
        "INSERT INTO features BY NAME SELECT ? AS sae_id, 0 AS feature, "
        "'mask-specific' AS label, 'pirate' AS top_persona, 10 AS n_docs_firing",
        [SAE],
    )
    con.execute(
        "INSERT INTO features BY NAME SELECT ? AS sae_id, 1 AS feature, "
        "'shared' AS label, 'pirate' AS top_persona, 10 AS n_docs_firing",
        [SAE],
    )
    names = dict(
        con.execute("SELECT feature, name FROM feature_names WHERE sae_id = ?", [SAE]).fetchall()
    )
    assert names[0] == rows[0][0] + " · pirate"
    assert names[1] == "diffuse"  # shared: no persona claimed
    con.execute("INSERT INTO annotations (sae_id, feature, label) VALUES (?, 0, 'shared')", [SAE])
    assert (
        con.execute("SELECT name FROM feature_names WHERE feature = 0").fetchone()[0] == rows[0][0]
    )
    con.close()
