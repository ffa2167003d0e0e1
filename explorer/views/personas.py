"""Personas: a persona's prompts, its place in the persona space, its shift decomposed and the
features that make it the persona, its mask-specific and most suppressed features, and the
features nearest its persona vector."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from shoggoth.explorer.common import (
    NO_SPACE,
    OLD_DECOMPOSITION,
    assistant_persona,
    by_pattern,
    decomposition_chart,
    feature_link,
    md,
    page_has_table,
    persona_space_chart,
    pick_sae,
    q,
    shares_chart,
    shares_frame,
    space_caption,
    space_line,
)
from shoggoth.index.action import queries as action_queries
from shoggoth.index.catalog import queries as dictionary_queries
from shoggoth.index.effects import queries as effects_queries
from shoggoth.index.labels import queries as label_queries
from shoggoth.index.labels.decompose import PARTS
from shoggoth.index.store import read

sae, record = pick_sae()
st.title("Personas")
names = q(read.persona_names)
wanted = st.query_params.get("persona")
persona = st.selectbox("persona", names, index=names.index(wanted) if wanted in names else 0)
st.query_params["persona"] = persona
meta = q(read.persona_table).set_index("persona").loc[persona]
st.markdown(
    f"family **{md(meta.family)}**"
    + (" · control" if meta.is_control else "")
    + (f" of {md(meta.control_of)}" if meta.control_of else "")
    + (f" — {md(meta.description)}" if meta.description else "")
)
st.subheader("Prompts")
for p in q(read.prompts_of, persona).itertuples():
    st.markdown(f"{md(p.paraphrase)}\\. {md(p.prompt) if p.prompt else '*(no system prompt)*'}")

st.subheader("Where it lies in the persona space")
space = q(label_queries.persona_space, sae)
axes = q(label_queries.persona_space_axes, sae)
here = space[space["persona"] == persona] if len(space) else space
if space.empty:
    st.caption(NO_SPACE)
else:
    summary = label_queries.space_summary(space, axes)
    if summary:
        st.caption(md(summary))
    if len(here):
        st.markdown(space_line(here.iloc[0].to_dict()))
    else:
        st.caption(f"{md(persona)} is not in the space (no document shifts of it).")
    assistant = assistant_persona(sae, space, axes)
    st.altair_chart(
        persona_space_chart(space, axes, current=persona, assistant=assistant), width="stretch"
    )
    st.caption(space_caption(space, axes, assistant) + " The ringed point is this persona.")

st.subheader("Its shift, decomposed")
mine = q(label_queries.persona_decomposition, sae, persona)
shares = shares_frame(mine, here)
if by_pattern(mine):
    st.text(label_queries.answers(mine)[persona])
if len(shares):
    st.altair_chart(shares_chart(shares), width="stretch")
    st.caption(
        "Its shift two ways. With the dictionary: the pattern every mask shares (common), "
        "its own modulation (own_features + own_modulation) and what the dictionary does not "
        "reconstruct (error). Without it, from the harvest's shifts alone: its share along "
        "the personas' common direction and what lies off it."
    )
if len(mine) and not by_pattern(mine):
    st.altair_chart(decomposition_chart(mine, PARTS), width="stretch")
    st.caption(OLD_DECOMPOSITION)
elif len(mine):
    st.altair_chart(decomposition_chart(mine), width="stretch")
    st.caption(
        "The persona's mean answer-token shift against the reference, cut by activation "
        "pattern (the common pattern, its own modulation in its own features and in the "
        "rest, the error), each share with its item-bootstrap interval."
    )
elif bool(meta.is_control):
    st.caption("A control: `shoggoth label` decomposes the personas' shifts, not the controls'.")
elif not page_has_table("persona_decomposition"):
    st.caption(
        "No decomposition in this database: `shoggoth label` makes it (persona_decomposition)."
    )
else:
    st.caption(
        "No decomposition of its shift for this SAE (the label run's notes on the overview "
        "say why: a residual SAE's needs the reference persona in the battery)."
    )

st.subheader("Which features make it this persona")
if not page_has_table("persona_own_features"):
    st.caption(
        "No list of its own features in this database: `shoggoth label` makes it "
        "(persona_own_features)."
    )
else:
    own_features = q(label_queries.persona_own_features, sae, persona)
    if own_features.empty:
        st.caption(
            "None stored: `shoggoth label` lists them where it decomposes the persona's shift "
            "(not for a control, nor for a residual SAE without the reference persona)."
        )
    else:
        st.caption(
            "The features whose own modulation (the persona's mean activation minus the mean "
            "over the personas) carries most of its shift: share ⟨v, m_f d_f⟩ / |v|² "
            "(negative: it pulls against the shift), modulation m_f, largest |share| first."
        )
        named = q(read.names, sae, tuple(int(f) for f in own_features["feature"]))
        widths = [0.5, 5, 1.2, 1.2, 2]
        for cell, head in zip(
            st.columns(widths), ("rank", "feature", "share", "modulation", "label"), strict=True
        ):
            cell.markdown(f"**{head}**")
        for f in own_features.itertuples():
            rank, link, share, modulation, label = st.columns(widths)
            rank.markdown(md(int(f.rank)))
            with link:
                feature_link(sae, int(f.feature), name=named.get(int(f.feature)))
            share.markdown(md(f"{f.share:+.3f}"))
            modulation.markdown(md(f"{f.modulation:+.4f}"))
            label.markdown(md(f.label or ""))
by_label = q(label_queries.persona_label_shares, sae, persona)
if len(by_label):
    with st.expander("Its shift by label"):
        st.altair_chart(
            decomposition_chart(by_label, PARTS).properties(height=150), width="stretch"
        )
        st.dataframe(by_label.drop(columns=["persona"]), hide_index=True)
        st.caption(
            "The same shift cut by the features' labels: mask-specific to it (own), "
            "mask-family with it (family), shared by every mask, its concept, every other "
            "feature, and the error (persona_label_shares)."
        )

composed = q(effects_queries.persona_composition, sae, persona)
if len(composed):
    st.subheader("The composition test")
    st.text(effects_queries.composition_answer(composed))
    st.dataframe(composed.drop(columns=["persona"]), hide_index=True)
    st.caption(
        "Steer: a part of the persona's shift, in the dictionary's features, added to the "
        "reference document at the hook on the answer's tokens; the share of the "
        "persona's effect on the answer's log-probabilities it reproduces. Ablate: the "
        "part removed from the persona's own document; the share of the effect it takes "
        "away. Item-bootstrap intervals (`shoggoth effects`)."
    )

left, right = st.columns(2)
with left:
    st.subheader("Its own features")
    st.caption(
        "mask-specific, persona-concept (also fires when it is only mentioned or "
        "negated), mask-or-concept, then the families it belongs to"
    )
    if page_has_table("features"):
        own = q(label_queries.mask_features, sae, persona, 30)
        if own.empty:
            st.write("None: no set of personas including it stands apart for any feature.")
        for f in own.itertuples():
            feature_link(
                sae,
                int(f.feature),
                f.label,
                f" · {f.set_ratio:.1f}× the others",
                name=getattr(f, "name", None),
            )
        st.subheader("Most suppressed under it")
        st.caption(
            "Live features whose mean under this persona falls furthest below the other "
            "personas' mean (a ranking, not a significance test)."
        )
        low = q(dictionary_queries.suppressed_features, sae, persona, 15)
        for f in low.itertuples():
            feature_link(
                sae,
                int(f.feature),
                f.label,
                f" · {f.delta_vs_rest:+.4f}",
                name=getattr(f, "name", None),
            )
    else:
        st.info("Not labelled yet: run `shoggoth label`.")
with right:
    st.subheader("Nearest the persona vector")
    if page_has_table("persona_vectors"):
        vec = q(dictionary_queries.persona_vector, sae, persona)
        if len(vec):
            st.caption(
                f"The persona's mean residual activation minus the mean over all "
                f"non-control personas: length {vec['norm'][0]:.3f} "
                f"({vec['relative_norm'][0]:.1%} of the mean residual), over "
                f"{int(vec['n_tokens'][0]):,} answer tokens."
            )
        near = q(dictionary_queries.persona_vector_features, sae, persona)
        for f in near.itertuples():
            feature_link(
                sae,
                int(f.feature),
                f.label,
                f" · cos {f.cosine:.3f}",
                name=getattr(f, "name", None),
            )
    else:
        st.info("No persona vectors yet: run `shoggoth index`.")

st.subheader("The mask in action: its own answers")
sets = q(action_queries.answer_sets)
if sets.empty:
    st.info("No generated answers yet: run `shoggoth generate` and `shoggoth grid`.")
else:
    name = st.selectbox("answer set", list(sets["answer_set"]), key="answer_set")
    meta = sets.set_index("answer_set").loc[name]
    how = "greedy" if meta.temperature == 0 else f"sampled at T={meta.temperature:g}"
    st.caption(
        f"Written by {md(meta.model)}, {how}, at most {int(meta.max_tokens)} tokens, "
        "under each of this persona's prompts; beside each, the battery's neutral answer "
        "to the same question."
    )
    answers = q(action_queries.persona_answers, name, persona)
    if answers.empty:
        st.write("This set holds no answer of this persona.")
    for a in answers.head(12).itertuples():
        st.markdown(f"**{md(a.item_id)}** (prompt {md(a.paraphrase)}) · {md(a.question)}")
        left, right = st.columns(2)
        left.caption("neutral (the battery's)")
        left.text(a.neutral)
        right.caption(f"its own ({md(a.stop_reason)})")
        right.text(a.own or "(empty)")
    if len(answers) > 12:
        st.caption(f"First 12 of {len(answers)} answers.")
    st.subheader("Features its own words change")
    st.caption(
        "Content effect under this persona: the factor by which the feature's activation "
        "on its own answers exceeds that on the reference answers (the battery's, or the "
        "model's own under no persona), averaged over its prompt and no persona as "
        "contexts; only features whose interval excludes 1, strongest first."
    )
    runs = q(action_queries.grid_runs, sae)
    runs = runs[runs["answer_set"] == name] if len(runs) else runs
    neutral = (
        st.radio(
            "reference text", list(runs["neutral"]), horizontal=True, key="neutral", format_func=md
        )
        if len(runs)
        else None
    )
    moved = (
        q(action_queries.persona_content_features, sae, name, neutral, persona, 20)
        if neutral
        else pd.DataFrame()
    )
    if moved.empty:
        st.write("None: run `shoggoth grid`, or no feature's interval excludes 1.")
    for f in moved.itertuples():
        feature_link(
            sae,
            int(f.feature),
            f.grid_label,
            f" · ×{np.exp(f.content):.2f} [{np.exp(f.content_low):.2f}, "
            f"{np.exp(f.content_high):.2f}]" + (f" · {f.label}" if f.label else ""),
            name=getattr(f, "name", None),
        )
