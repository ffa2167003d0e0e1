"""Feature labels: planted truth, the null, calibration, edge cases, invariances, and
`shoggoth label` on a real harvested database."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planted_battery import EXPECTED, battery, planted, score
from scipy import stats

from shoggoth import cli
from shoggoth.core.errors import BadInput
from shoggoth.index.labels.nulls import false_persona_labels, reassign_prompts, split_personas
from shoggoth.index.labels.rules import LABELS, PERSONA_LABELS, label_features

CONDITIONS = [(0.014, 0.15), (0.0005, 0.15), (0.014, 0.0)]
"""(background firing rate, wording effect ±) of the planted battery."""


@pytest.fixture(scope="module", params=CONDITIONS, ids=lambda c: f"bg{c[0]}-wording{c[1]}")
def labelled(request):
    background, wording = request.param
    df, docs, personas, topics, truth = planted(
        7, per_kind=15, background=background, wording=wording
    )
    return (
        df,
        docs,
        personas,
        topics,
        truth,
        label_features(df, docs, personas, len(truth), topics=topics),
    )


def test_the_issues_targets_hold_on_the_planted_battery(labelled):
    *_, truth, out = labelled
    s = score(out, truth)
    assert s["mask-specific recall"] >= 0.8 and s["mask-specific precision"] >= 0.9, s
    for kind in ("mention", "single-paraphrase", "no-effect"):
        assert s[f"{kind} given a mask label"] <= 0.05, s
    assert s["one persona at 1.6x labelled shared"] == 0, s
    assert s["within 1.3x labelled shared"] >= 0.5, s
    assert s["two-persona and family labelled mask-family"] >= 0.8, s
    kinds = {f: k for f, (k, _) in truth.items()}
    kind_of = out["feature"].map(kinds)
    for kind, want in EXPECTED.items():
        hit = (out.loc[kind_of == kind, "label"] == want).mean()
        # Equivalence is a claim with power below 1: most, not all, equal features pass.
        assert hit >= (0.8 if kind in ("shared", "mask-general") else 1.0), (kind, hit)
    concept = out[out["feature"].map(kinds) == "mention"]
    assert (concept["label"] == "persona-concept").mean() >= 0.8
    assert (concept["control_ratio"] >= 0.5).all()
    family = out[(out["feature"].map(kinds) == "family") & (out["label"] == "mask-family")]
    assert family["battery_family"].str.startswith("fam").all() and len(family)
    live = out[out["n_docs_firing"] > 0]
    assert live["top_share"].between(0, 1).all()
    assert (live["k_eff"] >= 1 - 1e-9).all() and live["norm_entropy"].between(0, 1 + 1e-9).all()
    assert out.loc[out["label"] == "dead", "p_value"].isna().all()
    assert out["shared_power"].dropna().between(0, 1).all()


@pytest.mark.parametrize("seed", [3, 4])
def test_dense_modulated_features_are_not_mask_specific_and_1_6x_is_never_shared(seed):
    """The two ways the labeller once failed a difference dictionary's shape: a feature every
    persona fires, one persona 2.5x as strongly, was called mask-specific (29 of 36); one
    persona at 1.6x was called shared 3.7% of the time."""
    kinds = ("mask-specific", "shared", "shared-1.6", "dense-modulated")
    df, docs, personas, topics, truth = planted(seed, per_kind=36, kinds=kinds)
    out = label_features(df, docs, personas, len(truth), topics=topics)
    s = score(out, truth)
    assert s["dense-modulated labelled mask-specific"] == 0, s
    assert s["one persona at 1.6x labelled shared"] <= 0.01, s
    assert s["mask-specific precision"] >= 0.9 and s["mask-specific recall"] >= 0.8, s
    kind = out["feature"].map(lambda f: truth[f][0])
    assert (out.loc[kind == "dense-modulated", "label"] == "shared-modulated").mean() >= 0.9
    assert (out.loc[kind == "shared", "label"].isin(["shared", "mask-general"])).mean() >= 0.8


def test_prompts_reassigned_to_random_personas_get_no_persona_label(labelled):
    df, docs, personas, topics, truth, out = labelled
    live = out["n_docs_firing"] > 0
    for seed in range(2):
        r, rdocs = reassign_prompts(df, docs, personas, seed)
        null = label_features(r, rdocs, personas, len(truth), topics=topics)
        assert null.loc[live, "label"].isin(PERSONA_LABELS).mean() <= 0.01
    split, sdocs, spers, origin = split_personas(df, docs, personas)
    assert len(origin) == 36 and len(sdocs) == len(docs)
    table = label_features(split, sdocs, spers, len(truth), topics=topics)
    assert false_persona_labels(table, origin)[live].mean() <= 0.01
    # A real mask-specific feature becomes a family of its persona's two halves.
    f = next(f for f, (k, _) in truth.items() if k == "mask-specific")
    assert table.at[f, "label"] == "mask-family"
    assert set(table.at[f, "family_set"].split(",")) == {f"{truth[f][1]}__a", f"{truth[f][1]}__b"}


def test_p_values_are_uniform_under_each_null():
    df, docs, personas, topics, truth = planted(11, per_kind=10, null=True)
    out = label_features(df, docs, personas, len(truth), topics=topics)
    assert stats.kstest(out["p_value"].dropna(), "uniform").pvalue > 0.01
    assert not out["label"].isin(PERSONA_LABELS).any()
    # Reassignment: one feature of each kind, its p-value over many reassignments (features of
    # one reassignment share its permutation, so they are not independent of each other).
    df, docs, personas, topics, truth = planted(12, per_kind=1)
    pooled = []
    for seed in range(25):
        r, rdocs = reassign_prompts(df, docs, personas, seed)
        pooled.append(label_features(r, rdocs, personas, len(truth), topics=topics)["p_value"])
    p = pd.concat(pooled).dropna()
    assert len(p) >= 25 * 12 and stats.kstest(p, "uniform").pvalue > 0.01


def test_reassignment_moves_whole_prompts_and_keeps_controls():
    df, docs, personas, _, _ = planted(5, per_kind=1, n_items=24)
    r, rdocs = reassign_prompts(df, docs, personas, 3)
    assert len(r) == len(df) and len(rdocs) == len(docs)
    key = ["persona", "paraphrase", "item_id"]
    assert not rdocs[key].astype(str).duplicated().any()
    moved = df.assign(
        new=r["persona"].astype(str) + "/" + r["paraphrase"].astype(str),
        old=df["persona"].astype(str) + "/" + df["paraphrase"].astype(str),
    )
    assert (moved.groupby("old")["new"].nunique() == 1).all()  # a prompt moves as a whole
    assert (moved["old"] != moved["new"]).mean() > 0.5
    ctrl = df["persona"].astype(str).str.startswith("control")
    assert (moved.loc[ctrl, "old"] == moved.loc[ctrl, "new"]).all()
    pd.testing.assert_series_equal(r["mean_act"], df["mean_act"])


def small_case(n_items=12, n_para=2):
    personas, docs, _, _ = battery(2, 2, n_para, 2, n_items, 3)
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

    # A persona missing some items: its mean uses the items it has.
    p0 = personas["persona"].iloc[0]
    partial = docs[~((docs["persona"] == p0) & (docs["item_id"] > "item005"))]
    vals = partial.assign(feature=0, mean_act=np.where(partial["persona"] == p0, 5.0, 0.0))
    vals = vals[vals["mean_act"] > 0]
    out = label_features(vals, partial, personas, 1)
    row = out.iloc[0]
    assert row["argmax_persona"] == p0 and row["top_share"] == 1.0
    assert any("do not all share the same items" in n for n in out.attrs["notes"])

    for bad, words in [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, ">= 0")]:
        frame = docs.head(3).assign(feature=0, mean_act=[1.0, bad, 2.0])
        with pytest.raises(BadInput, match=words):
            label_features(frame, docs, personas, 1)
    with pytest.raises(BadInput, match="out of range"):
        label_features(docs.head(1).assign(feature=7, mean_act=1.0), docs, personas, 3)
    with pytest.raises(BadInput, match="not in documents"):
        label_features(
            pd.DataFrame([("ghost", 0, "item000", 0, 1.0)], columns=empty.columns),
            docs,
            personas,
            1,
        )


def test_what_a_battery_cannot_support_is_said_and_the_rest_is_labelled():
    # No matched controls: a persona's own feature is mask-or-concept, never mask-specific.
    df, docs, personas, topics, truth = planted(3, per_kind=6, matched=False)
    out = label_features(df, docs, personas, len(truth), topics=topics)
    kinds = out["feature"].map(lambda f: truth[f][0])
    assert (out.loc[kinds == "mask-specific", "label"] == "mask-or-concept").mean() >= 0.8
    assert not (out["label"] == "mask-specific").any()
    assert (out.loc[kinds == "shared-modulated", "label"] == "shared-modulated").all()
    assert any("no mention/negation control" in n for n in out.attrs["notes"])
    # A persona with one prompt gets no persona label; the others still do.
    df, docs, personas, topics, truth = planted(4, per_kind=6)
    lone = personas["persona"].iloc[0]
    keep = ~((docs["persona"] == lone) & (docs["paraphrase"] > 0))
    df = df[~((df["persona"] == lone) & (df["paraphrase"] > 0))]
    out = label_features(df, docs[keep], personas, len(truth), topics=topics)
    assert not (out["top_persona"] == lone).any()
    assert (out["label"] == "mask-specific").sum() >= 4
    assert any("one prompt" in n for n in out.attrs["notes"])
    # Every persona with one prompt: no persona test at all, and it says so.
    one = docs["paraphrase"] == 0
    out = label_features(df[df["paraphrase"] == 0], docs[one], personas, len(truth))
    assert out["p_value"].isna().all() and not out["label"].isin(PERSONA_LABELS).any()
    assert any("cannot be computed" in n for n in out.attrs["notes"])


@st.composite
def datasets(draw):
    seed = draw(st.integers(0, 10_000))
    df, docs, personas, topics, truth = planted(seed, per_kind=1, n_items=24)
    return df, docs, personas, topics, len(truth), draw(st.permutations(list(personas["persona"])))


@settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(datasets(), st.floats(0.01, 100))
def test_relabelling_and_scaling_change_nothing_else(data, scale):
    df, docs, personas, topics, n, names = data
    base = label_features(df, docs, personas, n, topics=topics)
    mapping = dict(zip(personas["persona"], names, strict=True))
    renamed = label_features(
        df.assign(persona=df["persona"].astype(str).map(mapping)),
        docs.assign(persona=docs["persona"].map(mapping)),
        personas.assign(
            persona=personas["persona"].map(mapping), control_of=personas["control_of"].map(mapping)
        ),
        n,
        topics=topics,
    )
    assert list(renamed["label"]) == list(base["label"])
    assert list(renamed["top_persona"]) == [mapping.get(p) for p in base["top_persona"]]
    numeric = [
        "top_share",
        "k_eff",
        "p_value",
        "max_min_ratio",
        "top_ratio",
        "paraphrase_margin",
        "control_ratio",
        "ratio_ci_high",
    ]
    pd.testing.assert_frame_equal(renamed[numeric], base[numeric])
    scaled = label_features(
        df.assign(mean_act=df["mean_act"] * scale), docs, personas, n, topics=topics
    )
    assert list(scaled["label"]) == list(base["label"])
    pd.testing.assert_frame_equal(scaled[numeric], base[numeric], rtol=1e-5)


def test_label_command_writes_tables_and_keeps_annotations(capfd, tmp_path, tiny_sae_dir):
    from helpers import battery

    db = tmp_path / "db.duckdb"
    args = battery(tmp_path / "b", 30)
    assert (
        cli.main(["harvest", "--db", str(db), "--sae-dir", str(tiny_sae_dir), *map(str, args)]) == 0
    )
    capfd.readouterr()
    code = cli.main(["label", "--db", str(db), "--min-docs", "5"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "mask-specific" in out and "est. FDR" in out and "null (reassigned)" in out
    # This battery has no matched controls and 3 paraphrases a persona: said, not hidden.
    assert "note: 2 of 2 personas have no mention/negation control" in err
    assert "the split calibration needs a persona with 4 or more paraphrases" in err
    con = duckdb.connect(str(db))
    n = con.execute("SELECT count(*), count(DISTINCT feature) FROM features").fetchone()
    assert n == (64, 64)  # one row per feature of the SAE
    labels = {r[0] for r in con.execute("SELECT label FROM features").fetchall()}
    assert labels <= set(LABELS)
    runs = [
        r[0] for r in con.execute("SELECT DISTINCT run FROM calibration ORDER BY run").fetchall()
    ]
    assert runs == ["real", "reassigned:0", "reassigned:1", "reassigned:2"]
    real = dict(con.execute("SELECT label, n FROM calibration WHERE run = 'real'").fetchall())
    assert real == dict(
        con.execute("SELECT label, count(*) FROM features GROUP BY label").fetchall()
    ) | {k: 0 for k in set(LABELS) - set(labels)}
    fdr = con.execute("SELECT label, n_real, n_null, fdr FROM label_fdr ORDER BY label").fetchall()
    assert {r[0] for r in fdr} == set(LABELS)
    for label, n_real, n_null, rate in fdr:
        assert (rate is None) == (label not in (*PERSONA_LABELS, "shared-modulated"))
        if rate is not None and n_real:
            assert rate == pytest.approx(min(1.0, n_null / n_real))
    # feature_personas agrees with doc_features.
    fp = con.execute("""SELECT f.mean_act, s.total / d.n FROM feature_personas f
        JOIN (SELECT feature, persona::VARCHAR AS persona, sum(mean_act) AS total
              FROM doc_features GROUP BY ALL) s USING (feature, persona)
        JOIN (SELECT persona::VARCHAR AS persona, count(*) AS n FROM documents GROUP BY ALL) d
        USING (persona) LIMIT 50""").fetchall()
    assert fp and all(abs(a - b) < 1e-9 for a, b in fp)
    con.execute(
        "INSERT INTO annotations (sae_id, feature, label, note) VALUES "
        "('tiny-sae', 3, 'shared', 'checked by hand')"
    )
    before = con.execute("SELECT * FROM features ORDER BY feature").fetchall()
    con.close()

    assert cli.main(["label", "--db", str(db), "--min-docs", "5"]) == 0  # a rerun replaces
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT * FROM features ORDER BY feature").fetchall() == before
    assert con.execute("SELECT count(*) FROM annotations").fetchone()[0] == 1
    assert con.execute(
        "SELECT label, manual_label FROM feature_labels WHERE feature = 3"
    ).fetchone() == ("shared", "shared")
    con.close()

    capfd.readouterr()
    code = cli.main(["label", "--db", str(db), "--sae", "nope"])
    _, err = capfd.readouterr()
    assert code == 2 and "--sae nope" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["no such file"]),
        ("not_duckdb", ["not a DuckDB database"]),
        ("empty_db", ["not a shoggoth database"]),
        ("no_harvest", ["holds no harvest yet"]),
        ("two_saes", ["holds several SAEs", "--sae"]),
    ],
)
def test_label_bad_input(capfd, tmp_path, case, words):
    from shoggoth.battery.personas import load_items, load_personas
    from shoggoth.index.store.schema import create_schema

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
                con.execute(
                    "INSERT INTO saes (sae_id, model, hook, d_in, d_sae) VALUES "
                    "(?, 'm', 'h', 4, 8)",
                    [name],
                )
        con.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code = cli.main(["label", "--db", str(db)])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_calibration_runs_and_the_fdr_table():
    from shoggoth.index.labels.frames import HarvestFrames
    from shoggoth.index.labels.rules import LabelConfig
    from shoggoth.index.labels.run import calibrate, fdr_table

    df, docs, personas, topics, truth = planted(9, per_kind=4)
    cfg = LabelConfig()
    real = label_features(df, docs, personas, len(truth), cfg, topics)
    notes: list[str] = []
    calib = calibrate(HarvestFrames(df, docs, personas, topics, len(truth)), cfg, 2, notes)
    assert list(calib["run"].unique()) == ["reassigned:0", "reassigned:1", "split"]
    assert not notes
    assert (calib.groupby("run")["n"].sum() <= len(truth)).all()
    table = fdr_table(real, calib).set_index("label")
    n_specific = int((real["label"] == "mask-specific").sum())
    assert table.at["mask-specific", "n_real"] == n_specific >= 3
    null = calib[calib["run"].str.startswith("reassigned") & (calib["label"] == "mask-specific")]
    split = calib[(calib["run"] == "split") & (calib["label"] == "mask-specific")]["n"].iloc[0]
    want = min(1.0, max(null["n"].mean(), split) / n_specific)
    assert table.at["mask-specific", "fdr"] == pytest.approx(want) and want <= 0.05
    assert pd.isna(table.at["shared", "fdr"])
    # Two paraphrases a persona: no split run, and a note says why.
    two = docs["paraphrase"] < 2
    frames = HarvestFrames(df[df["paraphrase"] < 2], docs[two], personas, topics, len(truth))
    calib = calibrate(frames, cfg, 1, notes)
    assert list(calib["run"].unique()) == ["reassigned:0"]
    assert any("4 or more paraphrases" in n for n in notes)


def test_matched_controls_are_found_by_name_when_control_of_is_missing():
    df, docs, personas, topics, truth = planted(6, per_kind=4)
    unlinked = personas.drop(columns="control_of")
    out = label_features(df, docs, unlinked, len(truth), topics=topics)
    kinds = out["feature"].map(lambda f: truth[f][0])
    assert (out.loc[kinds == "mask-specific", "label"] == "mask-specific").all()
    assert (out.loc[kinds == "mention", "label"] == "persona-concept").all()
    assert not any("mention/negation" in n for n in out.attrs["notes"])
