"""Feature map: the features laid out in 2-D by `shoggoth index` (UMAP of the decoder
directions, or of the persona profiles), coloured by label or by the persona a feature prefers,
with its name on hover; click a point to open its feature."""

from __future__ import annotations

import altair as alt
import streamlit as st

from shoggoth.explorer.common import code, db_path, open_feature, pick_sae, q
from shoggoth.index.catalog import queries as dictionary_queries

MAX_POINTS = 20_000
MAPS = {"decoder directions": "decoder", "persona profiles": "persona_profile"}

sae, record = pick_sae()
st.title("Feature map")
c1, c2, c3 = st.columns(3)
which = c1.radio("map of", list(MAPS), horizontal=True, key="m_which")
colour = c2.radio("colour by", ["label", "preferred persona"], horizontal=True, key="m_colour")
hide_dead = c3.checkbox("hide dead features", True, key="m_dead")
points = q(dictionary_queries.feature_map, sae, MAPS[which])
if points.empty:
    st.info(
        f"No {which} map yet: run {code(f'shoggoth index --db {db_path()}')}"
        + (" after `shoggoth label`." if MAPS[which] == "persona_profile" else ".")
    )
    st.stop()
method = points["method"].iloc[0]
st.caption(
    (
        "Each point is a feature's decoder direction"
        if MAPS[which] == "decoder"
        else "Each point is a live feature's vector of per-persona mean activations"
    )
    + (
        ", laid out by UMAP (cosine) from its nearest neighbours: nearby points are "
        "similar, distances between clusters mean little."
        if method == "umap"
        else ", projected on the first two principal components."
    )
    + " Hover for its name; click to open it."
)
if hide_dead:
    points = points[points["label"] != "dead"]
points = points.assign(
    persona=points["top_persona"].fillna(points["argmax_persona"]).fillna("(none)")
)
if len(points) > MAX_POINTS:
    st.caption(f"showing a random {MAX_POINTS:,} of {len(points):,} features")
    points = points.sample(MAX_POINTS, random_state=0)
pick = alt.selection_point(name="pick", fields=["feature"], on="click")
field = "label:N" if colour == "label" else "persona:N"
chart = (
    alt.Chart(points)
    .mark_circle(size=18, opacity=0.7)
    .encode(
        x=alt.X("x:Q", axis=None),
        y=alt.Y("y:Q", axis=None),
        color=field,
        tooltip=["feature", "name", "label", "persona"],
    )
    .add_params(pick)
)
event = st.altair_chart(chart, on_select="rerun", key="m_chart", width="stretch")
chosen = event.selection.get("pick") if event else None
if chosen:
    open_feature(sae, int(chosen[0]["feature"]))
