"""Personas: a persona's prompts, its mask-specific and most suppressed features, and the features
nearest its persona vector."""

from __future__ import annotations

import streamlit as st

from explorer.common import choose_sae, feature_link, has_table, q
from index.search import MASK_FEATURES_SQL

sae, row = choose_sae()
st.title("Personas")
names = q("SELECT persona::VARCHAR AS persona FROM personas ORDER BY persona")["persona"].tolist()
wanted = st.query_params.get("persona")
persona = st.selectbox("persona", names, index=names.index(wanted) if wanted in names else 0)
st.query_params["persona"] = persona
meta = q("SELECT family, is_control, control_of, description FROM personas WHERE persona = ?",
         persona).iloc[0]
st.write(f"family **{meta.family}**" + (" · control" if meta.is_control else "")
         + (f" of {meta.control_of}" if meta.control_of else "")
         + (f" — {meta.description}" if meta.description else ""))
st.subheader("Prompts")
for p in q("SELECT paraphrase, prompt FROM persona_prompts WHERE persona = ? ORDER BY paraphrase",
           persona).itertuples():
    st.markdown(f"{p.paraphrase}. {p.prompt or '*(no system prompt)*'}")

left, right = st.columns(2)
with left:
    st.subheader("Mask-specific features")
    if has_table("features"):
        own = q(MASK_FEATURES_SQL, sae, persona, persona, 30)
        if own.empty:
            st.write("None: no feature passed the mask-specific or mask-family tests for it.")
        for f in own.itertuples():
            feature_link(sae, int(f.feature), f.label, f" · AUROC {f.auroc:.2f}")
        st.subheader("Most suppressed under it")
        st.caption("Live features whose mean under this persona falls furthest below the other "
                   "personas' mean (a ranking, not a significance test).")
        low = q("""SELECT fp.feature, fp.delta_vs_rest, l.label FROM feature_personas fp
                   JOIN feature_labels l USING (sae_id, feature)
                   WHERE fp.sae_id = ? AND fp.persona = ? AND fp.delta_vs_rest < 0
                   ORDER BY fp.delta_vs_rest LIMIT 15""", sae, persona)
        for f in low.itertuples():
            feature_link(sae, int(f.feature), f.label, f" · {f.delta_vs_rest:+.4f}")
    else:
        st.info("Not labelled yet: run `shoggoth label`.")
with right:
    st.subheader("Nearest the persona vector")
    if has_table("persona_vectors"):
        vec = q("SELECT norm, relative_norm, n_tokens FROM persona_vectors WHERE sae_id = ? "
                "AND persona = ?", sae, persona)
        if len(vec):
            st.caption(f"The persona's mean residual activation minus the mean over all "
                       f"non-control personas: length {vec['norm'][0]:.3f} "
                       f"({vec['relative_norm'][0]:.1%} of the mean residual), over "
                       f"{int(vec['n_tokens'][0]):,} answer tokens.")
        near = q("""SELECT pf.feature, pf.cosine, l.label FROM persona_features pf
                    LEFT JOIN feature_labels l USING (sae_id, feature)
                    WHERE pf.sae_id = ? AND pf.persona = ? ORDER BY pf.rank""", sae, persona)
        for f in near.itertuples():
            feature_link(sae, int(f.feature), f.label, f" · cos {f.cosine:.3f}")
    else:
        st.info("No persona vectors yet: run `shoggoth index`.")
