"""Overview: the SAEs, the battery, label counts, persona x label heatmap, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from explorer.common import choose_sae, db_path, feature_link, has_table, labels_frame, q
from index.labels import LABELS

sae, row = choose_sae()
st.title("shoggoth · overview")
st.caption("Which SAE features belong to one persona (a mask), and which fire the same way "
           "whatever the persona (shared)?")

saes = q("SELECT sae_id, model, hook, architecture, d_in, d_sae, value_decimals, logit_effects "
         "FROM saes ORDER BY sae_id")
metrics = []
for r in saes.itertuples():
    meta = Path(q("SELECT path FROM saes WHERE sae_id = ?", r.sae_id)["path"][0]) / "shoggoth.json"
    ev = json.loads(meta.read_text()).get("evaluation", {}) if meta.is_file() else {}
    metrics.append({"explained_variance": ev.get("explained_variance"), "l0": ev.get("l0"),
                    "dead_fraction": ev.get("dead_fraction")})
st.subheader("SAEs")
st.dataframe(pd.concat([saes, pd.DataFrame(metrics)], axis=1), hide_index=True)

counts = q("SELECT count(*) AS documents, sum(n_tokens) AS tokens FROM documents WHERE sae_id = ?",
           sae)
acts = q("SELECT count(*) AS n FROM activations WHERE sae_id = ?", sae)["n"][0]
c1, c2, c3, c4 = st.columns(4)
c1.metric("features", f"{row['d_sae']:,}")
c2.metric("documents", f"{int(counts['documents'][0]):,}")
c3.metric("answer tokens", f"{int(counts['tokens'][0] or 0):,}")
c4.metric("activations stored", f"{int(acts):,}")

st.subheader("Personas")
personas = q("""SELECT p.persona::VARCHAR AS persona, p.family, p.is_control, p.control_of,
                       count(pp.paraphrase) AS prompts, p.description
                FROM personas p LEFT JOIN persona_prompts pp USING (persona)
                GROUP BY p.persona, p.family, p.is_control, p.control_of, p.description
                ORDER BY p.persona""")
st.dataframe(personas, hide_index=True)

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
if has_table("calibration"):
    calib = q("SELECT run, description, n_live, n_mask_specific, n_mask_family, n_shared "
              "FROM calibration WHERE sae_id = ? ORDER BY run", sae)
    real = calib[calib["run"] == "real"]["n_mask_specific"].sum()
    fake = calib[calib["run"] != "real"]["n_mask_specific"].max()
    if calib.empty or pd.isna(fake):
        st.write("No calibration runs stored (run `shoggoth label`).")
    else:
        st.write(f"Under shuffled persona labels (and with one persona's paraphrases split into "
                 f"two fake personas), **{int(fake)}** features would be called mask-specific, "
                 f"against **{int(real)}** with the real labels.")
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
