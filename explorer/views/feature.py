"""One feature: its label and why, per-persona means with confidence intervals, top contexts with
activation shading, interval samples, histogram, logit effects, nearest features, and a manual
label that is saved to `annotations`."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from shoggoth.core.errors import BadInput
from shoggoth.core.names import neuronpedia_url
from shoggoth.core.printing import shown
from shoggoth.explorer.common import (
    end_run,
    feature_link,
    labels_frame,
    md,
    page_has_table,
    pick_sae,
    q,
    steer_answers,
    store,
)
from shoggoth.explorer.reasons import label_reasons
from shoggoth.index.action import queries as action_queries
from shoggoth.index.catalog import queries as dictionary_queries
from shoggoth.index.effects import queries as effect_queries
from shoggoth.index.labels import queries as label_queries
from shoggoth.index.labels.rules import LABELS
from shoggoth.index.store import read

sae, record = pick_sae()
try:
    feature = int(st.query_params.get("feature", 0))
except ValueError:
    feature = -1
if not 0 <= feature < record.d_sae:
    st.error(
        f"feature {md(repr(st.query_params.get('feature')))}: not a feature of {md(sae)} "
        f"(0 to {record.d_sae - 1})"
    )
    st.stop()
st.query_params["feature"] = str(feature)

stats = labels_frame(sae, feature)
info = stats.iloc[0].to_dict() if len(stats) else None
label = info["label"] if info else "unlabelled"
named = q(read.feature_name, sae, feature)
st.title(f"Feature {feature} · {md(label)}")
page = neuronpedia_url(record.neuronpedia_id, feature)
if page:
    st.markdown(
        f"[This feature on Neuronpedia]({page}) (the SAE's `{md(record.neuronpedia_id or '')}`)"
    )
if named:
    st.markdown(f"**{md(named['name'])}**")
    st.caption(
        "Handle: the tokens and two-token phrases that carry most of its activation "
        "beyond their base rate in the battery (computed by `shoggoth index`, offline), "
        "and the persona its label says it prefers."
    )
    if named.get("explanation"):

        def score(value: float | None) -> str:
            return shown(value)

        st.markdown(
            f"*{md(named['explanation'])}* — {md(named['explainer'])}; scored on "
            f"held-out examples: detection {score(named['detection'])} "
            f"(n = {md(named['detection_n'])}), fuzzing {score(named['fuzzing'])} "
            f"(n = {md(named['fuzzing_n'])}); 0.5 is chance."
        )
jump = st.number_input("go to feature", 0, int(record.d_sae) - 1, feature, key=f"go_{feature}")
if jump != feature:
    st.query_params["feature"] = str(jump)
    st.rerun()

# --- label and why ---------------------------------------------------------------------------
if info is None:
    st.info("Not labelled yet: run `shoggoth label` on this database.")
else:
    if info["manual_label"]:
        st.markdown(
            f"**Manual label: {md(info['manual_label'])}** (automatic: "
            f"{md(info['auto_label'])})" + (f" — note: {md(info['note'])}" if info["note"] else "")
        )
    for sentence in label_reasons(info, q(label_queries.label_thresholds, sae)):
        st.markdown(md(sentence))
    cols = st.columns(6)
    for col, (name, key) in zip(
        cols,
        [
            ("density", "density"),
            ("max act", "max_act"),
            ("q value", "q_value"),
            ("top / runner-up", "top_ratio"),
            ("own controls / top", "control_ratio"),
            ("shared bound", "ratio_ci_high"),
        ],
        strict=True,
    ):
        value = info.get(key)
        col.metric(name, shown(value, ".3g"))

# --- per persona -----------------------------------------------------------------------------
st.subheader("Mean activation per persona")
per = q(read.persona_means, sae, feature).copy()
per["low"], per["high"] = per["mean"] - per["half"], per["mean"] + per["half"]
st.caption(
    "Mean over documents (answers under each persona paraphrase × item, zeros "
    "included), with 95% confidence intervals (normal approximation)."
)
left, right = st.columns([3, 1])
for box, part, title in (
    (left, per[~per["is_control"]], "personas"),
    (right, per[per["is_control"]], "controls"),
):
    if part.empty:
        continue
    # labelLimit 0: the whole name, so control_mention_pirate and control_mention_poet differ
    base = alt.Chart(part).encode(
        y=alt.Y("persona:N", sort=None, title=title, axis=alt.Axis(labelLimit=0))
    )
    bars = base.mark_bar().encode(
        x=alt.X("mean:Q", title="mean activation"),
        color=alt.Color("family:N", legend=None),
        tooltip=[
            "persona",
            "family",
            alt.Tooltip("mean:Q", format=".4f"),
            alt.Tooltip("half:Q", format=".4f", title="± CI"),
        ],
    )
    errs = base.mark_errorbar().encode(x="low:Q", x2="high:Q")
    box.altair_chart(bars + errs, width="stretch")


# --- contexts --------------------------------------------------------------------------------
def shade(tokens: pd.DataFrame, fire_pos: int, top: float) -> str:
    """HTML of a context: each token's background by this feature's activation there, the
    example's token outlined."""
    out = []
    for t in tokens.itertuples():
        alpha = 0.0 if pd.isna(t.value) or top <= 0 else min(1.0, float(t.value) / top)
        border = "border:2px solid #d62728;" if t.pos == fire_pos else ""
        tip = f"{t.value:.3f}" if not pd.isna(t.value) else "0"
        out.append(
            f'<span title="{tip}" style="background:rgba(255,140,0,{alpha:.2f});'
            f'{border}padding:1px 2px;border-radius:3px">{md(t.token)}</span>'
        )
    return " ".join(out)


if page_has_table("examples"):
    st.subheader("Top activations in context")
    ctx = q(dictionary_queries.top_context_tokens, sae, feature)
    if ctx.empty:
        st.write("It never fired.")
    top_value = float(ctx["fire_value"].max()) if len(ctx) else 0.0
    for _rank, part in ctx.groupby("rank", sort=True):
        first = part.iloc[0]
        st.markdown(
            f"`{first.fire_value:.3f}` · {md(first.persona)} (prompt "
            f"{md(first.paraphrase)}) · {md(first.item_id)} &nbsp; "
            + shade(part, int(first.fire_pos), top_value),
            unsafe_allow_html=True,
        )
    st.subheader("Samples from each activation interval")
    st.caption(
        "Equal-width bins of this feature's activation range, up to 5 random examples "
        "each, highest interval first."
    )
    samples = q(dictionary_queries.interval_samples, sae, feature)
    st.dataframe(samples, hide_index=True)

hist = q(dictionary_queries.histogram, sae, feature)
if len(hist):
    st.subheader("Activation histogram (firing tokens)")
    st.altair_chart(
        alt.Chart(hist)
        .mark_bar()
        .encode(
            x=alt.X("lo:Q", bin="binned", title="activation"),
            x2="hi:Q",
            y=alt.Y("count:Q"),
            tooltip=["lo", "hi", "count"],
        ),
        width="stretch",
    )

# --- logit effects and neighbours ------------------------------------------------------------
st.subheader("Logit effects")
effects = q(dictionary_queries.feature_logit_effects, sae, feature)
if effects.empty:
    st.markdown(f"None stored: {md(record.logit_effects or 'run shoggoth index')}.")
else:
    a, b = st.columns(2)
    a.caption("promoted")
    a.dataframe(effects[effects["sign"] == "promoted"][["token", "value"]], hide_index=True)
    b.caption("suppressed")
    b.dataframe(effects[effects["sign"] == "suppressed"][["token", "value"]], hide_index=True)

for table, title in (
    ("neighbors", "Nearest features by decoder direction (FAISS)"),
    ("profile_neighbors", "Features that prefer the same personas"),
):
    near = q(dictionary_queries.feature_neighbours, sae, feature, table)
    if near.empty:
        continue
    st.subheader(title)
    pair = st.columns(2)
    for i, n in enumerate(near.itertuples()):
        with pair[i % 2]:
            feature_link(
                sae,
                int(n.neighbor),
                n.label,
                f" · cos {n.cosine:.3f}",
                name=getattr(n, "name", None),
            )

# --- context and content (the mask in action) -----------------------------------------------
grid, cells = q(action_queries.grid_feature, sae, feature)
st.subheader("Context and content: the mask in action")
if grid.empty:
    st.markdown("Not measured: run `shoggoth generate` and `shoggoth grid` (causal LMs).")
for g in grid.itertuples():
    st.markdown(
        f"**{md(g.grid_label)}** on answer set {md(g.answer_set)} against the "
        f"{md(g.neutral)} reference text · q: context "
        f"{g.context_q:.2g}, content {g.content_q:.2g}, interaction "
        f"{g.interaction_q:.2g}"
        + ("" if pd.isna(g.action_ratio_high) else f" · in-action bound {g.action_ratio_high:.2f}")
    )
if len(cells):
    st.caption(
        "Per persona, as factors (exp of the log effect) with their intervals: context "
        "= its prompt against none, on the same texts; content = its own answers against "
        "the neutral ones, in the same contexts; interaction = what the two do together. "
        "1 is no effect."
    )
    runs = cells["answer_set"] + " / " + cells["neutral"]
    long = pd.concat(
        [
            pd.DataFrame(
                {
                    "grid": runs,
                    "persona": cells["persona"],
                    "effect": e,
                    "factor": np.exp(cells[e]),
                    "low": np.exp(cells[f"{e}_low"]),
                    "high": np.exp(cells[f"{e}_high"]),
                }
            )
            for e in ("context", "content", "interaction")
        ]
    )
    base = alt.Chart(long).encode(
        y=alt.Y("persona:N", sort=None), color="effect:N", yOffset="effect:N"
    )
    st.altair_chart(
        base.mark_point(filled=True).encode(
            x=alt.X("factor:Q", scale=alt.Scale(type="log"), title="factor (log scale)"),
            tooltip=[
                "grid",
                "persona",
                "effect",
                alt.Tooltip("factor:Q", format=".2f"),
                alt.Tooltip("low:Q", format=".2f"),
                alt.Tooltip("high:Q", format=".2f"),
            ],
        )
        + base.mark_errorbar().encode(x="low:Q", x2="high:Q"),
        width="stretch",
    )
    st.dataframe(
        cells[
            [
                "answer_set",
                "neutral",
                "persona",
                "in_action",
                "neutral_text",
                "text_only",
                "baseline",
            ]
        ],
        hide_index=True,
    )

# --- causal effects and steering ------------------------------------------------------------
st.subheader("Causal effects")
effects = q(effect_queries.feature_effects, sae, feature)
exact = effects[effects["measure"] != "attribution"] if len(effects) else effects
if exact.empty:
    st.markdown(
        f"Not measured: run `shoggoth effects --db … --features {feature}` (causal LMs)."
        + (" The screen's estimates are below." if len(effects) else "")
    )
if len(exact):
    if info is not None and info.get("causal"):
        st.markdown(md(info["causal"]))
    st.caption(
        "Mediated: the share of the persona's shift of the answer (per-token log p "
        "under the persona minus under no persona) that ablating the feature at the "
        "answer tokens removes. Steer toward: the share of that shift reproduced by "
        "adding the feature's typical activation under no persona. Bars: item-bootstrap "
        "intervals; role: " + md(exact["role"].iloc[0]) + "."
    )
    chart = exact[exact["measure"].isin(["mediated", "steer_toward"])]
    base = alt.Chart(chart).encode(
        y=alt.Y("persona:N", sort=None), color=alt.Color("measure:N"), yOffset="measure:N"
    )
    st.altair_chart(
        base.mark_bar().encode(
            x=alt.X("estimate:Q", title="share of the persona's shift"),
            tooltip=[
                "persona",
                "measure",
                alt.Tooltip("estimate:Q", format=".3f"),
                alt.Tooltip("ci_low:Q", format=".3f"),
                alt.Tooltip("ci_high:Q", format=".3f"),
                "n",
            ],
        )
        + base.mark_errorbar().encode(x="ci_low:Q", x2="ci_high:Q"),
        width="stretch",
    )
    ablation = exact[exact["measure"].isin(["ablate_logprob", "ablate_kl"])]
    st.dataframe(ablation.pivot(index="persona", columns="measure", values="estimate"))
elif len(effects):
    st.dataframe(
        effects[["persona", "estimate", "n"]].rename(
            columns={"estimate": "screen estimate of the mediated share"}
        ),
        hide_index=True,
    )

with st.expander("Steer: generate with this feature clamped"):
    with st.form("steer"):
        text = st.text_area("prompt", "Tell me about your day.", key="s_prompt")
        choices = ["(none)", *q(read.persona_names)]
        persona = st.selectbox("persona", choices, key="s_persona")
        scale = st.slider(
            "scale (× the feature's typical activation; 0 turns it off)",
            0.0,
            10.0,
            4.0,
            0.5,
            key="s_scale",
        )
        tokens = st.number_input("max tokens", 1, 200, 40, key="s_tokens")
        go = st.form_submit_button("Generate", key="s_go")
    if go:
        try:
            out = steer_answers(
                record,
                feature,
                text,
                None if persona == "(none)" else persona,
                float(scale),
                int(tokens),
            )
        except BadInput as e:
            st.error(md(e))
        else:
            st.caption(
                f"clamped at {out.target:.3g} ({scale:g} × typical {out.typical:.3g}), greedy"
            )
            left, right = st.columns(2)
            left.markdown("**unsteered**")
            left.text(out.unsteered)
            right.markdown(f"**steered** (scale {scale:g})")
            right.text(out.steered)

# --- manual label ----------------------------------------------------------------------------
st.subheader("Manual label")
st.caption(
    "Saved to the `annotations` table; it takes precedence over the automatic label in "
    "`feature_labels` and survives reruns of `shoggoth label`."
)
with st.form("annotate", clear_on_submit=True):
    choice = st.selectbox("label", list(LABELS), key="a_label")
    note = st.text_input("note", key="a_note")
    author = st.text_input("author", key="a_author")
    if st.form_submit_button("Save label"):
        try:
            end_run()  # this run's reader goes first: the label is a write
            store().annotate(sae, feature, choice, note or None, author or None)
        except BadInput as e:
            st.error(md(e))
        else:
            st.session_state["saved"] = f"Saved: feature {feature} is {choice}."
            st.rerun()
saved = st.session_state.pop("saved", None)
if saved:
    st.success(saved)
history = q(read.manual_labels, sae, feature)
if len(history):
    st.dataframe(history, hide_index=True)
