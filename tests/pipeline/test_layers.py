"""`shoggoth layers`: the persona probe by layer and the SAE's share of the persona signal, on
planted residuals (known answers) and on a real harvested database with the tiny GPT-2."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from helpers import copy_db

from shoggoth import cli
from shoggoth.pipeline.layers.run import (
    Documents,
    LayersConfig,
    center_items,
    parse_layers,
    probe_accuracy,
    sae_rows,
)


def planted_docs(n_personas=4, n_para=4, n_items=12):
    grid = np.array(
        [(k, j, i) for k in range(n_personas) for j in range(n_para) for i in range(n_items)]
    )
    return Documents(grid[:, 0], grid[:, 1], grid[:, 2], [f"p{k}" for k in range(n_personas)])


def planted_residuals(docs, shift, d=16, seed=0):
    """Item content (large) + a persona direction of size `shift` + noise."""
    rng = np.random.default_rng(seed)
    items = rng.normal(0, 5, (docs.item.max() + 1, d))
    personas = rng.normal(0, 1, (len(docs.names), d))
    return items[docs.item] + shift * personas[docs.persona] + rng.normal(0, 1, (len(docs.item), d))


def test_the_probe_finds_a_planted_persona_and_only_then():
    docs = planted_docs()
    strong = center_items(planted_residuals(docs, 2.0), docs.item)
    none = center_items(planted_residuals(docs, 0.0), docs.item)
    assert probe_accuracy(strong, docs, 3, 0) >= 0.95
    assert probe_accuracy(none, docs, 3, 0) <= 0.25 + 0.15  # chance is 1/4


def test_the_sae_share_of_the_persona_signal():
    docs = planted_docs()
    x = planted_residuals(docs, 2.0)
    cfg = LayersConfig(db="unused.duckdb")
    item_means = np.stack([x[docs.item == i].mean(0) for i in docs.item])
    shift = x - item_means  # against a reference document with the item's content alone
    whole = sae_rows(x, x.copy(), shift, shift.copy(), docs, cfg)  # a perfect reconstruction
    assert whole["sae_signal_fraction"] == pytest.approx(1.0)
    assert whole["probe_on_reconstruction"] >= 0.95
    # Keeps the answer, drops the persona: its shift through the SAE is none.
    blind = sae_rows(x, item_means, shift, np.zeros_like(shift), docs, cfg)
    assert abs(blind["sae_signal_fraction"]) < 1e-9
    assert blind["probe_on_error"] >= 0.95 and blind["probe_on_reconstruction"] <= 0.45


def test_layers_are_parsed_and_the_sae_layer_added():
    assert parse_layers("all", 3, 1) == [0, 1, 2]
    assert parse_layers("0,2", 4, 1) == [0, 1, 2]
    assert parse_layers("1-3", 4, 0) == [0, 1, 2, 3]  # the one list grammar: ranges too
    for spec, words in (("9", "9 is outside 0 to 3"), ("a,b", "is not a number or a range")):
        with pytest.raises(Exception, match=words):
            parse_layers(spec, 4, None)


def test_layers_command_writes_the_probe(capfd, tmp_path, labelled_db):
    db = copy_db(labelled_db, tmp_path / "db.duckdb")
    before = db.read_bytes()
    code = cli.main(["layers", "--db", str(db), "--layers", "9"])
    _, err = capfd.readouterr()
    assert code == 2 and err.strip().startswith("error: --layers 9")
    assert len(err.strip().splitlines()) == 1 and db.read_bytes() == before
    code = cli.main(["layers", "--db", str(db), "--items-per-topic", "3", "--device", "cpu"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "where the persona lives" in out
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT layer, n_documents, n_personas, chance, probe_accuracy, "
        "sae_signal_fraction, probe_on_error, is_sae_layer FROM layer_probe "
        "ORDER BY layer"
    ).fetchall()
    n_items = con.execute(
        "SELECT count(*) FROM (SELECT topic, unnest(list(item_id)[:3]) FROM items GROUP BY topic)"
    ).fetchone()[0]
    con.close()
    assert [r[0] for r in rows] == [0, 1, 2]  # the tiny GPT-2 has three blocks
    for layer, n_docs, n_personas, chance, acc, share, _, is_sae in rows:
        assert n_docs == 2 * 3 * n_items and n_personas == 2 and chance == 0.5
        assert 0 <= acc <= 1
        assert is_sae == (layer == 1)
        assert (share is not None) == is_sae
    sae = rows[1]
    assert np.isfinite(sae[5]) and 0 <= sae[6] <= 1
