"""Overview: the SAEs, the battery, label counts, the persona decomposition and the persona space,
persona x label heatmap, calibration."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from shoggoth.core.signal import weak_signal_note
from shoggoth.explorer.common import (
    NO_SPACE,
    OLD_DECOMPOSITION,
    assistant_persona,
    by_pattern,
    code,
    db_path,
    decomposition_chart,
    feature_link,
    labels_frame,
    md,
    persona_space_chart,
    pick_sae,
    q,
    shares_chart,
    shares_frame,
    space_caption,
)
from shoggoth.index.action import queries as action_queries
from shoggoth.index.effects import queries as effect_queries
from shoggoth.index.labels import queries as label_queries
from shoggoth.index.labels.decompose import PARTS
from shoggoth.index.labels.rules import LABELS
from shoggoth.index.layers import queries as layer_queries
from shoggoth.index.store import read

sae, record = pick_sae()
st.title("shoggoth · overview")
st.caption(
    "Which SAE features belong to one persona (a mask), and which fire the same way "
    "whatever the persona (shared)?"
)

st.subheader("SAEs")
st.dataframe(q(read.sae_overview), hide_index=True)

counts = q(read.harvest_counts, sae)
c1, c2, c3, c4 = st.columns(4)
c1.metric("features", f"{record.d_sae:,}")
c2.metric("documents", f"{counts['documents']:,}")
c3.metric("answer tokens", f"{counts['tokens']:,}")
c4.metric("activations stored", f"{counts['activations']:,}")

st.subheader("Personas")
st.dataframe(q(read.persona_table), hide_index=True)

features = labels_frame(sae)
if features.empty:
    st.info(f"No labels yet: run {code(f'shoggoth label --db {db_path()}')} to label the features.")
    st.stop()

st.subheader("Labels")
fdr = q(label_queries.label_fdr, sae)
count = features["label"].value_counts().reindex(LABELS, fill_value=0)
table = pd.DataFrame({"label": count.index, "features": count.to_numpy()})
if len(fdr):
    table = table.merge(
        fdr.rename(
            columns={
                "n_null": "null (reassigned prompts)",
                "n_split": "null (split personas)",
                "fdr": "estimated FDR",
            }
        ).drop(columns="n_real"),
        on="label",
        how="left",
    )
st.dataframe(
    table,
    hide_index=True,
    column_config={  # (a mean of runs: one decimal)
        "null (reassigned prompts)": st.column_config.NumberColumn(format="%.1f"),
        "null (split personas)": st.column_config.NumberColumn(format="%.0f"),
        "estimated FDR": st.column_config.NumberColumn(format="percent"),
    },
)
st.caption(
    "Each persona label's estimated false-discovery rate is the larger null count (the "
    "mean over runs with the prompts reassigned to random personas, or the run with every "
    "persona's paraphrases split in two) divided by the real count; shared-modulated's "
    "uses the reassigned runs. Shared labels have none: reassigning prompts does not make "
    "a shared feature false (their evidence is the equivalence bound and its power)."
)
for note in q(label_queries.label_notes, sae):
    st.warning(md(note))
manual = int(features["manual_label"].notna().sum())
if manual:
    st.caption(f"{manual} features carry a manual label (shown instead of the automatic one).")

st.subheader("What this dictionary sees of the masks")
signal = q(label_queries.persona_signal, sae)
carried = label_queries.signal_carried(signal)
if carried is None:
    st.info(
        "No persona signal for this harvest (made before document shifts were stored): "
        "harvest and label again."
    )
else:
    st.metric(
        "persona signal carried",
        f"{carried:.2f}",
        help="Σ_k ⟨v_k, v̂_k⟩ / Σ_k |v_k|²: v_k a persona's mean answer-token shift "
        "against the reference, v̂_k the same through this dictionary.",
    )
    weak = weak_signal_note(carried)
    if weak:
        st.warning(weak)
    decomposition = q(label_queries.persona_decomposition, sae)
    if len(decomposition) and not by_pattern(decomposition):
        st.altair_chart(decomposition_chart(decomposition, PARTS), width="stretch")
        st.caption(OLD_DECOMPOSITION)
    elif len(decomposition):
        st.altair_chart(decomposition_chart(decomposition), width="stretch")
        st.caption(
            "Each persona's shift cut by activation pattern: every feature at its mean over "
            "the personas (common: the pattern every mask shares), the persona's own "
            "modulation of the features labelled its own or its family's (own_features) and "
            "of every other feature (own_modulation), and what the dictionary does not "
            "reconstruct (error). A share is the part's projection on the shift, so they sum "
            "to 1 (docs/labels.md); the cut by label is on each persona's page."
        )
        for line in label_queries.answers(decomposition).values():
            st.text(line)

st.subheader("The persona space (no dictionary)")
space = q(label_queries.persona_space, sae)
axes = q(label_queries.persona_space_axes, sae)
if space.empty:
    st.caption(NO_SPACE)
else:
    summary = label_queries.space_summary(space, axes)
    if summary:
        st.caption(md(summary))
    assistant = assistant_persona(sae, space, axes)
    st.altair_chart(persona_space_chart(space, axes, assistant=assistant), width="stretch")
    st.caption(space_caption(space, axes, assistant))
    shares = shares_frame(q(label_queries.persona_decomposition, sae), space)
    if len(shares):
        st.altair_chart(shares_chart(shares), width="stretch")
        st.caption(
            "Each persona's shift two ways. With the dictionary: the pattern every mask "
            "shares (common), its own modulation (own_features + own_modulation) and what the "
            "dictionary does not reconstruct (error). Without it, from the harvest's shifts "
            "alone: its share along the personas' common direction and what lies off it. The "
            "common parts differ in kind (a pattern of features, a direction), so the two bars "
            "agree only roughly; a persona with no dictionary bar has no decomposition "
            "(see the notes above)."
        )
    with st.expander("Every persona and control in the space"):
        st.dataframe(space, hide_index=True)
        if not axes.empty:
            st.dataframe(axes, hide_index=True)

st.subheader("Persona × label")
st.caption("For each persona, how many features it is the strongest persona of, by label.")
grid = (
    features.dropna(subset=["argmax_persona"])
    .groupby(["argmax_persona", "label"])
    .size()
    .reset_index(name="features")
)
heat = (
    alt.Chart(grid)
    .mark_rect()
    .encode(
        x=alt.X("label:N", sort=list(LABELS)),
        y=alt.Y("argmax_persona:N", title="persona"),
        color=alt.Color("features:Q", scale=alt.Scale(scheme="blues")),
        tooltip=["argmax_persona", "label", "features"],
    )
)
text = heat.mark_text(fontSize=11).encode(text="features:Q", color=alt.value("black"))
st.altair_chart(heat + text, width="stretch")

st.subheader("Calibration")
calib = q(label_queries.calibration, sae)
if calib.empty:
    st.write("No calibration runs stored (run `shoggoth label`).")
else:
    wide = calib.pivot_table(index="run", columns="label", values="n", aggfunc="sum")
    st.dataframe(wide.reindex(columns=[c for c in LABELS if c in wide.columns]))
    st.caption("Label counts of the real run and of each calibration run (docs/labels.md).")

st.subheader("Where the persona lives, by layer")
probe = q(layer_queries.layer_probe, sae)
if probe.empty:
    st.write(f"No layer probe yet: run {code(f'shoggoth layers --db {db_path()}')}.")
else:
    chance = float(probe["chance"].iloc[0])
    st.caption(
        f"A linear probe names the persona from the answer tokens' residual stream, on "
        f"items and prompts it never saw in training (chance {chance:.3f}); the persona "
        "vectors' norms relative to a residual's. At the SAE's layer: the share of the "
        "persona signal the SAE's reconstruction carries, and the probe on the "
        "reconstruction and on the error term. A persona the probe finds but the "
        "reconstruction drops is one the SAE does not capture."
    )
    long = probe.melt(
        id_vars="layer", value_vars=["probe_accuracy", "persona_norm_mean"], var_name="measure"
    )
    line = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x="layer:Q",
            y=alt.Y("value:Q", title="accuracy / relative norm"),
            color="measure:N",
            tooltip=["layer", "measure", alt.Tooltip("value:Q", format=".3f")],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"chance": [chance]}))
        .mark_rule(strokeDash=[4, 4])
        .encode(y="chance:Q")
    )
    st.altair_chart(line + rule, width="stretch")
    at_sae = probe[probe["is_sae_layer"]]
    for r in at_sae.itertuples():
        st.markdown(
            f"**At the SAE's layer {md(r.layer)}**: the probe reaches "
            f"{r.probe_accuracy:.3f}; the reconstruction carries "
            f"{100 * r.sae_signal_fraction:.1f}% of the persona signal (probe on it "
            f"{r.probe_on_reconstruction:.3f}), the error term the rest (probe on it "
            f"{r.probe_on_error:.3f})."
        )
    st.dataframe(probe, hide_index=True)

mediation = q(effect_queries.mediation_summary, sae)
if len(mediation):
    st.subheader("Causal effects (shoggoth effects)")
    shifts = q(effect_queries.persona_shifts, sae)
    st.caption(
        "Each measured feature's largest mediated fraction: the share of a persona's "
        "shift of the answer that ablating it removes, with item-bootstrap intervals; "
        "baseline rows are random shared features, the reference for the candidates."
    )
    by_role = mediation.groupby("role")["mediated"].agg(["count", "median", "max"])
    st.dataframe(by_role)
    for f in mediation.sort_values("mediated", ascending=False).head(5).itertuples():
        feature_link(
            sae,
            int(f.feature),
            f.label,
            f" · mediates {100 * f.mediated:.1f}% "
            f"[{100 * f.ci_low:.1f}%, {100 * f.ci_high:.1f}%] of {f.persona}'s shift",
        )
    if len(shifts):
        st.caption(
            "Each persona's shift of the answer's log-probability against no persona "
            "(nats over the answer, mean over items)."
        )
        st.dataframe(shifts, hide_index=True)

grid = q(action_queries.grid_summary, sae)
if len(grid):
    st.subheader("Context × content (shoggoth grid)")
    st.caption(
        "Each persona's own answers and the neutral ones, under its prompt and under "
        "none: which features follow the persona's context, which its way of speaking, "
        "both, their interaction, or none (shared by every mask in action). FDR: "
        "estimated from null runs with every block's contexts and texts swapped."
    )
    st.dataframe(grid, hide_index=True)

st.subheader("Most active features")
for f in (
    features[features["label"] != "dead"]
    .sort_values("density", ascending=False)
    .head(5)
    .itertuples()
):
    feature_link(
        sae, f.feature, f.label, f" · density {f.density:.3f}", name=getattr(f, "name", None)
    )
st.subheader("Strongest mask-specific features")
top = (
    features[features["label"].isin(["mask-specific", "mask-family"])]
    .sort_values("set_ratio", ascending=False)
    .head(10)
)
if top.empty:
    st.write("None: no feature passed the mask-specific or mask-family rules.")
for f in top.itertuples():
    feature_link(
        sae,
        f.feature,
        f.label,
        f" · {f.top_persona or f.family_set}",
        name=getattr(f, "name", None),
    )
st.subheader("Most frequent shared features")
for f in (
    features[features["label"] == "shared"]
    .sort_values("density", ascending=False)
    .head(10)
    .itertuples()
):
    feature_link(
        sae, f.feature, f.label, f" · density {f.density:.3f}", name=getattr(f, "name", None)
    )
