"""Search: run text through the model and SAE under a chosen persona and see which features fire
on which tokens; or find the features most similar to one (FAISS)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from shoggoth.core.errors import BadInput
from shoggoth.explorer.common import cursor, db_file, feature_link, md, pick_sae, q, version
from shoggoth.index.catalog.queries import by_name, similar
from shoggoth.index.store import read
from shoggoth.index.store.read import SaeView
from shoggoth.pipeline.search.run import by_text, load_runner


@st.cache_resource(show_spinner="loading the model and SAE ...")
def runner(db: tuple[Any, ...], sae_id: str) -> tuple[Any, Any]:
    return load_runner(SaeView(db_file(), sae_id, con=cursor()))


@st.cache_resource(show_spinner=False)
def decoder_index(db: tuple[Any, ...], sae_id: str) -> Any:
    return SaeView(db_file(), sae_id, con=cursor()).faiss_index("decoder")


sae, record = pick_sae()
cur = cursor()
st.title("Search")
text_tab, name_tab, similar_tab = st.tabs(["by text", "by name", "similar features"])
with text_tab:
    personas = q(read.persona_names)
    text = st.text_area(
        "text (measured as an answer)",
        st.query_params.get(
            "text", "Rain is water that falls from clouds when the droplets grow heavy."
        ),
        key="t_text",
    )
    persona = st.selectbox("under persona", ["(no system prompt)", *personas], key="t_persona")
    focus = st.number_input(
        "highlight one feature (-1: top features per token)",
        -1,
        record.d_sae - 1,
        -1,
        key="t_focus",
    )
    if st.button("Run", type="primary", key="t_run"):
        st.session_state["t_result"] = None
        try:
            d = SaeView(db_file(), sae, con=cur)
            st.session_state["t_result"] = by_text(
                d,
                text,
                None if persona.startswith("(") else persona,
                0,
                5,
                runner=runner(version(), sae),
            )
        except BadInput as e:
            st.error(md(e))
    result = st.session_state.get("t_result")
    if result:
        acts = result.activations
        if focus >= 0:
            top = float(acts[:, focus].max()) or 1.0
            spans = []
            for t, a in zip(result.tokens, acts[:, focus], strict=True):
                spans.append(
                    f'<span title="{a:.3f}" style="background:rgba(255,140,0,'
                    f'{max(0.0, a) / top:.2f});padding:1px 2px;border-radius:3px">'
                    f"{md(t['token'])}</span>"
                )
            st.markdown(
                f"feature {focus}: max {acts[:, focus].max():.3f}<br>" + " ".join(spans),
                unsafe_allow_html=True,
            )
            feature_link(sae, focus)
        else:
            st.dataframe(
                [
                    {
                        "pos": t["pos"],
                        "token": t["token"],
                        "top features": ", ".join(
                            f"{f['feature']} {f['name'] or ''} ({f['value']:.2f}, {f['label']})"
                            for f in t["features"]
                        ),
                    }
                    for t in result.tokens
                ],
                hide_index=True,
            )
        st.subheader("Top features over the whole text")
        for f in result.overall:
            feature_link(
                sae,
                f["feature"],
                f["label"],
                f" · mean {f['mean_act']:.3f} · {f['n_tokens']} tokens",
                name=f["name"],
            )
with name_tab:
    wanted = st.text_input(
        "handle, persona or explanation contains", key="n_text", placeholder="e.g. rain, pirate"
    )
    if wanted.strip():
        try:
            hits = by_name(SaeView(db_file(), sae, con=cur), wanted, 50)
        except BadInput as e:
            st.error(md(e))
        else:
            if not hits:
                st.write(f"No feature's handle or explanation contains {md(repr(wanted))}.")
            for h in hits:
                feature_link(sae, h["feature"], h["label"], name=h["name"])
with similar_tab:
    fid = st.number_input(
        "feature", 0, record.d_sae - 1, int(st.query_params.get("feature", 0)), key="s_feature"
    )
    try:
        d = SaeView(db_file(), sae, con=cur)
        found = similar(d, int(fid), 10, index=decoder_index(version(), sae))
    except BadInput as e:
        st.error(md(e))
    else:
        for n in found:
            feature_link(sae, n["feature"], n["label"], f" · cos {n['cosine']:.3f}", name=n["name"])
