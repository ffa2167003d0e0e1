"""The persona space and the persona decomposition in the explorer: the overview's persona space
chart (personas and controls on PC1 × PC2, the assistant axis) with `space_summary` as its
caption and each persona's dictionary bar beside its dictionary-free one; the persona page's
place in the space, its bars and the features that make it the persona; pages on a database
without these tables (labelled before `shoggoth label` wrote them) render and say what makes
them; and the chart drawn by a real browser."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from helpers import copy_db
from streamlit.testing.v1 import AppTest

from shoggoth.index.labels import queries as label_queries

APP = str(Path(__file__).parents[2] / "explorer" / "app.py")
SPACE_TABLES = (
    "persona_space",
    "persona_space_axes",
    "persona_decomposition",
    "persona_label_shares",
    "persona_own_features",
)
PATTERN = {"common": 0.55, "own_features": 0.2, "own_modulation": 0.15, "error": 0.1}
LABEL_SHARES = {
    "own": 0.2,
    "family": 0.05,
    "shared": 0.4,
    "concept": 0.0,
    "other": 0.25,
    "error": 0.1,
}


@pytest.fixture()
def db(indexed_db, tmp_path) -> Path:
    return copy_db(indexed_db, tmp_path / "explore.duckdb")


def decomposed(db: Path) -> Path:
    """`db` with a decomposition of each persona's shift, its label shares and its own features
    (the tiny residual SAE's battery has no reference persona, so `label` leaves these tables
    empty), and a second component, so that the space is a plane."""
    con = duckdb.connect(str(db))
    sae = con.execute("SELECT sae_id FROM saes").fetchone()[0]
    features = [
        f
        for (f,) in con.execute(
            "SELECT feature FROM features WHERE label <> 'dead' ORDER BY feature LIMIT 8"
        ).fetchall()
    ]
    for n, persona in enumerate(("helper", "pirate")):
        for part, share in PATTERN.items():
            con.execute(
                "INSERT INTO persona_decomposition VALUES (?, ?, ?, ?, ?, ?, ?)",
                [sae, persona, part, share + n / 100, share - 0.05, share + 0.05, 30],
            )
        for part, share in LABEL_SHARES.items():
            con.execute(
                "INSERT INTO persona_label_shares VALUES (?, ?, ?, ?, ?, ?, ?)",
                [sae, persona, part, share, share - 0.05, share + 0.05, 30],
            )
        for rank, feature in enumerate(features[4 * n : 4 * n + 4], start=1):
            label = con.execute(
                "SELECT label FROM features WHERE feature = ?", [feature]
            ).fetchone()[0]
            con.execute(
                "INSERT INTO persona_own_features VALUES (?, ?, ?, ?, ?, ?, ?)",
                [sae, persona, rank, feature, 0.3 / rank * (-1) ** rank, 0.01 * rank, label],
            )
    for persona, pc2 in (("helper", 0.0004), ("pirate", -0.0003), ("control_none", 0.0009)):
        con.execute("UPDATE persona_space SET pc2 = ? WHERE persona = ?", [pc2, persona])
    con.execute(
        "INSERT INTO persona_space_axes (sae_id, axis, variance_share, cosine_pc1) "
        "VALUES (?, 'PC2', 0.25, 0.0)",
        [sae],
    )
    con.close()
    return db


def app(db: Path, page: str | None = None, **params: str) -> AppTest:
    os.environ["SHOGGOTH_DB"] = str(db)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page:
        at.query_params.update(params)
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def close_store(db: Path) -> None:
    from shoggoth.explorer.common import store_for

    store_for(str(db.resolve())).close()
    store_for.clear()


def text_of(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("title", "subheader", "markdown", "caption", "text")
        for e in at.get(kind)
    ]
    parts += [e.proto.label for e in at.get("page_link")]
    return html.unescape(re.sub(r"\\(.)", r"\1", "\n".join(map(str, parts))))


def specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def space_chart(at: AppTest) -> dict:
    """The persona space chart's spec (the layered chart on pc1 × pc2)."""
    found = [
        s
        for s in specs(at)
        if any(
            layer.get("encoding", {}).get("x", {}).get("field") == "pc1"
            for layer in s.get("layer", [])
        )
    ]
    assert len(found) == 1, [list(s) for s in specs(at)]
    return found[0]


def read(db: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    con = duckdb.connect(str(db), read_only=True)
    sae = con.execute("SELECT sae_id FROM saes").fetchone()[0]
    space = label_queries.persona_space(con, sae)
    axes = label_queries.persona_space_axes(con, sae)
    con.close()
    return space, axes, sae


def test_label_fills_the_persona_space_with_personas_and_controls(db):
    space, axes, _ = read(db)
    assert {"pirate", "helper"} <= set(space.loc[~space["is_control"], "persona"])
    assert "control_none" in set(space.loc[space["is_control"], "persona"])
    assert {"PC1", "assistant"} <= set(axes["axis"])


def test_overview_shows_the_persona_space_and_its_summary(db):
    space, axes, _ = read(db)
    summary = label_queries.space_summary(space, axes)
    at = app(db)
    shown = text_of(at)
    assert "The persona space (no dictionary)" in shown
    assert summary in shown
    cosine = axes.set_index("axis").loc["assistant", "cosine_pc1"]
    assert f"lies at cosine {cosine:.2f} with PC1; PC1 is oriented along it" in shown
    chart = space_chart(at)
    layers = chart["layer"]
    x = next(la["encoding"]["x"] for la in layers if "encoding" in la)
    assert x["title"].startswith("PC1 · 100% of the personas' variance")
    assert f"assistant axis at cosine {cosine:.2f}" in x["title"]
    # The assistant axis: a rule from the origin to control_none's point (no system turn).
    rule = next(la for la in layers if la["mark"]["type"] == "rule")
    assert rule["encoding"]["x2"]["field"] == "pc1_end"
    # Personas and controls are told apart by colour and shape.
    points = next(la for la in layers if la["mark"].get("filled") and "shape" in la["encoding"])
    assert points["encoding"]["shape"]["scale"]["range"] == ["circle", "square"]
    # Every persona's dictionary-free bar: its common share and the rest, from persona_space.
    bars = next(s for s in specs(at) if s.get("encoding", {}).get("y", {}).get("field") == "row")
    assert bars["encoding"]["y"]["sort"] == ["helper · no dictionary", "pirate · no dictionary"]
    table = next(d.value for d in at.dataframe if "reproducibility_null" in d.value.columns)
    assert list(table["persona"]) == list(space["persona"])
    assert table["common_share"].tolist() == pytest.approx(space["common_share"].tolist())
    close_store(db)


def test_overview_puts_each_dictionary_bar_beside_the_dictionary_free_one(db):
    decomposed(db)
    at = app(db)
    bars = next(s for s in specs(at) if s.get("encoding", {}).get("y", {}).get("field") == "row")
    assert bars["encoding"]["y"]["sort"] == [
        "helper · dictionary",
        "helper · no dictionary",
        "pirate · dictionary",
        "pirate · no dictionary",
    ]
    assert bars["encoding"]["color"]["scale"]["domain"] == [
        "common",
        "own",
        "error",
        "off the common direction",
    ]
    # The four-part decomposition chart is still there (decompose.PATTERN_PARTS).
    parts = [s for s in specs(at) if "transform" in s and "own_modulation" in json.dumps(s)]
    assert parts, "the decomposition chart is missing"
    y = next(la["encoding"]["y"] for la in space_chart(at)["layer"] if "encoding" in la)
    assert y["title"] == "PC2 · 25% of the personas' variance"
    close_store(db)


def test_persona_page_shows_its_place_and_the_features_that_make_it(db):
    decomposed(db)
    space, _, sae = read(db)
    con = duckdb.connect(str(db), read_only=True)
    own = con.execute(
        "SELECT rank, feature, share, modulation, label FROM persona_own_features "
        "WHERE persona = 'pirate' ORDER BY rank"
    ).df()
    names = dict(con.execute("SELECT feature, name FROM feature_names").fetchall())
    con.close()
    at = app(db, "views/personas.py", persona="pirate")
    shown = text_of(at)
    pirate = space.set_index("persona").loc["pirate"]
    assert "Where it lies in the persona space" in shown
    assert (
        f"**pirate**: shift length {pirate['norm']:.4f} [{pirate['norm_ci_low']:.4f}, "
        f"{pirate['norm_ci_high']:.4f}]; a share {pirate['common_share']:.2f}"
    ) in shown
    # This persona is ringed on the chart.
    chart = space_chart(at)
    assert any(la["mark"].get("size") == 420 for la in chart["layer"])
    # Its own features: one row each, the feature a link to its page, share and modulation.
    assert "Which features make it this persona" in shown
    links = {e.proto.query_string for e in at.get("page_link")}
    for r in own.itertuples():
        label = f"feature {r.feature}" + (f" · {names[r.feature]}" if names.get(r.feature) else "")
        assert label in shown, label
        assert f"sae={sae}&feature={r.feature}" in links, links
        assert f"{r.share:+.3f}" in shown and f"{r.modulation:+.4f}" in shown
    cells = [m.value for m in at.markdown]
    assert [c for c in cells if re.fullmatch(r"\d+", c)] == [str(r) for r in own["rank"]]
    # Its bars: the dictionary's (common / own / error) and the dictionary-free one.
    bars = next(s for s in specs(at) if s.get("encoding", {}).get("y", {}).get("field") == "row")
    assert bars["encoding"]["y"]["sort"] == ["pirate · dictionary", "pirate · no dictionary"]
    # The label breakdown, under an expander, as stored.
    table = next(
        d.value
        for d in at.dataframe
        if set(d.value.columns) >= {"part", "share"} and "family" in set(d.value["part"])
    )
    assert dict(zip(table["part"], table["share"], strict=True)) == pytest.approx(LABEL_SHARES)
    close_store(db)


def test_a_control_page_has_its_place_but_no_decomposition(db):
    decomposed(db)
    at = app(db, "views/personas.py", persona="control_none")
    shown = text_of(at)
    assert "**control_none**: shift length" in shown
    assert "A control: `shoggoth label` decomposes the personas' shifts" in shown
    close_store(db)


@pytest.mark.parametrize("dropped", [SPACE_TABLES, ("persona_space", "persona_space_axes")])
def test_pages_render_without_the_persona_tables(db, dropped):
    """A database labelled before `label` wrote them: no exception, a caption naming what makes
    them."""
    con = duckdb.connect(str(db))
    for table in dropped:
        con.execute(f"DROP TABLE {table}")
    con.close()
    at = app(db)
    assert "No persona space for this SAE: `shoggoth label` makes it" in text_of(at)
    close_store(db)
    at = app(db, "views/personas.py", persona="pirate")
    shown = text_of(at)
    assert "No persona space for this SAE" in shown
    if "persona_own_features" in dropped:
        assert "`shoggoth label` makes it (persona_own_features)" in shown
        assert "`shoggoth label` makes it (persona_decomposition)" in shown
    close_store(db)


def test_an_old_decomposition_by_label_still_renders(db):
    """persona_decomposition as `label` wrote it before it cut by activation pattern (parts by
    label): the pages render; the dictionary bar is left out, not made up."""
    con = duckdb.connect(str(db))
    sae = con.execute("SELECT sae_id FROM saes").fetchone()[0]
    for table in (
        "persona_space",
        "persona_space_axes",
        "persona_label_shares",
        "persona_own_features",
    ):
        con.execute(f"DROP TABLE {table}")
    for part, share in LABEL_SHARES.items():
        con.execute(
            "INSERT INTO persona_decomposition VALUES (?, 'pirate', ?, ?, ?, ?, 30)",
            [sae, part, share, share - 0.05, share + 0.05],
        )
    con.close()
    for page in (None, "views/personas.py"):
        at = app(db, page, persona="pirate") if page else app(db)
        made_up = [s for s in specs(at) if "dictionary" in json.dumps(s.get("encoding", {}))]
        assert not made_up, made_up
        if page:
            assert "cuts the shift by label, as an older `shoggoth label`" in text_of(at)
        close_store(db)


def chart_under(page, heading: str):
    """The first chart after a subheading, and the texts its SVG draws once they are there."""
    from playwright.sync_api import expect

    chart = page.locator(
        f"xpath=//h3[contains(., {heading!r})]/following::*[@data-testid='stVegaLiteChart'][1]"
    )
    expect(chart.locator("svg text").first).to_be_attached(timeout=60_000)
    page.wait_for_timeout(500)  # (it finishes drawing)
    box = chart.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 60, box
    return chart, chart.locator("svg text").all_text_contents()


@pytest.mark.slow
def test_the_persona_space_chart_draws_in_a_real_browser(db):
    from playwright.sync_api import expect, sync_playwright
    from test_browser import CHROMIUM, explorer

    if CHROMIUM is None:
        pytest.fail("Chromium is missing: `apt-get install chromium` (.ci/run does it)")
    decomposed(db)
    with explorer(db) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.get_by_role("heading", name="The persona space (no dictionary)")).to_be_visible(
            timeout=60_000
        )
        _, texts = chart_under(page, "The persona space (no dictionary)")
        assert {"pirate", "helper", "control_none", "assistant axis"} <= set(texts), texts
        assert any(t.startswith("PC1 · 100% of the personas' variance") for t in texts), texts
        assert any(t.startswith("PC2 · 25%") for t in texts), texts
        # (the page's run ends before the next starts: two sessions' runs at once can trip
        # the store's connect, a race of the explorer's, not of this chart)
        expect(page.get_by_role("heading", name="Most frequent shared features")).to_be_visible(
            timeout=60_000
        )
        page.wait_for_timeout(1000)
        page.goto(f"{url}/personas?persona=pirate")
        expect(
            page.get_by_role("heading", name="Which features make it this persona")
        ).to_be_visible(timeout=60_000)
        _, texts = chart_under(page, "Where it lies in the persona space")
        assert {"pirate", "control_none"} <= set(texts), texts
        _, texts = chart_under(page, "Its shift, decomposed")
        assert {"pirate · dictionary", "pirate · no dictionary"} <= set(texts), texts
        assert page.get_by_test_id("stException").count() == 0
        browser.close()
