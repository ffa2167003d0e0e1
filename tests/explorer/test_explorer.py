"""The Streamlit explorer under AppTest, on a real harvested, labelled and indexed database: every
page renders, filters change the table, deep links open the right feature, a manual label is
saved and survives `shoggoth label`, the SQL page refuses file access, and a missing database
gets a page that says what to run."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import duckdb
import pytest
from helpers import copy_db
from streamlit.testing.v1 import AppTest

from shoggoth import cli

APP = str(Path(__file__).parents[2] / "explorer" / "app.py")
PAGES = [
    "views/overview.py",
    "views/features.py",
    "views/feature.py",
    "views/personas.py",
    "views/search.py",
    "views/sql.py",
    "views/map.py",
]


@pytest.fixture()
def db(indexed_db, tmp_path) -> Path:
    return copy_db(indexed_db, tmp_path / "explore.duckdb")


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
    """What a stopped explorer leaves: no connection to the file."""
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
    # As shown: values from the database are escaped for markdown and HTML.
    return html.unescape(re.sub(r"\\(.)", r"\1", "\n".join(map(str, parts))))


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(db, page):
    at = app(db, page, feature="3", persona="pirate")
    assert at.title, page
    close_store(db)


def test_overview_counts_match_the_database(db):
    con = duckdb.connect(str(db), read_only=True)
    counts = dict(con.execute("SELECT label, count(*) FROM features GROUP BY label").fetchall())
    con.close()
    at = app(db)
    table = next(
        d.value
        for d in at.dataframe
        if "label" in d.value.columns and "features" in d.value.columns
    )
    got = dict(zip(table["label"], table["features"], strict=True))
    assert {k: v for k, v in got.items() if v} == counts
    assert "Persona × label" in text_of(at)
    close_store(db)


def test_overview_shows_fdrs_notes_and_the_layer_probe(db, capfd):
    con = duckdb.connect(str(db), read_only=True)
    fdr = dict(con.execute("SELECT label, fdr FROM label_fdr").fetchall())
    con.close()
    at = app(db)
    table = next(d.value for d in at.dataframe if "estimated FDR" in d.value.columns)
    for label, rate in zip(table["label"], table["estimated FDR"], strict=True):
        assert (rate != rate and fdr[label] is None) or rate == pytest.approx(fdr[label])
    warnings = [w.value for w in at.warning]
    assert any("no mention/negation control" in w for w in warnings)  # this battery has none
    assert "No layer probe yet" in text_of(at)
    close_store(db)
    assert cli.main(["layers", "--db", str(db), "--device", "cpu"]) == 0
    capfd.readouterr()
    at = app(db)
    shown = text_of(at)
    assert "At the SAE's layer 1" in shown and "of the persona signal" in shown
    probe = next(d.value for d in at.dataframe if "probe_accuracy" in d.value.columns)
    assert list(probe["layer"]) == [0, 1, 2]
    close_store(db)


def test_filters_change_the_table(db):
    at = app(db, "views/features.py")
    full = at.dataframe[0].value
    assert len(full) == 64
    label = full["label"].value_counts().index[0]
    at.multiselect(key="f_label").set_value([label]).run()
    filtered = at.dataframe[0].value
    assert 0 < len(filtered) < len(full) and set(filtered["label"]) == {label}
    at.text_input(key="f_id").set_value("1,2,60").run()
    assert sorted(at.dataframe[0].value["feature"]) == sorted(
        f for f in (1, 2, 60) if full.set_index("feature").loc[f, "label"] == label
    )
    # Opening a feature from the table page lands on its page.
    at.multiselect(key="f_label").set_value([]).run()
    at.text_input(key="f_id").set_value("").run()
    at.number_input(key="f_open").set_value(17)
    next(b for b in at.button if b.label == "Open").click().run()
    assert at.title[0].value.startswith("Feature 17")
    close_store(db)


def test_deep_link_opens_the_feature(db):
    con = duckdb.connect(str(db), read_only=True)
    feature, label = con.execute(
        "SELECT feature, label FROM features WHERE label <> 'dead' ORDER BY density DESC LIMIT 1"
    ).fetchone()
    top = con.execute("SELECT max(value) FROM activations WHERE feature = ?", [feature]).fetchone()[
        0
    ]
    con.close()
    con = duckdb.connect(str(db), read_only=True)
    name = con.execute("SELECT name FROM feature_names WHERE feature = ?", [feature]).fetchone()[0]
    neighbour, their = con.execute(
        "SELECT n.neighbor, f.name FROM neighbors n JOIN feature_names f ON f.sae_id = n.sae_id "
        "AND f.feature = n.neighbor WHERE n.feature = ? ORDER BY n.rank LIMIT 1",
        [feature],
    ).fetchone()
    con.close()
    at = app(db, "views/feature.py", feature=str(feature))
    assert at.title[0].value == f"Feature {feature} · {label}"
    assert at.query_params["feature"] == str(feature)
    text = text_of(at)
    assert name in text  # its handle, under the title
    assert f"feature {neighbour} · {their}" in text  # and every neighbour's
    assert f"`{top:.3f}`" in text  # the strongest context comes first
    assert "Nearest features by decoder direction" in text
    assert "Mean activation per persona" in text
    close_store(db)


def test_manual_label_is_saved_and_survives_relabelling(db):
    con = duckdb.connect(str(db), read_only=True)
    feature, auto = con.execute(
        "SELECT feature, label FROM features WHERE label <> 'shared' ORDER BY feature LIMIT 1"
    ).fetchone()
    con.close()
    at = app(db, "views/feature.py", feature=str(feature))
    at.selectbox(key="a_label").set_value("shared")
    at.text_input(key="a_note").set_value("fires on every answer")
    next(b for b in at.button if b.label == "Save label").click().run()
    assert not at.exception
    assert at.title[0].value == f"Feature {feature} · shared"
    assert "fires on every answer" in text_of(at)
    close_store(db)
    assert cli.main(["label", "--db", str(db), "--min-docs", "5"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    assert (
        con.execute("SELECT label FROM features WHERE feature = ?", [feature]).fetchone()[0] == auto
    )
    assert con.execute(
        "SELECT label, manual_label FROM feature_labels WHERE feature = ?", [feature]
    ).fetchone() == ("shared", "shared")
    con.close()
    at = app(db, "views/feature.py", feature=str(feature))
    assert at.title[0].value == f"Feature {feature} · shared"
    close_store(db)


@pytest.mark.parametrize(
    "query, words",
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "refused"),
        ("COPY features TO '/tmp/leak.csv'", "refused"),
        ("DELETE FROM features", "read-only"),
        ("SET enable_external_access = true", "sql:"),
    ],
)
def test_sql_page_is_sandboxed(db, query, words):
    at = app(db, "views/sql.py")
    at.text_area[0].set_value(query)
    at.button(key="s_run").click().run()
    assert at.error and words in at.error[0].value, [e.value for e in at.error]
    close_store(db)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM features").fetchone()[0] == 64
    con.close()


def test_sql_page_runs_a_query(db):
    at = app(db, "views/sql.py")
    at.text_area[0].set_value("SELECT label, count(*) AS n FROM features GROUP BY label")
    at.button(key="s_run").click().run()
    assert not at.error and at.dataframe[0].value["n"].sum() == 64
    assert "SELECT label" in at.query_params["query"]
    close_store(db)


def test_personas_page_lists_prompts_and_vector_features(db):
    con = duckdb.connect(str(db), read_only=True)
    first = con.execute(
        "SELECT feature FROM persona_features WHERE persona = 'helper' ORDER BY rank LIMIT 1"
    ).fetchone()[0]
    con.close()
    at = app(db, "views/personas.py", persona="helper")
    text = text_of(at)
    assert "You are a helpful assistant." in text
    assert f"feature {first}" in text
    close_store(db)


def test_names_are_searchable_and_on_the_map(db):
    con = duckdb.connect(str(db), read_only=True)
    feature, name, term = con.execute(
        "SELECT feature, name, h.terms[1] FROM feature_names n JOIN feature_handles h "
        "USING (sae_id, feature) WHERE len(h.terms) > 0 ORDER BY h.best_score DESC "
        "LIMIT 1"
    ).fetchone()
    con.close()
    at = app(db, "views/search.py")
    at.text_input(key="n_text").set_value(term).run()
    assert not at.exception and f"feature {feature} · {name}" in text_of(at)
    at = app(db, "views/features.py")
    at.text_input(key="f_name").set_value(term).run()
    shown = at.dataframe[0].value
    assert (
        feature in set(shown["feature"])
        and shown["name"].str.contains(term, case=False, regex=False).all()
    )
    at = app(db, "views/map.py")
    assert "laid out by UMAP" not in text_of(at)  # 64 features: the PCA map, said so
    assert "principal components" in text_of(at)
    close_store(db)


def test_search_page_runs_text(db):
    at = app(db, "views/search.py")
    at.text_area(key="t_text").set_value("Rain is water that falls from clouds.")
    at.selectbox(key="t_persona").set_value("pirate")
    at.button(key="t_run").click().run()
    assert not at.exception and not at.error
    tokens = at.dataframe[0].value
    assert len(tokens) >= 5 and "top features" in tokens.columns
    assert "Top features over the whole text" in text_of(at)
    close_store(db)


def test_missing_database_says_what_to_run(tmp_path):
    os.environ["SHOGGOTH_DB"] = str(tmp_path / "nothing.duckdb")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "shoggoth demo" in at.warning[0].value


def test_a_link_fills_the_sql_editor_but_does_not_run_it(db):
    """A crafted link (?query=a cross join) must not start a query on page load."""
    query = "SELECT count(*) FROM activations a, activations b, activations c"
    at = app(db, "views/sql.py", query=query)
    assert at.text_area[0].value == query
    assert not at.dataframe and not at.error
    close_store(db)


def test_overview_rounds_null_counts_and_the_chart_keeps_control_names(db):
    """The null column is a mean of runs: shown with one decimal, not as 436.6667; the feature
    page's persona chart shows whole names, so two controls of one kind can be told apart."""
    at = app(db)
    table = next(d for d in at.dataframe if "null (reassigned prompts)" in d.value.columns)
    config = json.loads(table.proto.columns)
    assert config["null (reassigned prompts)"]["type_config"]["format"] == "%.1f"
    close_store(db)
    at = app(db, "views/feature.py", feature="3")
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    axes = [
        s.get("encoding", {}).get("y", {}).get("axis", {})
        for spec in specs
        for s in [spec, *spec.get("layer", [])]
    ]
    assert any(a.get("labelLimit") == 0 for a in axes), axes
    close_store(db)
