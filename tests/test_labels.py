"""Feature labels: planted truth, the null, calibration, edge cases, invariances, and
`shoggoth label` on a real harvested database."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from labels_data import documents_frame, personas_frame, planted
from scipy import stats

import shoggoth
from core.errors import BadInput
from index.labels import LABELS, label_features, shuffled_within_items, split_persona

EXPECTED = {"dead": "dead", "rare": "rare", "mask-specific": "mask-specific",
            "mask-family": "mask-family", "shared": "shared",
            "shared-modulated": "shared-modulated", "noise": "unclear"}


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_truth_is_recovered(seed):
    df, docs, personas, truth = planted(seed, per_kind=25)
    out = label_features(df, docs, personas, len(truth))
    assert list(out["feature"]) == list(range(len(truth)))
    want = np.array([EXPECTED[truth[f][0]] for f in out["feature"]])
    got = out["label"].to_numpy()
    for label in LABELS:
        predicted, actual = got == label, want == label
        if actual.sum() == 0:
            continue
        precision = (predicted & actual).sum() / max(predicted.sum(), 1)
        recall = (predicted & actual).sum() / actual.sum()
        assert precision >= 0.95 and recall >= 0.95, (label, precision, recall)
    for f, (kind, target) in truth.items():
        row = out.iloc[f]
        if kind == "mask-specific" and row["label"] == "mask-specific":
            assert row["top_persona"] == target
        if kind == "mask-family" and row["label"] == "mask-family":
            fam = set(personas.loc[personas["family"] == target, "persona"])
            assert set(row["family_set"].split(",")) == fam
    # Columns the issue names, with sane ranges on live features.
    live = out[out["n_docs_firing"] > 0]
    assert live["auroc"].between(0, 1).all() and live["top_share"].between(0, 1).all()
    assert (live["k_eff"] >= 1 - 1e-9).all() and live["norm_entropy"].between(0, 1 + 1e-9).all()
    assert out.loc[out["label"] == "dead", "p_value"].isna().all()


def test_null_gives_no_mask_specific_and_uniform_p_values():
    df, docs, personas, truth = planted(3, per_kind=60, null=True)
    out = label_features(df, docs, personas, len(truth))
    assert (out["label"] == "mask-specific").sum() == 0
    assert (out["label"] == "mask-family").sum() <= 1
    p = out["p_value"].dropna()
    assert len(p) == len(truth)
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_calibration_runs_find_nothing_where_nothing_is():
    df, docs, personas, truth = planted(4, per_kind=25)
    real = label_features(df, docs, personas, len(truth))
    n_real = (real["label"] == "mask-specific").sum()
    assert n_real >= 20
    shuffled = label_features(shuffled_within_items(df, docs, personas), docs, personas,
                              len(truth))
    live = (real["n_docs_firing"] > 0).sum()
    n_shuffled = (shuffled["label"] == "mask-specific").sum()
    assert n_shuffled <= 0.01 * n_real and n_shuffled <= 0.001 * live
    # A persona with a planted specific feature, split into two fake personas.
    target = truth[50][1] if truth[50][0] == "mask-specific" else "p0_0"
    d2, docs2, p2, fake = split_persona(df, docs, personas, target)
    split = label_features(d2, docs2, p2, len(truth))
    n_fake = split["top_persona"].isin(fake).sum()
    assert n_fake <= 0.01 * n_real and n_fake <= 0.001 * live
    assert len(docs2) == len(docs) and set(fake) <= set(docs2["persona"])


def test_shuffling_keeps_item_and_control_structure():
    df, docs, personas, _ = planted(5, per_kind=5)
    sh = shuffled_within_items(df, docs, personas).astype({"persona": str, "item_id": str})
    assert len(sh) == len(df)
    assert (sh["persona"] != df["persona"]).mean() > 0.5  # the personas really moved
    for frame in (df, sh):  # per item, the same values; controls untouched
        assert np.allclose(frame.groupby("item_id")["mean_act"].sum().sort_index(),
                           df.groupby("item_id")["mean_act"].sum().sort_index())
    ctrl = df["persona"].str.startswith("control")
    pd.testing.assert_frame_equal(
        df[ctrl].sort_values(list(df.columns)).reset_index(drop=True),
        sh[sh["persona"].str.startswith("control")].sort_values(list(df.columns))
        .reset_index(drop=True), check_dtype=False)


def small_case(n_items=12, n_para=2):
    personas = personas_frame(2, 2, 1)
    docs = documents_frame(personas, n_items, n_para)
    return personas, docs


def test_edge_cases():
    personas, docs = small_case()
    empty = pd.DataFrame(columns=["persona", "paraphrase", "item_id", "feature", "mean_act"])
    out = label_features(empty, docs, personas, 5)
    assert list(out["label"]) == ["dead"] * 5

    # Ties everywhere: every document has the same value.
    same = docs.assign(feature=0, mean_act=1.0)
    row = label_features(same, docs, personas, 1).iloc[0]
    assert row["p_value"] == 1.0 and row["label"] == "shared" and row["max_min_ratio"] == 1.0

    # One persona: nothing to compare, no crash.
    one = personas.iloc[[0]]
    one_docs = docs[docs["persona"] == one["persona"].iloc[0]]
    out = label_features(one_docs.assign(feature=0, mean_act=1.0), one_docs, one, 2)
    assert list(out["label"]) == ["unclear", "dead"]

    # A persona missing some items: those blocks are left out of the paired test.
    p0 = personas["persona"].iloc[0]
    partial = docs[~((docs["persona"] == p0) & (docs["item_id"] > "item005"))]
    vals = partial.assign(feature=0, mean_act=np.where(partial["persona"] == p0, 5.0, 0.0))
    vals = vals[vals["mean_act"] > 0]
    row = label_features(vals, partial, personas, 1).iloc[0]
    assert row["argmax_persona"] == p0 and row["top_share"] == 1.0

    for bad, words in [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                       (-1.0, ">= 0")]:
        frame = docs.head(3).assign(feature=0, mean_act=[1.0, bad, 2.0])
        with pytest.raises(BadInput, match=words):
            label_features(frame, docs, personas, 1)
    with pytest.raises(BadInput, match="out of range"):
        label_features(docs.head(1).assign(feature=7, mean_act=1.0), docs, personas, 3)
    with pytest.raises(BadInput, match="not in documents"):
        label_features(pd.DataFrame([("ghost", 0, "item000", 0, 1.0)],
                                    columns=empty.columns), docs, personas, 1)


@st.composite
def datasets(draw):
    seed = draw(st.integers(0, 10_000))
    df, docs, personas, truth = planted(seed, per_kind=2, n_items=12, n_para=2)
    return df, docs, personas, len(truth), draw(st.permutations(list(personas["persona"])))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.floats(0.01, 100))
def test_relabelling_and_scaling_change_nothing_else(data, scale):
    df, docs, personas, n, names = data
    base = label_features(df, docs, personas, n)
    mapping = dict(zip(personas["persona"], names, strict=True))
    renamed = label_features(df.assign(persona=df["persona"].map(mapping)),
                             docs.assign(persona=docs["persona"].map(mapping)),
                             personas.assign(persona=personas["persona"].map(mapping)), n)
    assert list(renamed["label"]) == list(base["label"])
    assert list(renamed["top_persona"]) == [mapping.get(p) for p in base["top_persona"]]
    numeric = ["top_share", "k_eff", "auroc", "p_value", "max_min_ratio", "paraphrase_stability"]
    pd.testing.assert_frame_equal(renamed[numeric], base[numeric])
    scaled = label_features(df.assign(mean_act=df["mean_act"] * scale), docs, personas, n)
    assert list(scaled["label"]) == list(base["label"])
    pd.testing.assert_frame_equal(scaled[numeric], base[numeric], rtol=1e-6)


def test_label_command_writes_tables_and_keeps_annotations(capfd, tmp_path, tiny_sae_dir):
    from conftest import battery

    db = tmp_path / "db.duckdb"
    args = battery(tmp_path / "b", 30)
    assert shoggoth.main(["harvest", "--db", str(db), "--sae", str(tiny_sae_dir),
                          *map(str, args)]) == 0
    capfd.readouterr()
    code = shoggoth.main(["label", "--db", str(db), "--min-docs", "5"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "mask-specific" in out and "calibration" in out
    con = duckdb.connect(str(db))
    n = con.execute("SELECT count(*), count(DISTINCT feature) FROM features").fetchone()
    assert n == (64, 64)  # one row per feature of the SAE
    labels = {r[0] for r in con.execute("SELECT label FROM features").fetchall()}
    assert labels <= set(LABELS)
    runs = [r[0] for r in con.execute("SELECT run FROM calibration ORDER BY run").fetchall()]
    assert runs[0] == "real" and runs[1] == "shuffled" and runs[2].startswith("split:")
    # feature_personas agrees with doc_features.
    fp = con.execute("""SELECT f.mean_act, s.total / d.n FROM feature_personas f
        JOIN (SELECT feature, persona::VARCHAR AS persona, sum(mean_act) AS total
              FROM doc_features GROUP BY ALL) s USING (feature, persona)
        JOIN (SELECT persona::VARCHAR AS persona, count(*) AS n FROM documents GROUP BY ALL) d
        USING (persona) LIMIT 50""").fetchall()
    assert fp and all(abs(a - b) < 1e-9 for a, b in fp)
    con.execute("INSERT INTO annotations (sae_id, feature, label, note) VALUES "
                "('tiny-sae', 3, 'shared', 'checked by hand')")
    before = con.execute("SELECT * FROM features ORDER BY feature").fetchall()
    con.close()

    assert shoggoth.main(["label", "--db", str(db), "--min-docs", "5"]) == 0  # a rerun replaces
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT * FROM features ORDER BY feature").fetchall() == before
    assert con.execute("SELECT count(*) FROM annotations").fetchone()[0] == 1
    assert con.execute("SELECT label, manual_label FROM feature_labels WHERE feature = 3"
                       ).fetchone() == ("shared", "shared")
    con.close()

    code = shoggoth.main(["label", "--db", str(db), "--sae", "nope"])
    _, err = capfd.readouterr()
    assert code == 2 and "--sae nope" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case, words", [
    ("missing", ["no such file"]),
    ("not_duckdb", ["not a DuckDB database"]),
    ("empty_db", ["not a shoggoth database"]),
    ("no_harvest", ["holds no harvest yet"]),
    ("two_saes", ["holds several SAEs", "--sae"]),
])
def test_label_bad_input(capfd, tmp_path, case, words):
    from index.schema import create_schema
    from sae.personas import load_items, load_personas

    db = tmp_path / "db.duckdb"
    if case == "not_duckdb":
        db.write_text("not a database\n" * 40)
    elif case == "empty_db":
        duckdb.connect(str(db)).close()
    elif case in ("no_harvest", "two_saes"):
        con = duckdb.connect(str(db))
        create_schema(con, load_personas(), load_items())
        if case == "two_saes":
            for name in ("a", "b"):
                con.execute("INSERT INTO saes (sae_id, model, hook, d_in, d_sae) VALUES "
                            "(?, 'm', 'h', 4, 8)", [name])
        con.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code = shoggoth.main(["label", "--db", str(db)])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
