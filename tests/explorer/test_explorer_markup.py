"""The explorer shows data, never markup: a database whose item ids, topics, answers (so its
tokens), persona families, descriptions, prompts and annotations are HTML and markdown payloads
is rendered page by page, and no element holds markup those values created (an image, a link, a
heading); the values are still shown, escaped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest
from helpers import battery
from streamlit.testing.v1 import AppTest

from shoggoth import cli

APP = str(Path(__file__).parents[2] / "explorer" / "app.py")
IMG = "<img src=x onerror=alert(1)>"
LINK = "[click me](http://evil.example/x)"
PICTURE = "![pic](http://evil.example/p.png)"
PAYLOADS = (IMG, LINK, PICTURE)
PERSONAS = f"""personas:
  - name: pirate
    family: "{IMG}"
    description: "{LINK} # heading"
    prompts: ["You are a pirate captain. {PICTURE}", "Act as a salty old buccaneer. {LINK}"]
  - name: helper
    family: "{LINK}"
    prompts: ["You are a helpful assistant.", "Help the user. {IMG}"]
  - name: control_none
    family: control
    is_control: true
    prompts: [""]
"""


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory, tiny_sae_dir: Path) -> tuple[Path, int]:
    """The database, and its busiest feature (which carries the hostile annotation)."""
    work = tmp_path_factory.mktemp("hostile")
    args = battery(work / "b", 12, PERSONAS)
    items = [json.loads(line) for line in (work / "b" / "items.jsonl").read_text().splitlines()]
    for n, item in enumerate(items):
        payload = PAYLOADS[n % len(PAYLOADS)]
        item.update(item_id=f"{payload} {n}", topic=payload, answer=f"{item['answer']} {payload}")
    (work / "b" / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    db = work / "db.duckdb"
    assert (
        cli.main(["harvest", "--db", str(db), "--sae-dir", str(tiny_sae_dir), *map(str, args)]) == 0
    )
    assert cli.main(["label", "--db", str(db), "--min-docs", "2"]) == 0
    assert cli.main(["index", "--db", str(db)]) == 0
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO annotations (sae_id, feature, label, note, author) "
        "SELECT sae_id, feature, ?, ?, ? FROM features ORDER BY n_docs_firing DESC "
        "LIMIT 1",
        [f"shared {IMG}", f"see {LINK} and {PICTURE}", IMG],
    )
    feature = con.execute(
        "SELECT feature FROM features ORDER BY n_docs_firing DESC LIMIT 1"
    ).fetchone()[0]
    con.close()
    return db, int(feature)


def rendered(at: AppTest) -> list[str]:
    """The text of every element that Streamlit renders as markdown."""
    kinds = (
        "title",
        "header",
        "subheader",
        "markdown",
        "caption",
        "info",
        "warning",
        "error",
        "success",
    )
    values = [str(e.value) for kind in kinds for e in at.get(kind)]
    values += [e.proto.label for e in at.get("page_link")]
    return values


@pytest.mark.parametrize(
    "page, params",
    [
        ("views/overview.py", {}),
        ("views/features.py", {}),
        ("views/feature.py", {}),
        ("views/personas.py", {"persona": "pirate"}),
        ("views/personas.py", {"persona": "helper"}),
        ("views/feature.py", {"feature": "<img src=x>"}),
    ],
)
def test_values_from_the_database_are_never_markup(hostile_db, page, params):
    hostile_db, feature = hostile_db
    os.environ["SHOGGOTH_DB"] = str(hostile_db)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.query_params.update({"feature": str(feature), **params})
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    values = rendered(at)
    text = "\n".join(values)
    for bad in ("<img", "](http", "![", "\n#"):
        assert bad not in text, (page, bad, [v for v in values if bad in v][:3])
    if page == "views/feature.py" and not params:
        assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in text  # shown, as text
        assert "see \\[click me\\]\\(http\\:\u2060//evil\\.example/x\\)" in text  # the note
    if page == "views/personas.py" and params["persona"] == "pirate":
        assert "\\!\\[pic\\]\\(http\\:\u2060//evil\\.example/p\\.png\\)" in text  # the prompt
    from shoggoth.explorer.common import store_for

    store_for(str(hostile_db.resolve())).close()
    store_for.clear()


def test_quotes_are_shown_as_written():
    from shoggoth.explorer.common import md

    for text in ("the persona's mean", 'a "quoted" prompt', "it's <b>bold</b> & more"):
        shown = md(text)
        assert "&#" not in shown and "&quot;" not in shown
    assert "&lt;b&gt;" in md("<b>")
