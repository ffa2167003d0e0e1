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
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from shoggoth.explorer.store import Store
from shoggoth.index.effects import queries as effect_queries
from shoggoth.index.labels import queries as label_queries
from shoggoth.index.labels.decompose import PARTS
from shoggoth.index.store import read
from shoggoth.pipeline.effects.run import load_causal
from shoggoth.pipeline.effects.steer import (
    SteerConfig,
    Steering,
    require_typical,
    steer_with,
    steering_system,
)

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
    return store_for(str(db_path()))


def cursor() -> Any:
    """This session's connection for the current page run (opened by the run's first query;
    `end_run` closes it)."""
    con = st.session_state.get("_con")
    if con is None:
        con = store().connect()
        st.session_state["_con"] = con
    return con


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


def has_table(name: str) -> bool:
    return bool(q(read.has_table, name))


def choose_sae() -> tuple[str, dict[str, Any]]:
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
    return current, saes.set_index("sae_id").loc[current].to_dict()


def feature_link(
    sae: str, feature: int, label: str | None = None, extra: str = "", name: str | None = None
) -> None:
    """A link to a feature's page, with its name (handle and preferred persona) when known."""
    text = (
        f"feature {feature}"
        + (f" · {name}" if isinstance(name, str) and name else "")
        + (f" · {label}" if label else "")
        + extra
    )
    st.page_link(FEATURE_PAGE, label=md(text), query_params={"sae": sae, "feature": str(feature)})


def open_feature(sae: str, feature: int) -> None:
    st.switch_page(FEATURE_PAGE, query_params={"sae": sae, "feature": str(int(feature))})


def labels_frame(sae: str, feature: int | None = None) -> pd.DataFrame:
    """Every feature's (or one feature's) statistics and labels; empty before `shoggoth label`."""
    return q(label_queries.labelled_features, sae, feature)


@st.cache_resource(show_spinner="loading the model and SAE")
def _causal_model(db: str, sae: str, row: tuple[tuple[str, Any], ...]) -> tuple[Any, Any]:
    return load_causal(Path(db), sae, dict(row), "auto")


def steer_answers(
    sae: str,
    row: dict[str, Any],
    feature: int,
    prompt: str,
    persona: str | None,
    scale: float,
    max_tokens: int,
) -> dict[str, Any]:
    """`shoggoth steer` for the feature page: the model and SAE are loaded once per session
    server; the feature's typical activation and the persona's prompt come from the read
    API."""
    typical = require_typical(
        feature, q(effect_queries.typical_activations, sae, feature).get(feature)
    )
    system = q(read.prompts_of, persona)["prompt"].iloc[0] if persona else None
    model, sae_model = _causal_model(str(db_file()), sae, tuple(sorted(row.items())))
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
            row["hook"],
            typical,
            steering_system(row, system),
            feature,
            str(row.get("kind") or "residual"),
        ),
        cfg,
    )


def decomposition_chart(decomposition: pd.DataFrame) -> alt.Chart:
    """Each persona's shares, one bar per persona, stacked by part (decompose.PARTS order)."""
    order = list(PARTS)
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
