"""The persona space without a dictionary, and the mask cut by activation pattern (common
pattern + own modulation), on planted shifts whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoggoth.index.labels.frames import HarvestFrames, Resampling
from shoggoth.index.labels.persona_decomposition import (
    decomposition,
    persona_shifts,
    space_tables,
)
from shoggoth.index.labels.stats import stratified_weights

D = 48


def orthonormal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(D, n)))
    return q.T


def planted_frames(
    seed: int,
    own: float,
    wording: float,
    n_personas: int = 6,
    n_wordings: int = 3,
    n_items: int = 24,
    axis: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """(shifts, personas, prompts, planted): every persona writes a common direction c at its
    own strength s_k plus an own direction o_k (orthogonal to c, summing to zero over the
    personas, so the personas' mean lies on c), plus wording noise per (persona, wording) and
    item noise; controls: no system turn (the assistant: the mean plus a planted axis), a
    neutral prompt (along c, weaker) and a mention control."""
    rng = np.random.default_rng(seed)
    basis = orthonormal(rng, n_personas + 4)
    c, axis_dir = basis[0], basis[1]
    strengths = rng.uniform(0.6, 1.4, n_personas)
    raw = rng.normal(size=(n_personas, n_personas - 1)) @ basis[2 : n_personas + 1]
    raw -= raw.mean(axis=0)  # own directions sum to zero: the mean of the personas lies on c
    own_dirs = raw / np.linalg.norm(raw, axis=1).mean()  # (one scale: they still sum to 0)
    if axis:  # the personas spread along one axis too: PC1
        spread = np.linspace(-1, 1, n_personas)
        own_vecs = own * (0.15 * own_dirs + spread[:, None] * axis_dir)
    else:
        own_vecs = own * own_dirs
    names = [f"p{k}" for k in range(n_personas)]
    true = {n: strengths[k] * c + own_vecs[k] for k, n in enumerate(names)}
    m = np.mean(list(true.values()), axis=0)
    true["control_none"] = m + 1.5 * own * axis_dir
    true["control_neutral"] = 0.5 * c
    true["control_mention"] = 0.3 * c + 0.2 * basis[-1]
    rows = []
    for name, v in true.items():
        for j in range(n_wordings if name.startswith("p") else 1):
            offset = wording * rng.normal(size=D) / np.sqrt(D)
            for i in range(n_items):
                shift = v + offset + 0.05 * rng.normal(size=D) / np.sqrt(D)
                rows.append(
                    {
                        "persona": name,
                        "paraphrase": j,
                        "item_id": f"i{i:02d}",
                        "shift": shift.astype(np.float32),
                        "shift_hat": shift,
                    }
                )
    personas = pd.DataFrame(
        [{"persona": n, "family": "f", "is_control": False, "control_of": None} for n in names]
        + [
            {
                "persona": "control_none",
                "family": "control",
                "is_control": True,
                "control_of": None,
            },
            {
                "persona": "control_neutral",
                "family": "control",
                "is_control": True,
                "control_of": None,
            },
            {
                "persona": "control_mention",
                "family": "control",
                "is_control": True,
                "control_of": "p0",
            },
        ]
    )
    prompts = pd.DataFrame(
        [{"persona": n, "prompt": "" if n == "control_none" else f"{n} says"} for n in true]
    )
    planted = {
        "c": c,
        "axis": axis_dir,
        "strengths": strengths,
        "own": own_vecs,
        "true": true,
        "names": names,
    }
    return pd.DataFrame(rows), personas, prompts, planted


def space_of(shifts, personas, prompts, boot: int = 50):
    arrays, items = persona_shifts(shifts, personas, prompts, None)
    weights = stratified_weights(np.zeros(len(items)), boot, 0)
    return space_tables(arrays, len(items), weights, 0.9)


def test_no_assistant_axis_where_no_system_turn_is_the_reference_itself():
    """A base model renders "no system turn" as no prefix at all, which is the difference
    dictionary's reference: that control's shift is zero by construction, so there is no
    default mask and no assistant axis (an axis from it would be minus the personas' mean)."""
    shifts, personas, prompts, _ = planted_frames(0, own=0.6, wording=0.08)
    _, axes = space_of(shifts, personas, prompts)
    assert "assistant" in set(axes["axis"])  # a chat model's default mask: an axis
    base = shifts.copy()
    base["shift"] = [
        np.zeros(D, np.float32) if p == "control_none" else v
        for p, v in zip(base["persona"], base["shift"], strict=True)
    ]
    space, axes = space_of(base, personas, prompts)
    assert "assistant" not in set(axes["axis"]) and "controls" in set(axes["axis"])
    assert space.set_index("persona").loc["control_none", "norm"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_dictionary_free_shares_match_the_planted_ones(seed):
    shifts, personas, prompts, planted = planted_frames(seed, own=0.6, wording=0.08, axis=False)
    space, axes = space_of(shifts, personas, prompts)
    by = space.set_index("persona")
    c = planted["c"]
    for name in planted["names"]:
        v = planted["true"][name]
        want = float(v @ c) ** 2 / float(v @ v)
        assert by.loc[name, "common_share"] == pytest.approx(want, abs=0.05), name
        assert by.loc[name, "remainder_share"] == pytest.approx(1 - want, abs=0.05), name
        assert (
            by.loc[name, "common_share_ci_low"]
            <= by.loc[name, "common_share"]
            <= by.loc[name, "common_share_ci_high"]
        )
        assert by.loc[name, "reproducibility"] >= 0.8, name  # its own direction, found
        assert by.loc[name, "reproducibility_null"] < by.loc[name, "reproducibility"] - 0.5
    assert bool(by.loc["control_none", "is_control"])
    # The plain controls' direction (no system turn, neutral) against the common one.
    assert axes.set_index("axis").loc["controls", "cosine_common"] == pytest.approx(
        float(
            np.mean([planted["true"]["control_none"], planted["true"]["control_neutral"]], axis=0)
            @ c
        )
        / float(
            np.linalg.norm(
                np.mean(
                    [planted["true"]["control_none"], planted["true"]["control_neutral"]], axis=0
                )
            )
        ),
        abs=0.05,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_the_assistant_axis_of_a_planted_axis_is_recovered(seed):
    shifts, personas, prompts, planted = planted_frames(seed, own=1.2, wording=0.1)
    space, axes = space_of(shifts, personas, prompts)
    assert axes.set_index("axis").loc["assistant", "cosine_pc1"] >= 0.9
    pc1 = space.set_index("persona")["pc1"]
    order = [n for n in pc1.index if n.startswith("p")]
    # The planted spread runs p0 → p5 along the axis; PC1 is oriented along the assistant.
    assert np.corrcoef(pc1[order].to_numpy(), np.arange(len(order)))[0, 1] > 0.9


def test_without_own_directions_nothing_is_reproducible():
    shifts, personas, prompts, _ = planted_frames(3, own=0.0, wording=0.3, axis=False)
    space, _ = space_of(shifts, personas, prompts)
    main = space[~space["is_control"]]
    assert (main["reproducibility"] <= 0.1).all(), main["reproducibility"].tolist()
    assert (main["common_share"] > 0.6).all()


def test_the_own_modulation_of_shared_features_is_its_own_part():
    """A planted dictionary: every feature fires under every persona (none is mask-specific);
    each persona drives some of them harder than the mean. The own-modulation share matches the
    planted one; the label breakdown has no own part."""
    rng = np.random.default_rng(7)
    d_sae, n_items, names = 12, 20, [f"p{k}" for k in range(5)]
    w_dec = orthonormal(rng, d_sae)
    common = rng.uniform(0.5, 1.0, d_sae)
    modulation = rng.normal(0, 0.35, size=(len(names), d_sae))
    modulation -= modulation.mean(axis=0)  # the common pattern is the personas' mean
    error_dir = orthonormal(rng, d_sae + 1)[-1] if d_sae < D else None
    shifts, doc_features, documents = [], [], []
    for k, name in enumerate(names):
        acts = common + modulation[k]
        for j in range(2):
            for i in range(n_items):
                noise = rng.normal(0, 0.02, d_sae)
                a = np.maximum(acts + noise, 0)
                v = a @ w_dec + 0.1 * error_dir
                item = f"i{i:02d}"
                shifts.append(
                    {
                        "persona": name,
                        "paraphrase": j,
                        "item_id": item,
                        "shift": v.astype(np.float32),
                        "shift_hat": a @ w_dec,
                    }
                )
                documents.append({"persona": name, "paraphrase": j, "item_id": item})
                doc_features += [
                    {
                        "persona": name,
                        "paraphrase": j,
                        "item_id": item,
                        "feature": f,
                        "mean_act": a[f],
                    }
                    for f in range(d_sae)
                ]
    personas = pd.DataFrame(
        [{"persona": n, "family": "f", "is_control": False, "control_of": None} for n in names]
    )
    features = pd.DataFrame(
        {"feature": range(d_sae), "label": "shared", "top_persona": None, "family_set": None}
    )
    frames = HarvestFrames(
        pd.DataFrame(doc_features),
        pd.DataFrame(documents),
        personas,
        {},
        d_sae,
        pd.DataFrame(shifts),
    )
    parts = decomposition(frames, features, w_dec, "difference", None, Resampling(50, 0.9, 0))
    pattern = parts.pattern.set_index(["persona", "part"])["share"]
    for k, name in enumerate(names):
        v = (common + modulation[k]) @ w_dec + 0.1 * error_dir
        planted = float(v @ (modulation[k] @ w_dec)) / float(v @ v)
        assert pattern[name, "own_modulation"] == pytest.approx(planted, abs=0.05), name
        assert pattern[name, "own_features"] == pytest.approx(0.0, abs=1e-9)
        total = sum(pattern[name, p] for p in ("common", "own_features", "own_modulation", "error"))
        assert total == pytest.approx(1.0, abs=1e-9)
    by_label = parts.labels.set_index(["persona", "part"])["share"]
    assert all(by_label[n, "own"] == 0 for n in names)
    top = parts.own[parts.own["persona"] == names[0]]
    assert top.iloc[0]["feature"] == int(
        np.argmax(np.abs(modulation[0] * (w_dec @ ((common + modulation[0]) @ w_dec))))
    )


# --- a planted transformer, through `harvest` and `label` (tests/planted_persona_space.py) ---


def _labelled_space(root, seed: int, own: bool):
    """The planted model and dictionary harvested and labelled: (planted, persona_space,
    persona_space_axes, persona_decomposition, persona_label_shares, features)."""
    import duckdb
    from helpers import battery
    from planted_persona_space import build, personas_yaml, plant

    from shoggoth import cli

    planted = plant(seed, own=own)
    _, sae_dir = build(root, planted)
    args = battery(root / "battery", 24, personas_yaml(planted))
    db = root / "space.duckdb"
    assert (
        cli.main(
            [
                "harvest",
                "--db",
                str(db),
                "--sae-dir",
                str(sae_dir),
                *map(str, args),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "label",
                "--db",
                str(db),
                "--sae",
                sae_dir.name,
                "--calibration-seeds",
                "1",
                "--assistant",
                "assistant",
            ]
        )
        == 0
    )
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [
            con.execute(f"SELECT * FROM {t} WHERE sae_id = ?", [sae_dir.name]).df()
            for t in (
                "persona_space",
                "persona_space_axes",
                "persona_decomposition",
                "persona_label_shares",
                "features",
            )
        ]
    return (planted, *tables)


@pytest.fixture(scope="module")
def planted_space(tmp_path_factory):
    return _labelled_space(tmp_path_factory.mktemp("planted-space"), 0, own=True)


@pytest.mark.slow  # harvests and labels
def test_a_planted_model_s_persona_space_and_decomposition_are_found(planted_space):
    from planted_persona_space import expected

    planted, space, axes, parts, label_shares, features = planted_space
    want = expected(planted)
    by = space.set_index("persona")
    share = parts.set_index(["persona", "part"])["share"]
    for name in planted.names:
        w = want[name]
        assert by.loc[name, "common_share"] == pytest.approx(w["common_share"], abs=0.05), name
        assert by.loc[name, "remainder_share"] == pytest.approx(1 - w["common_share"], abs=0.05), (
            name
        )
        assert by.loc[name, "reproducibility"] >= 0.8, name  # its own direction, found
        for part in ("common", "own_modulation", "error"):
            assert share[name, part] == pytest.approx(w[part], abs=0.05), (name, part)
        assert share[name, "own_features"] == pytest.approx(0.0, abs=1e-9), name
    # Every feature fires under every persona and none dominates one: nothing is mask-specific,
    # so the label breakdown has no own part although the own modulation is up to a third.
    assert not features["label"].isin(["mask-specific", "mask-family"]).any()
    assert (label_shares.loc[label_shares["part"] == "own", "share"] == 0).all()
    assert max(want[n]["own_modulation"] for n in planted.names) > 0.2
    # The planted axis: the assistant is furthest along it; PC1 is it.
    ax = axes.set_index("axis")
    assert ax.loc["assistant", "axis_persona"] == "assistant"
    assert ax.loc["assistant", "cosine_pc1"] >= 0.9
    pc1 = by.loc[planted.names, "pc1"].to_numpy()
    assert np.corrcoef(pc1, planted.spread)[0, 1] >= 0.9


@pytest.mark.slow  # harvests and labels
def test_a_planted_model_without_own_directions_has_nothing_reproducible(tmp_path):
    planted, space, *_ = _labelled_space(tmp_path, 1, own=False)
    main = space[~space["is_control"]]
    assert main["reproducibility"].mean() <= 0.1, main["reproducibility"].tolist()
    assert (main["reproducibility"] <= 0.3).all(), main["reproducibility"].tolist()
    assert (main["common_share"] >= 0.95).all()
