"""Features: every feature with its label and statistics; filter, sort, select a row to open it,
download the filtered table as CSV."""

from __future__ import annotations

import streamlit as st

from shoggoth.core.errors import BadInput
from shoggoth.core.lists import parse_numbers
from shoggoth.explorer.common import code, db_path, labels_frame, open_feature, pick_sae
from shoggoth.index.labels.rules import LABELS

sae, record = pick_sae()
st.title("Features")
features = labels_frame(sae)
if features.empty:
    st.info(f"No labels yet: run {code(f'shoggoth label --db {db_path()}')}.")
    st.stop()

personas = sorted(features["argmax_persona"].dropna().unique())
families = sorted(features["family"].dropna().unique())
c1, c2, c3, c4 = st.columns(4)
labels = c1.multiselect("label", LABELS, default=[], key="f_label", placeholder="all labels")
persona = c2.selectbox("top persona", ["(any)", *personas], key="f_persona")
family = c3.selectbox("family", ["(any)", *families], key="f_family")
feature_id = c4.text_input("feature id", key="f_id", placeholder="e.g. 42 or 1,2,3")
named = st.text_input("name contains", key="f_name", placeholder="a word of the handle, e.g. rain")
c5, c6, c7, c8 = st.columns(4)
min_density = c5.number_input(
    "min density", 0.0, 1.0, 0.0, step=0.001, format="%.4f", key="f_density"
)
min_ratio = c6.number_input("min top / runner-up", 0.0, 1000.0, 0.0, key="f_ratio")
max_q = c7.number_input("max q value", 0.0, 1.0, 1.0, step=0.01, key="f_q")
sort = c8.selectbox(
    "sort by",
    [
        "feature",
        "density",
        "top_ratio",
        "q_value",
        "set_ratio",
        "control_ratio",
        "ratio_ci_high",
        "max_act",
    ],
    key="f_sort",
)

shown = features
if labels:
    shown = shown[shown["label"].isin(labels)]
if persona != "(any)":
    shown = shown[(shown["argmax_persona"] == persona) | (shown["top_persona"] == persona)]
if family != "(any)":
    shown = shown[shown["family"] == family]
if feature_id.strip():
    try:
        ids = parse_numbers(feature_id, "feature id")
    except BadInput as e:
        st.error(str(e))
        st.stop()
    shown = shown[shown["feature"].isin(ids)]
if named.strip() and "name" in shown.columns:
    shown = shown[shown["name"].fillna("").str.contains(named.strip(), case=False, regex=False)]
shown = shown[
    (shown["density"].fillna(0) >= min_density)
    & (shown["top_ratio"].fillna(0) >= min_ratio)
    & (shown["q_value"].fillna(1) <= max_q)
]
shown = shown.sort_values(
    sort,
    ascending=sort in ("feature", "q_value", "control_ratio", "ratio_ci_high"),
    na_position="last",
)

columns = [
    "feature",
    *(["name"] if "name" in shown.columns else []),
    "label",
    "top_persona",
    "argmax_persona",
    "family",
    "family_set",
    "battery_family",
    "density",
    "n_docs_firing",
    "q_value",
    "top_ratio",
    "paraphrase_margin",
    "set_ratio",
    "control_ratio",
    "no_mask_ratio",
    "ratio_ci_high",
    "shared_power",
    "mean_act",
    "max_act",
    "manual_label",
    "note",
    *[c for c in ("explanation", "detection", "fuzzing") if c in shown.columns],
]
st.caption(f"{len(shown):,} of {len(features):,} features · select a row to open it")
event = st.dataframe(
    shown[columns],
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key="f_table",
    height=420,
)
st.download_button(
    "Download CSV",
    shown[columns].to_csv(index=False),
    file_name=f"{sae}-features.csv",
    mime="text/csv",
)
picked = event.selection.rows if event is not None and hasattr(event, "selection") else []
if picked:
    open_feature(sae, int(shown.iloc[picked[0]]["feature"]))
with st.form("open"):
    typed = st.number_input("open feature", 0, record.d_sae - 1, 0, key="f_open")
    if st.form_submit_button("Open"):
        open_feature(sae, int(typed))
