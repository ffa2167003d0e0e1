"""Feature map: the decoder directions projected to 2-D (PCA), coloured by label; click a point
to open its feature."""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BadInput
from explorer.common import choose_sae, cursor, db_path, labels_frame, open_feature, version
from index.read import Dictionary

MAX_POINTS = 20_000


@st.cache_data(show_spinner="projecting the decoder ...")
def projection(db: tuple[Any, ...], sae_id: str) -> pd.DataFrame:
    index: Any = Dictionary(db_path(), sae_id, con=cursor()).faiss_index("decoder")
    w = index.reconstruct_n(0, index.ntotal)  # unit decoder rows, as indexed
    w = w - w.mean(axis=0)
    _, _, vt = np.linalg.svd(w[np.random.default_rng(0).choice(len(w), min(len(w), 20_000),
                                                                replace=False)],
                             full_matrices=False)
    xy = w @ vt[:2].T
    return pd.DataFrame({"feature": np.arange(len(w)), "pc1": xy[:, 0], "pc2": xy[:, 1]})


sae, row = choose_sae()
st.title("Feature map")
st.caption("Each point is a feature's decoder direction, projected on the first two principal "
           "components of all directions; colour is the label. Click a point to open it.")
try:
    points = projection(version(), sae)
except BadInput as e:
    st.error(str(e))
    st.stop()
labels = labels_frame(sae)
if len(labels):
    points = points.merge(labels[["feature", "label", "top_persona"]], on="feature", how="left")
else:
    points["label"], points["top_persona"] = "unlabelled", None
hide_dead = st.checkbox("hide dead features", True, key="m_dead")
if hide_dead:
    points = points[points["label"] != "dead"]
if len(points) > MAX_POINTS:
    st.caption(f"showing a random {MAX_POINTS:,} of {len(points):,} features")
    points = points.sample(MAX_POINTS, random_state=0)
pick = alt.selection_point(name="pick", fields=["feature"], on="click")
chart = alt.Chart(points).mark_circle(size=18, opacity=0.7).encode(
    x="pc1:Q", y="pc2:Q", color="label:N",
    tooltip=["feature", "label", "top_persona"]).add_params(pick)
event = st.altair_chart(chart, on_select="rerun", key="m_chart", width="stretch")
chosen = event.selection.get("pick") if event else None
if chosen:
    open_feature(sae, int(chosen[0]["feature"]))
