"""The context × content analysis on planted grids (known answers): context-only, content-only
and interaction features are found and told apart, features without an effect are not, the
intervals cover the planted effects, calibration runs, and bad input is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted_grid import make_planted_grid

from shoggoth.core.errors import BadInput
from shoggoth.index.action.analysis import analyse_grid
from shoggoth.index.action.labels import GRID_EFFECT_LABELS, GridLabelConfig
from shoggoth.index.action.stats import block_contrasts

EXPECTED = {"context": "context", "content": "content", "interaction": "context:content"}


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_effects_are_found_and_told_apart(seed):
    g = make_planted_grid(per_kind=20, seed=seed)
    r = analyse_grid(g.documents, g.doc_features, g.n_features)
    f = r.features.set_index("feature")
    kinds = pd.Series({k: v[0] for k, v in g.truth.items()})
    planted = kinds[kinds.isin(list(EXPECTED))].index
    right = sum(f.at[i, "grid_label"] == EXPECTED[kinds[i]] for i in planted)
    assert right >= 0.95 * len(planted)
    # The persona each planted effect is strongest under is the one it was planted on.
    for i in planted:
        column = {"context": "context", "content": "content", "interaction": "interaction"}[
            kinds[i]
        ]
        assert f.at[i, f"{column}_persona"] == g.truth[i][1]
    # No effect planted: shared, null and prompt-wording features. At most 5% of them get an
    # effect label (the test's level), and the realised FDR stays within 0.1.
    empty = kinds[~kinds.isin(list(EXPECTED))].index
    false = f.loc[empty, "grid_label"].isin(GRID_EFFECT_LABELS).sum()
    found = f["grid_label"].isin(GRID_EFFECT_LABELS).sum()
    assert false <= 0.05 * len(empty) + 1
    assert false / found <= 0.1
    # Shared features are shared by every mask in action; features that move with each
    # prompt's wording are not.
    shared = kinds[kinds == "shared"].index
    assert (f.loc[shared, "grid_label"] == "shared-in-action").mean() >= 0.7
    wording = kinds[kinds == "wording"].index
    assert not (f.loc[wording, "grid_label"] == "shared-in-action").any()
    assert r.notes == []


def test_intervals_cover_the_planted_log_ratios():
    g = make_planted_grid(per_kind=10, seed=3)
    r = analyse_grid(g.documents, g.doc_features, g.n_features)
    e = r.effects.set_index(["feature", "persona"])
    planted = {
        "context": ("context", np.log(4)),
        "content": ("content", np.log(4)),
        "interaction": ("interaction", np.log(4)),
    }
    hit = total = 0
    for f, (kind, persona) in g.truth.items():
        if kind not in planted:
            continue
        col, value = planted[kind]
        row = e.loc[(f, persona)]
        total += 1
        hit += row[f"{col}_low"] <= value <= row[f"{col}_high"]
    assert hit >= 0.8 * total
    # Under the other personas there is no effect: their intervals cover 0 mostly.
    others = [
        (f, p) for f, (k, p0) in g.truth.items() if k in planted for p in e.loc[f].index if p != p0
    ]
    cover = np.mean(
        [e.loc[key, "context_low"] <= 0 <= e.loc[key, "context_high"] for key in others]
    )
    assert cover >= 0.85
    # Cell means are the planted ones: in action 4× the baseline under the planted persona.
    f0 = next(f for f, (k, _) in g.truth.items() if k == "interaction")
    row = e.loc[(f0, g.truth[f0][1])]
    assert 3 < row["in_action"] / row["baseline"] < 5.5
    assert 0.6 < row["text_only"] / row["baseline"] < 1.6


def test_the_contrasts_and_their_signs():
    a, b, c, d = (np.array([v]) for v in (4.0, 3.0, 2.0, 1.0))
    x = block_contrasts(a, b, c, d)
    assert x["context"][0] == 2.0 and x["content"][0] == 1.0 and x["interaction"][0] == 0.0
    # Swapping the contexts (a↔c, b↔d) flips context and interaction, keeps content.
    y = block_contrasts(c, d, a, b)
    assert y["context"][0] == -2.0 and y["content"][0] == 1.0


def test_calibration_counts_and_config():
    g = make_planted_grid(per_kind=5, seed=4)
    r = analyse_grid(g.documents, g.doc_features, g.n_features, GridLabelConfig(calibration=3))
    assert list(r.fdr["label"]) == list(GRID_EFFECT_LABELS)
    assert (r.fdr["n_null"] >= 0).all()
    assert r.fdr.set_index("label").at["content", "n_real"] >= 4
    none = analyse_grid(g.documents, g.doc_features, g.n_features, GridLabelConfig(calibration=0))
    assert none.fdr["n_null"].isna().all()
    assert (none.features["grid_label"] == r.features["grid_label"]).all()


def test_bad_input_and_gaps():
    g = make_planted_grid(per_kind=2, seed=5)
    with pytest.raises(BadInput, match="missing column 'cell'"):
        analyse_grid(g.documents.drop(columns="cell"), g.doc_features, g.n_features)
    with pytest.raises(BadInput, match="no complete block"):
        analyse_grid(g.documents[g.documents["cell"] != "baseline"], g.doc_features, g.n_features)
    # One prompt per persona: nothing can be tested, and the note says so.
    one = g.documents["paraphrase"].isna() | (g.documents["paraphrase"] == 0)
    kept = g.documents[one]
    docs = kept.reset_index(drop=True)
    remap = pd.Series(np.arange(len(kept)), index=kept.index)
    rows = g.doc_features[g.doc_features["doc"].isin(kept.index)]
    rows = rows.assign(doc=remap[rows["doc"]].to_numpy())
    r = analyse_grid(docs, rows, g.n_features)
    assert any("two prompts" in n for n in r.notes)
    assert not r.features["grid_label"].isin(GRID_EFFECT_LABELS).any()
