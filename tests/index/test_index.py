"""`shoggoth index` on a real harvested and labelled database: examples, histograms, FAISS
neighbours (exact and HNSW) checked against brute force, logit effects against numpy, the
encoder skip, the example_contexts macro, and the atomic rebuild."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pytest
from helpers import battery, build_random_sae
from sae_lens import SAE

from shoggoth import cli
from shoggoth.index.catalog import similarity
from shoggoth.index.store.database import faiss_dir


@pytest.fixture(scope="module")
def indexed(indexed_db) -> Path:
    return indexed_db


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_examples_and_histograms(indexed):
    con = duckdb.connect(str(indexed), read_only=True)
    # Top examples are the 20 largest activations of each feature, in order.
    want = con.execute("""SELECT feature, list(value ORDER BY value DESC)[1:20]
                          FROM activations GROUP BY feature ORDER BY feature""").fetchall()
    got = con.execute("""SELECT feature, list(value ORDER BY rank) FROM examples
                         WHERE kind = 'top' GROUP BY feature ORDER BY feature""").fetchall()
    assert got == want and len(got) > 10
    # Interval samples: at most 5 per equal-width interval, each inside its interval.
    bad = con.execute("""SELECT count(*) FROM examples WHERE kind LIKE 'interval%'
                         AND (value < bin_lo - 1e-6 OR value > bin_hi + 1e-6)""").fetchone()[0]
    assert bad == 0
    assert (
        con.execute("""SELECT max(n) FROM (SELECT count(*) AS n FROM examples
                          WHERE kind LIKE 'interval%' GROUP BY feature, kind)""").fetchone()[0]
        <= 5
    )
    # Histograms count every firing token once.
    diff = con.execute("""SELECT count(*) FROM (SELECT feature, count(*) AS n FROM activations
                          GROUP BY feature) a FULL JOIN (SELECT feature, sum(count) AS n
                          FROM feature_histograms GROUP BY feature) h USING (feature)
                          WHERE a.n IS DISTINCT FROM h.n""").fetchone()[0]
    assert diff == 0
    assert con.execute("SELECT max(bin) FROM feature_histograms").fetchone()[0] <= 49
    rows = con.execute("SELECT * FROM example_contexts('tiny-sae', 3)").fetchall()
    assert rows and rows[0][0] == "top" and all(r[-1].count("[[") == 1 for r in rows)
    con.close()


def test_neighbours_match_brute_force(indexed, tiny_sae_dir):
    w = unit(SAE.load_from_disk(str(tiny_sae_dir)).W_dec.detach().numpy())
    sims = w @ w.T
    np.fill_diagonal(sims, -np.inf)
    want = np.argsort(-sims, axis=1)[:, :10]
    con = duckdb.connect(str(indexed), read_only=True)
    got = con.execute(
        "SELECT feature, list(neighbor ORDER BY rank), list(cosine ORDER BY rank) "
        "FROM neighbors GROUP BY feature ORDER BY feature"
    ).fetchall()
    assert len(got) == w.shape[0]
    for feature, neighbours, cosines in got:
        assert neighbours == list(want[feature])
        assert np.allclose(cosines, sims[feature, want[feature]], atol=1e-5)
    path, kind, recall = con.execute(
        "SELECT path, kind, recall_at_10 FROM faiss_indexes WHERE name = 'decoder'"
    ).fetchone()
    assert kind == "flat" and recall == 1.0
    assert faiss.read_index(str(faiss_dir(indexed) / path)).ntotal == w.shape[0]
    prof = con.execute("SELECT count(DISTINCT feature) FROM profile_neighbors").fetchone()[0]
    assert prof == w.shape[0]
    con.close()


def test_logit_effects_match_numpy(indexed, tiny_sae_dir, tiny_gpt2):
    w_dec = SAE.load_from_disk(str(tiny_sae_dir)).W_dec.detach().float()
    w_u = tiny_gpt2.bridge.original_model.get_output_embeddings().weight.detach().float()
    logits = (w_dec @ w_u.T).numpy()
    con = duckdb.connect(str(indexed), read_only=True)
    assert con.execute("SELECT logit_effects FROM saes").fetchone()[0].startswith("computed")
    for feature in (0, 17, 63):
        up = [
            t
            for (t,) in con.execute(
                "SELECT token_id FROM logit_effects WHERE feature = ? AND "
                "sign = 'promoted' ORDER BY rank",
                [feature],
            ).fetchall()
        ]
        down = [
            t
            for (t,) in con.execute(
                "SELECT token_id FROM logit_effects WHERE feature = ? "
                "AND sign = 'suppressed' ORDER BY rank",
                [feature],
            ).fetchall()
        ]
        assert up == list(np.argsort(-logits[feature])[:10])
        assert down == list(np.argsort(logits[feature])[:10])
    con.close()


def test_rebuild_replaces_and_hnsw_records_recall(capfd, indexed, tmp_path):
    db = tmp_path / "copy.duckdb"
    db.write_bytes(indexed.read_bytes())
    before = duckdb.connect(str(db), read_only=True)
    n_examples = before.execute("SELECT count(*) FROM examples").fetchone()[0]
    before.close()
    code = cli.main(["index", "--db", str(db), "--exact-max", "10"])
    _, err = capfd.readouterr()
    assert code == 0, err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM examples").fetchone()[0] == n_examples
    kind, recall = con.execute(
        "SELECT kind, recall_at_10 FROM faiss_indexes WHERE name = 'decoder'"
    ).fetchone()
    assert kind == "hnsw" and recall >= 0.95
    con.close()
    assert not list(tmp_path.glob(".copy.duckdb*"))


def test_hnsw_recall_is_measured_and_falls_back_to_exact():
    x = np.random.default_rng(0).standard_normal((4000, 256)).astype(np.float32)
    u = similarity.unit_rows(x)
    sims = u @ u.T
    np.fill_diagonal(sims, -2)
    truth = np.argsort(-sims, axis=1)[:, :10]
    built = similarity.build(x, exact_max=0)
    assert built.kind == "hnsw" and built.ef_search >= 16
    ids, _ = similarity.neighbours(built, x)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    # the recorded recall is a sample of this one; its target holds on every row
    assert recall >= 0.95 and abs(recall - built.recall_at_10) < 0.02
    # isotropic rows at efSearch <= 16 cannot reach the target: the exact index is kept
    capped = similarity.build(x, exact_max=0, max_ef=16)
    assert capped.kind == "flat" and capped.recall_at_10 == 1.0
    ids, _ = similarity.neighbours(capped, x)
    assert (ids == truth).all()


def test_encoder_skips_logit_effects(capfd, tmp_path, minilm):
    sae = build_random_sae(tmp_path / "s", "minilm", 384, "blocks.3.hook_resid_post", d_sae=96, k=8)
    db = tmp_path / "m.duckdb"
    args = battery(tmp_path / "b", 4)
    assert cli.main(["harvest", "--db", str(db), "--sae-dir", str(sae), *map(str, args)]) == 0
    assert cli.main(["index", "--db", str(db)]) == 0
    out, _ = capfd.readouterr()
    assert "persona profiles skipped" in out
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT logit_effects FROM saes").fetchone()[0].startswith("skipped")
    assert con.execute("SELECT count(*) FROM logit_effects").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM neighbors").fetchone()[0] == 96 * 10
    con.close()


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_kill_9_during_index_leaves_the_old_database(tmp_path, indexed):
    """The database and the FAISS/.npy files it refers to are published together: a kill -9
    leaves both as they were, and the next run removes what the killed one wrote."""
    db = tmp_path / "k.duckdb"
    db.write_bytes(indexed.read_bytes())
    shutil.copytree(faiss_dir(indexed), faiss_dir(db))
    files = _files(faiss_dir(db))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    exe = Path(sys.executable).with_name("shoggoth")
    proc = subprocess.Popen(
        [str(exe), "index", "--db", str(db), "--exact-max", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    partial = tmp_path / f".k.duckdb.index-{proc.pid}.partial"  # (one per process)
    deadline = time.time() + 120
    while time.time() < deadline and not partial.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM examples").fetchone()[0] > 0
    referenced = [
        p
        for (p,) in con.execute(
            "SELECT path FROM faiss_indexes UNION ALL SELECT path FROM persona_vectors"
        ).fetchall()
    ]
    con.close()
    after = _files(faiss_dir(db))
    assert referenced and all(after[p] == files[p] for p in referenced)
    assert len({Path(p).parts[0] for p in after}) == 2  # the killed build's folder is left
    assert cli.main(["index", "--db", str(db), "--exact-max", "10"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    now = {p for (p,) in con.execute("SELECT path FROM faiss_indexes").fetchall()}
    con.close()
    folders = {Path(p).parts[0] for p in _files(faiss_dir(db))}
    assert folders == {Path(p).parts[0] for p in now} and len(folders) == 1


def test_persona_vectors_match_a_direct_computation(indexed, tiny_gpt2, tiny_sae_dir):
    from shoggoth.index.store.schema import read_battery
    from shoggoth.sae.activations import continuation_activations
    from shoggoth.sae.prompts import build_batch

    con = duckdb.connect(str(indexed), read_only=True)
    personas, items = read_battery(con)
    hook = "blocks.1.hook_resid_post"
    means = {}
    for p in personas:  # every paraphrase and item, by full forward passes (no KV cache)
        rows = [(text, it.question, it.answer) for text in p.prompts for it in items]
        batch = build_batch(tiny_gpt2.tokenizer, rows, prepend_bos=tiny_gpt2.prepend_bos)
        means[p.name] = continuation_activations(tiny_gpt2, batch, hook).double().mean(0).numpy()
    baseline = np.mean([means[p.name] for p in personas if not p.is_control], axis=0)
    table = con.execute(
        "SELECT persona, row, path, is_control, norm FROM persona_vectors ORDER BY row"
    ).fetchall()
    assert [r[0] for r in table] == [p.name for p in personas]
    vectors = np.load(faiss_dir(indexed) / table[0][2])
    for persona, row, _, is_control, norm in table:
        want = means[persona] - baseline
        assert np.allclose(vectors[row], want, atol=2e-3 * np.abs(want).max()), persona
        assert norm == pytest.approx(np.linalg.norm(want), rel=1e-2)
        assert is_control == (persona == "control_none")
    # persona_features: the decoder rows with the largest cosine to each persona vector.
    w = unit(SAE.load_from_disk(str(tiny_sae_dir)).W_dec.detach().numpy())
    for persona, row, *_ in table:
        cos = w @ (vectors[row] / np.linalg.norm(vectors[row]))
        got = con.execute(
            "SELECT list(feature ORDER BY rank), list(cosine ORDER BY rank) "
            "FROM persona_features WHERE persona = ?",
            [persona],
        ).fetchone()
        assert got[0] == list(np.argsort(-cos)[:20])
        assert np.allclose(got[1], np.sort(cos)[::-1][:20], atol=1e-5)
    con.close()


def map_neighbours_kept(xy: np.ndarray, x: np.ndarray, k: int = 5) -> float:
    """Mean share of each point's k nearest on the map among its k nearest by cosine."""
    u = unit(x)
    true = np.argsort(-(u @ u.T), axis=1)[:, 1 : k + 1]
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    got = np.argsort(d, axis=1)[:, 1 : k + 1]
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(true, got, strict=True)]))


def test_umap_maps_are_stored_seeded_and_keep_neighbours(capfd, indexed, tmp_path, tiny_sae_dir):
    """`--map umap`: both maps stored for every feature (profiles: live ones), the same on a
    rebuild, and a map's near points are near in the decoder space far more than by chance;
    the default on a small SAE is PCA. Handles and the names view are there too."""
    db = tmp_path / "copy.duckdb"
    db.write_bytes(indexed.read_bytes())
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT DISTINCT method FROM feature_maps").fetchall() == [("pca",)]
    assert con.execute("SELECT count(*) FROM feature_names WHERE name IS NULL").fetchone()[0] == 0
    con.close()
    coords = []
    for _ in range(2):
        assert cli.main(["index", "--db", str(db), "--map", "umap"]) == 0, capfd.readouterr()[1]
        con = duckdb.connect(str(db), read_only=True)
        coords.append(
            con.execute(
                "SELECT map, method, feature, x, y FROM feature_maps ORDER BY map, feature"
            ).df()
        )
        con.close()
    got = coords[0]
    assert set(got["method"]) == {"umap"} and set(got["map"]) == {"decoder", "persona_profile"}
    assert np.array_equal(coords[0][["x", "y"]].to_numpy(), coords[1][["x", "y"]].to_numpy())
    w = SAE.load_from_disk(str(tiny_sae_dir)).W_dec.detach().numpy()
    dec = got[got["map"] == "decoder"].sort_values("feature")
    assert list(dec["feature"]) == list(range(len(w)))
    kept = map_neighbours_kept(dec[["x", "y"]].to_numpy(), w)
    assert kept > 3 * 5 / len(w), kept  # chance is k / n
