"""Streamlit glue shared by the pages: the database store (st.cache_resource), one cursor per
session, the read API's named queries cached per database version (st.cache_data), the SAE picker
and links between pages. No page writes SQL."""

from __future__ import annotations

import html
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import altair as alt
import pandas as pd
import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from shoggoth.core.printing import number
from shoggoth.explorer.store import Store
from shoggoth.index.effects import queries as effect_queries
from shoggoth.index.labels import queries as label_queries
from shoggoth.index.labels.decompose import PATTERN_PARTS
from shoggoth.index.store import read
from shoggoth.index.store.connection import Connection
from shoggoth.index.store.sae_record import SaeRecord
from shoggoth.pipeline.effects.run import load_causal
from shoggoth.pipeline.effects.steer import (
    SteerConfig,
    Steering,
    SteerResult,
    require_typical,
    steer_with,
    steering_system,
)

if TYPE_CHECKING:
    from sae_lens import SAE

    from shoggoth.sae.models import Model


FEATURE_PAGE = "views/feature.py"


MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$:>])")
AUTOLINK = re.compile(r"(?<=:)(?=//)|(?i:(?<=www)(?=\.))|(?=@)")
"""Where GitHub-flavoured markdown would turn plain text into a link by itself (`http://…`,
`www.…`, `name@host`): backslash escapes do not stop it, the text is joined again before URLs
are looked for."""
WORD_JOINER = "\u2060"


def md(value: object) -> str:
    """A value from the database as text inside Streamlit markdown: HTML escaped, every
    markdown character backslash-escaped, and an invisible word joiner where a URL or an
    address would be linked by itself, on one line, so that an item id, a prompt, a token or a
    note is shown as written and never becomes an element (an image, a link, a heading)."""
    text = AUTOLINK.sub(WORD_JOINER, " ".join(str(value).split()))
    # Quotes need no escaping outside attributes; escaped, their entity's "#" would be
    # backslash-escaped below and shown as "&#x27;".
    text = html.escape(text, quote=False)
    return MARKDOWN.sub(r"\\\1", text)


def code(value: object) -> str:
    """A value (a path in a command) as inline code inside Streamlit markdown: shown as written,
    whatever backticks it holds; code is never markup and never linked."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def db_path() -> Path | None:
    """The database the explorer shows (`shoggoth explore --db` passes it as SHOGGOTH_DB)."""
    value = os.environ.get("SHOGGOTH_DB")
    return Path(value).resolve() if value else None


def db_file() -> Path:
    """`db_path()` on a page, where the app has already checked that there is one."""
    path = db_path()
    if path is None:  # (app.py stops before any page runs without one)
        st.stop()
    assert path is not None
    return path


@st.cache_resource(show_spinner=False)
def store_for(path: str) -> Store:
    return Store(Path(path))


def store() -> Store:
    return cast("Store", store_for(str(db_path())))


def cursor() -> Connection:
    """This session's connection for the current page run (opened by the run's first query;
    `end_run` closes it)."""
    con = st.session_state.get("_con")
    if con is None:
        con = store().connect()
        st.session_state["_con"] = con
    return cast("Connection", con)


def session_gone() -> Callable[[], bool]:
    """A check, safe from any thread, that this browser session has ended (its tab closed or its
    connection lost): a query it started is then cancelled instead of running on for nobody."""
    ctx = get_script_run_ctx()
    if ctx is None or not runtime.exists():  # (AppTest runs pages without a server)
        return lambda: False
    server, session_id = runtime.get_instance(), ctx.session_id
    return lambda: not server.is_active_session(session_id)


def end_run() -> None:
    """Close this session's connection: between page runs the explorer holds no lock."""
    con = st.session_state.pop("_con", None)
    if con is not None:
        store().release(con)


@st.cache_data(show_spinner=False, max_entries=512)
def _cached(version: tuple[Any, ...], module: str, name: str, args: tuple[Any, ...]) -> Any:
    # (the query by its module and name: a function is not a cache key)
    return getattr(sys.modules[module], name)(cursor(), *args)


def version(s: Store | None = None) -> tuple[Any, ...]:
    """What identifies the database's current contents: its path, the file (inode and
    modification time) and the store's generation."""
    s = s or store()
    return str(s.path), s.identity(), s.generation


def q(query: Callable[..., Any], *args: Any) -> Any:
    """The result of a named query of a stage's queries module (called with this session's
    cursor and `args`), cached until the database changes."""
    s = store()
    return _cached(version(s), query.__module__, query.__name__, tuple(args))


def page_has_table(name: str) -> bool:
    """Whether the database shown holds table `name` (read through the page's cached query)."""
    return bool(q(read.has_table, name))


def pick_sae() -> tuple[str, SaeRecord]:
    """The SAE shown (query parameter `sae`, else the first difference dictionary, which sees
    the masks, else the first), with a sidebar picker."""
    saes = q(read.saes)
    ids = saes["sae_id"].tolist()
    wanted = st.query_params.get("sae")
    kinds = saes["kind"].tolist() if "kind" in saes else []
    first = ids[kinds.index("difference")] if "difference" in kinds else ids[0]
    current = str(wanted) if wanted in ids else str(first)
    if len(ids) > 1:
        current = str(st.sidebar.selectbox("SAE", ids, index=ids.index(current)))
    st.query_params["sae"] = current
    return current, SaeRecord.from_row(saes.set_index("sae_id", drop=False).loc[current].to_dict())


def feature_link(
    sae_id: str, feature: int, label: str | None = None, extra: str = "", name: str | None = None
) -> None:
    """A link to a feature's page, with its name (handle and preferred persona) when known."""
    text = (
        f"feature {feature}"
        + (f" · {name}" if isinstance(name, str) and name else "")
        + (f" · {label}" if label else "")
        + extra
    )
    st.page_link(
        FEATURE_PAGE, label=md(text), query_params={"sae": sae_id, "feature": str(feature)}
    )


def open_feature(sae_id: str, feature: int) -> None:
    st.switch_page(FEATURE_PAGE, query_params={"sae": sae_id, "feature": str(int(feature))})


def labels_frame(sae_id: str, feature: int | None = None) -> pd.DataFrame:
    """Every feature's (or one feature's) statistics and labels; empty before `shoggoth label`."""
    return q(label_queries.labelled_features, sae_id, feature)


@st.cache_resource(show_spinner="loading the model and SAE")
def _causal_model(db: str, record: SaeRecord) -> tuple[Model, SAE]:
    return load_causal(Path(db), record, "auto")


def steer_answers(
    record: SaeRecord,
    feature: int,
    prompt: str,
    persona: str | None,
    scale: float,
    max_tokens: int,
) -> SteerResult:
    """`shoggoth steer` for the feature page: the model and SAE are loaded once per session
    server; the feature's typical activation and the persona's prompt come from the read
    API."""
    typical = require_typical(
        feature, q(effect_queries.typical_activations, record.sae_id, feature).get(feature)
    )
    system = q(read.prompts_of, persona)["prompt"].iloc[0] if persona else None
    model, sae_model = _causal_model(str(db_file()), record)
    cfg = SteerConfig(
        db=db_file(),
        feature=feature,
        prompt=prompt,
        persona=persona,
        scale=scale,
        max_tokens=max_tokens,
    )
    return steer_with(
        Steering(
            model,
            sae_model,
            record.hook,
            typical,
            steering_system(record, system),
            feature,
            record.kind,
        ),
        cfg,
    )


def decomposition_chart(
    decomposition: pd.DataFrame, parts: tuple[str, ...] = PATTERN_PARTS
) -> alt.Chart:
    """Each persona's shares, one bar per persona, stacked by part (`parts` order:
    decompose.PATTERN_PARTS for persona_decomposition, decompose.PARTS for
    persona_label_shares)."""
    order = list(parts)
    return (
        alt.Chart(decomposition)
        .mark_bar()
        .encode(
            x=alt.X("share:Q", title="share of the persona's shift"),
            y=alt.Y("persona:N", title=None),
            color=alt.Color("part:N", sort=order, title="part"),
            order=alt.Order("order:Q"),
            tooltip=[
                "persona",
                "part",
                alt.Tooltip("share:Q", format=".2f"),
                alt.Tooltip("ci_low:Q", format=".2f"),
                alt.Tooltip("ci_high:Q", format=".2f"),
            ],
        )
        .transform_calculate(order=f"indexof({order!r}, datum.part)")
    )


# --- the persona space (persona_space, persona_space_axes: `shoggoth label`, no dictionary) ---

SPACE_KINDS = {"persona": ("#4c78a8", "circle"), "control": ("#f58518", "square")}
"""How the persona space chart draws a persona and a control (colour, shape)."""
AXIS_COLOUR = "#54a24b"
"""The assistant axis's line."""
SHARE_PARTS = {
    "common": "#4c78a8",
    "own": "#e45756",
    "error": "#bab0ac",
    "off the common direction": "#f2a541",
}
"""The parts of `shares_chart`'s bars and their colours: the dictionary's common pattern, own
modulation (own_features + own_modulation) and error; without a dictionary, the share along the
common direction and the rest (remainder_share)."""
NO_SPACE = (
    "No persona space for this SAE: `shoggoth label` makes it (persona_space, "
    "persona_space_axes); this database was labelled before it did, or its harvest stored no "
    "document shifts."
)

OLD_DECOMPOSITION = (
    "This database's decomposition cuts the shift by label, as an older `shoggoth label` "
    "wrote it; run `shoggoth label` again for the cut by activation pattern (common, own "
    "features, own modulation, error)."
)


def space_axes(axes: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """persona_space_axes rows by axis (PC1…, controls, assistant); {} without any."""
    if axes.empty or "axis" not in axes:
        return {}
    return {str(r["axis"]): r for r in axes.to_dict("records")}


def pc_title(axes: pd.DataFrame, component: int) -> str:
    """An axis title of the persona space chart: the component and its share of the personas'
    variance (and, for PC1, the assistant axis's cosine with it)."""
    by_axis = space_axes(axes)
    name = f"PC{component}"
    share = number(by_axis.get(name, {}).get("variance_share"))
    if name not in by_axis:
        return f"{name} · none (too few personas)"
    title = f"{name} · {share:.0%} of the personas' variance" if share is not None else name
    cosine = number(by_axis.get("assistant", {}).get("cosine_pc1"))
    if component == 1 and cosine is not None:
        title += f" · assistant axis at cosine {cosine:.2f}"
    return title


def assistant_persona(sae_id: str, space: pd.DataFrame, axes: pd.DataFrame) -> str | None:
    """The persona or control the assistant axis starts from (its shift minus the personas' mean
    is the axis, so its point in the space is the axis's projection), as `shoggoth label`
    recorded it; None where the space has no assistant axis."""
    if space.empty or axes.empty or "axis_persona" not in axes:
        return None
    named = axes.loc[axes["axis"].astype(str) == "assistant", "axis_persona"]
    if named.empty or not isinstance(named.iloc[0], str):
        return None
    return named.iloc[0] if named.iloc[0] in set(space["persona"].astype(str)) else None


def space_points(space: pd.DataFrame, current: str | None = None) -> pd.DataFrame:
    """persona_space rows as the chart's points: kind (persona or control), PC1 and PC2 (0
    where the harvest has too few personas for a component) and whether it is `current`."""
    frame = space.copy()
    frame["persona"] = frame["persona"].astype(str)
    frame["kind"] = ["control" if bool(c) else "persona" for c in frame["is_control"]]
    for column in ("pc1", "pc2"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").fillna(0.0)
    frame["current"] = frame["persona"] == current
    keep = [
        "persona",
        "kind",
        "pc1",
        "pc2",
        "current",
        "norm",
        "common_share",
        "control_share",
        "remainder_share",
        "reproducibility",
        "reproducibility_null",
    ]
    return frame[[c for c in keep if c in frame.columns]]


def persona_space_chart(
    space: pd.DataFrame,
    axes: pd.DataFrame,
    current: str | None = None,
    assistant: str | None = None,
) -> alt.LayerChart:
    """Personas (circles) and controls (squares, another colour), each labelled, on PC1 × PC2 of
    the centred persona vectors (the origin is the personas' mean shift); `current` ringed; the
    assistant axis a line from the origin to `assistant`'s point (the axis's projection on the
    plane; PC1 is oriented along it)."""
    points = space_points(space, current)
    x_title, y_title = pc_title(axes, 1), pc_title(axes, 2)

    def xy(frame: pd.DataFrame) -> alt.Chart:
        return alt.Chart(frame).encode(
            x=alt.X("pc1:Q", title=x_title, scale=alt.Scale(zero=True, nice=True)),
            y=alt.Y("pc2:Q", title=y_title, scale=alt.Scale(zero=True, nice=True)),
        )

    kinds = list(SPACE_KINDS)
    colours = alt.Scale(domain=kinds, range=[SPACE_KINDS[k][0] for k in kinds])
    colour = alt.Color("kind:N", title=None, scale=colours)
    shape = alt.Shape(
        "kind:N",
        title=None,
        scale=alt.Scale(domain=kinds, range=[SPACE_KINDS[k][1] for k in kinds]),
    )
    tooltip = [
        "persona",
        "kind",
        alt.Tooltip("pc1:Q", format=".4f"),
        alt.Tooltip("pc2:Q", format=".4f"),
        *[
            alt.Tooltip(f"{c}:Q", format=".3f")
            for c in (
                "common_share",
                "control_share",
                "remainder_share",
                "reproducibility",
                "reproducibility_null",
            )
            if c in points.columns
        ],
    ]
    origin = xy(pd.DataFrame({"pc1": [0.0], "pc2": [0.0]})).mark_point(
        shape="cross", size=120, color="grey", filled=True
    )
    layers: list[alt.Chart] = [origin]
    end = points[points["persona"] == assistant] if assistant is not None else points.iloc[:0]
    if len(end):
        layers += assistant_axis_layers(xy, float(end.iloc[0]["pc1"]), float(end.iloc[0]["pc2"]))
    layers.append(
        xy(points[points["current"]]).mark_point(size=420, strokeWidth=2.5, color="#d62728")
    )
    layers.append(
        xy(points)
        .mark_point(filled=True, size=110, opacity=0.9)
        .encode(color=colour, shape=shape, tooltip=tooltip)
    )
    layers.append(
        xy(points)
        .mark_text(align="left", dx=9, dy=-7, fontSize=11)
        .encode(text="persona:N", color=colour)
    )
    return alt.layer(*layers).properties(height=380)


def assistant_axis_layers(
    xy: Callable[[pd.DataFrame], alt.Chart], x: float, y: float
) -> list[alt.Chart]:
    """The assistant axis: a dashed line from the origin to (x, y), labelled at its middle."""
    line = pd.DataFrame(
        {"pc1": [0.0], "pc2": [0.0], "pc1_end": [x], "pc2_end": [y], "label": ["assistant axis"]}
    )
    middle = pd.DataFrame({"pc1": [x / 2], "pc2": [y / 2], "label": ["assistant axis"]})
    return [
        xy(line)
        .mark_rule(strokeWidth=2.5, strokeDash=[6, 3], color=AXIS_COLOUR)
        .encode(x2="pc1_end:Q", y2="pc2_end:Q", tooltip=["label:N"]),
        xy(middle)
        .mark_text(color=AXIS_COLOUR, dy=-10, fontSize=11, fontStyle="italic")
        .encode(text="label:N"),
    ]


def space_caption(space: pd.DataFrame, axes: pd.DataFrame, assistant: str | None) -> str:
    """What the persona space chart shows, for its caption (markdown: names escaped)."""
    by_axis = space_axes(axes)
    shares = ", ".join(
        f"{name} {share:.0%}"
        for name in sorted(a for a in by_axis if a.startswith("PC"))
        if (share := number(by_axis[name].get("variance_share"))) is not None
    )
    text = (
        "Each persona's and control's mean shift minus the personas' mean (the cross), on the "
        "first two principal components of the personas (controls are projected, not part of "
        f"them); each component's share of the variance: {shares or 'none'}."
    )
    if not any(a == "PC2" for a in by_axis):
        text += " With fewer than three personas there is no PC2: every point sits at 0 on it."
    cosine = number(by_axis.get("assistant", {}).get("cosine_pc1"))
    if cosine is not None:
        start = f"{md(assistant)}'s" if assistant else "the assistant's"
        text += (
            f" The assistant axis ({start} shift minus the personas' mean, its projection "
            f"drawn as the dashed line) lies at cosine {cosine:.2f} with PC1; PC1 is oriented "
            "along it."
        )
    controls = number(by_axis.get("controls", {}).get("cosine_common"))
    if controls is not None:
        text += (
            " The plain controls' direction (a system prompt that names nobody) lies at "
            f"cosine {controls:.2f} with the personas' common direction."
        )
    return text


def by_pattern(decomposition: pd.DataFrame) -> bool:
    """Whether persona_decomposition rows cut the shift by activation pattern (every part of
    decompose.PATTERN_PARTS there), not by label as `shoggoth label` wrote it before (the
    decompose.PARTS now in persona_label_shares)."""
    return not decomposition.empty and set(PATTERN_PARTS) <= set(decomposition["part"])


def shares_frame(decomposition: pd.DataFrame, space: pd.DataFrame) -> pd.DataFrame:
    """Two bars per persona (not the controls): with the dictionary, its shift's common
    pattern, own modulation (own_features + own_modulation) and error (persona_decomposition);
    without, its share along the personas' common direction and the rest (persona_space). One
    row per persona, bar and part: persona, bar, row (the bar's label), part, share, ci_low,
    ci_high (no interval for the own sum)."""
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    if not decomposition.empty:
        for persona, group in decomposition.groupby("persona", sort=True):
            if not by_pattern(group):  # (an older database's cut by label: no bar made up)
                continue
            by_part = group.set_index("part")
            for part, names in (
                ("common", ["common"]),
                ("own", ["own_features", "own_modulation"]),
                ("error", ["error"]),
            ):
                found = by_part.reindex(names)
                one = len(names) == 1
                rows.append(
                    {
                        "persona": str(persona),
                        "bar": "dictionary",
                        "part": part,
                        "share": float(found["share"].sum(min_count=1)),
                        "ci_low": float(found["ci_low"].iloc[0]) if one else nan,
                        "ci_high": float(found["ci_high"].iloc[0]) if one else nan,
                    }
                )
    if not space.empty:
        for r in space[~space["is_control"].astype(bool)].to_dict("records"):
            for part, column in (
                ("common", "common_share"),
                ("off the common direction", "remainder_share"),
            ):
                rows.append(
                    {
                        "persona": str(r["persona"]),
                        "bar": "no dictionary",
                        "part": part,
                        "share": number(r.get(column)),
                        "ci_low": number(r.get(f"{column}_ci_low")),
                        "ci_high": number(r.get(f"{column}_ci_high")),
                    }
                )
    frame = pd.DataFrame(rows, columns=["persona", "bar", "part", "share", "ci_low", "ci_high"])
    frame["row"] = frame["persona"] + " · " + frame["bar"]
    return frame.sort_values(["persona", "bar"], kind="stable").reset_index(drop=True)


def shares_chart(shares: pd.DataFrame) -> alt.Chart:
    """`shares_frame`'s bars: per persona, the dictionary's bar (common / own / error) above
    the dictionary-free one (common / off the common direction), stacked by part."""
    parts = list(SHARE_PARTS)
    rows = list(dict.fromkeys(shares["row"]))
    return (
        alt.Chart(shares)
        .mark_bar()
        .encode(
            x=alt.X("share:Q", title="share of the persona's shift"),
            y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=0)),
            color=alt.Color(
                "part:N",
                title="part",
                scale=alt.Scale(domain=parts, range=[SHARE_PARTS[p] for p in parts]),
            ),
            order=alt.Order("order:Q"),
            tooltip=[
                "persona",
                "bar",
                "part",
                alt.Tooltip("share:Q", format=".3f"),
                alt.Tooltip("ci_low:Q", format=".3f"),
                alt.Tooltip("ci_high:Q", format=".3f"),
            ],
        )
        .transform_calculate(order=f"indexof({parts!r}, datum.part)")
        .properties(height=alt.Step(22))
    )


def space_line(row: dict[str, Any]) -> str:
    """One persona's or control's place in the space in words (markdown: its name escaped)."""

    def value(column: str, digits: int = 2) -> str:
        point = number(row.get(column))
        if point is None:
            return "n/a"
        low, high = number(row.get(f"{column}_ci_low")), number(row.get(f"{column}_ci_high"))
        interval = (
            f" \\[{low:.{digits}f}, {high:.{digits}f}\\]"
            if low is not None and high is not None
            else ""
        )
        return f"{point:.{digits}f}{interval}"

    null = number(row.get("reproducibility_null"))
    text = (
        f"**{md(row['persona'])}**: shift length {value('norm', 4)}; a share "
        f"{value('common_share')} along the personas' common direction, "
        f"{value('remainder_share')} off it; "
        f"{value('control_share')} along the plain controls' direction"
    )
    if number(row.get("reproducibility")) is not None:
        text += (
            f"; what lies off the common direction repeats across its wordings at cosine "
            f"{value('reproducibility')} (against other personas' "
            + (f"{null:.2f}" if null is not None else "n/a")
            + ")"
        )
    pc1 = number(row.get("pc1"))
    if pc1 is not None:
        text += f"; PC1 {value('pc1', 4)}"
    return text + "\\."
