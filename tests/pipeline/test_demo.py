"""`shoggoth demo` skips what is up to date; `shoggoth explore` refuses a bad or busy port in one
line. (The full demo — train, harvest, label, probe the layers, index, serve — is what `make demo`
runs; it takes minutes, so the suite checks its decisions on a small subset of the battery.)"""

from __future__ import annotations

import dataclasses
import socket

import duckdb
from helpers import battery, build_random_sae

from shoggoth import cli
from shoggoth.pipeline.demo import RECIPES

SMALL = {"paraphrases": 2, "items_per_topic": 1}
"""A small subset of the built-in battery, so the test harvests in seconds."""


def test_demo_rebuilds_a_stale_battery_and_skips_what_is_up_to_date(
    capfd, tmp_path, minilm, monkeypatch
):
    out = tmp_path / "runs"
    recipe = dataclasses.replace(
        RECIPES["minilm"], harvest=SMALL, layers={"items_per_topic": 1, "layers": "1"}
    )
    monkeypatch.setitem(RECIPES, "minilm", recipe)
    sae = build_random_sae(
        out / recipe.sae_name, "minilm", 384, "blocks.3.hook_resid_post", d_sae=96, k=8
    )
    db = out / recipe.db_name
    # A harvest of another battery (an older built-in one, say): the demo starts again.
    args = [str(a) for a in battery(tmp_path / "b", 6)]
    assert cli.main(["harvest", "--db", str(db), "--sae-dir", str(sae), *args]) == 0
    capfd.readouterr()
    assert cli.main(["demo", "--model", "minilm", "--out", str(out), "--no-serve"]) == 0
    text, _ = capfd.readouterr()
    assert "holds another battery's harvest; rebuilding it" in text
    assert "[2/9] harvest the persona battery: 114 prompts × 12 answers" in text
    assert "[3/9] label the features: prompts as replicates" in text
    assert (
        "[4/9] measure causal effects and the composition test: skipped (MiniLM is not a "
        "causal LM)" in text
    )
    assert "[5/9] index the dictionary: examples" in text
    # The layer probe, the grid and the explanations wait for --full.
    assert (
        "[6/9] probe where the persona lives, by layer: skipped (run `shoggoth demo "
        "--full` for it)" in text
    )
    assert (
        "[7/9] the mask in action: own answers, context × content grid: skipped (MiniLM "
        "is not a causal LM)" in text
    )
    assert (
        "[8/9] explain features with SmolLM2, scored on held-out examples: skipped (the "
        "quick path" in text
    )
    assert cli.main(["demo", "--model", "minilm", "--out", str(out), "--no-serve", "--full"]) == 0
    text, _ = capfd.readouterr()
    assert "[6/9] probe where the persona lives, by layer: a linear probe" in text
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 114 * 12
    assert con.execute("SELECT list(layer ORDER BY layer) FROM layer_probe").fetchone()[0] == [1, 3]
    assert con.execute("SELECT count(*) FROM label_fdr").fetchone()[0] > 0
    con.close()
    mtime = db.stat().st_mtime_ns
    assert cli.main(["demo", "--model", "minilm", "--out", str(out), "--no-serve"]) == 0
    text, _ = capfd.readouterr()
    for step in (
        "[1/9] train the SAE on MiniLM",
        "[2/9] harvest the persona battery",
        "[3/9] label the features",
        "[5/9] index the dictionary",
    ):
        assert f"{step}: up to date" in text, text
    assert "explore: skipped (--no-serve)" in text and db.stat().st_mtime_ns == mtime


def test_explore_refuses_a_bad_or_busy_port(capfd, tmp_path, labelled_db):
    assert cli.main(["explore", "--db", str(labelled_db), "--port", "0"]) == 2
    _, err = capfd.readouterr()
    assert err.count("\n") == 1 and "--port 0" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli.main(["explore", "--db", str(labelled_db), "--port", str(port)]) == 2
        _, err = capfd.readouterr()
        assert err.count("\n") == 1 and f"--port {port}: cannot listen" in err
    assert cli.main(["demo", "--out", str(tmp_path / "f"), "--port", "70000"]) == 2
    assert not (tmp_path / "f").exists()
