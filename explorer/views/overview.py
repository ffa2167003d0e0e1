"""Overview: the SAEs, the battery, label counts, persona x label heatmap, calibration."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from explorer.common import choose_sae, db_path, feature_link, labels_frame, q
from index import read
from index.labels import LABELS

sae, row = choose_sae()
st.title("shoggoth · overview")
st.caption("Which SAE features belong to one persona (a mask), and which fire the same way "
           "whatever the persona (shared)?")

st.subheader("SAEs")
st.dataframe(q(read.sae_overview), hide_index=True)

counts = q(read.harvest_counts, sae)
c1, c2, c3, c4 = st.columns(4)
c1.metric("features", f"{row['d_sae']:,}")
c2.metric("documents", f"{counts['documents']:,}")
c3.metric("answer tokens", f"{counts['tokens']:,}")
c4.metric("activations stored", f"{counts['activations']:,}")

st.subheader("Personas")
st.dataframe(q(read.persona_table), hide_index=True)

features = labels_frame(sae)
if features.empty:
    st.info(f"No labels yet: run `shoggoth label --db {db_path()}` to label the features.")
    st.stop()

st.subheader("Labels")
count = features["label"].value_counts().reindex(LABELS, fill_value=0)
st.dataframe(pd.DataFrame({"label": count.index, "features": count.to_numpy()}),
             hide_index=True)
manual = int(features["manual_label"].notna().sum())
if manual:
    st.caption(f"{manual} features carry a manual label (shown instead of the automatic one).")

st.subheader("Persona × label")
st.caption("For each persona, how many features it is the strongest persona of, by label.")
grid = (features.dropna(subset=["argmax_persona"])
        .groupby(["argmax_persona", "label"]).size().reset_index(name="features"))
heat = alt.Chart(grid).mark_rect().encode(
    x=alt.X("label:N", sort=list(LABELS)), y=alt.Y("argmax_persona:N", title="persona"),
    color=alt.Color("features:Q", scale=alt.Scale(scheme="blues")),
    tooltip=["argmax_persona", "label", "features"])
text = heat.mark_text(fontSize=11).encode(text="features:Q", color=alt.value("black"))
st.altair_chart(heat + text, width="stretch")

st.subheader("Calibration")
calib = q(read.calibration, sae)
fake = calib[calib["run"] != "real"]["n_mask_specific"].max() if len(calib) else None
if fake is None or pd.isna(fake):
    st.write("No calibration runs stored (run `shoggoth label`).")
else:
    real = calib[calib["run"] == "real"]["n_mask_specific"].sum()
    st.write(f"Under shuffled persona labels (and with one persona's paraphrases split into "
             f"two fake personas), **{int(fake)}** features would be called mask-specific, "
             f"against **{int(real)}** with the real labels.")
if len(calib):
    st.dataframe(calib, hide_index=True)

st.subheader("Most active features")
for f in features[features["label"] != "dead"].sort_values(
        "density", ascending=False).head(5).itertuples():
    feature_link(sae, f.feature, f.label, f" · density {f.density:.3f}")
st.subheader("Strongest mask-specific features")
top = features[features["label"].isin(["mask-specific", "mask-family"])].sort_values(
    "auroc", ascending=False).head(10)
if top.empty:
    st.write("None: no feature passed the mask-specific or mask-family tests.")
for f in top.itertuples():
    feature_link(sae, f.feature, f.label, f" · {f.top_persona or f.family_set}")
st.subheader("Most frequent shared features")
for f in features[features["label"] == "shared"].sort_values(
        "density", ascending=False).head(10).itertuples():
    feature_link(sae, f.feature, f.label, f" · density {f.density:.3f}")
