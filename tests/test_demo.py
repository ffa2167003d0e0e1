"""`shoggoth demo` skips what is up to date; `shoggoth explore` refuses a bad or busy port in one
line. (The full demo — train, harvest the whole battery, label, index, serve — is what
`make demo` runs; it takes minutes, so the suite checks its decisions, not its length.)"""

from __future__ import annotations

import socket

import duckdb
from conftest import battery, build_random_sae

import shoggoth
from pipeline.demo import RECIPES


def test_demo_skips_every_step_that_is_up_to_date(capfd, tmp_path, minilm):
    out = tmp_path / "runs"
    recipe = RECIPES["minilm"]
    sae = build_random_sae(out / recipe.sae_name, "minilm", 384, "blocks.3.hook_resid_post",
                           d_sae=96, k=8)
    db = out / recipe.db_name
    args = [str(a) for a in battery(tmp_path / "b", 6)]
    assert shoggoth.main(["harvest", "--db", str(db), "--sae", str(sae), *args]) == 0
    assert shoggoth.main(["label", "--db", str(db), "--min-docs", "3"]) == 0
    capfd.readouterr()
    # Labelled but not indexed: the demo indexes, and nothing else.
    assert shoggoth.main(["demo", "--model", "minilm", "--out", str(out), "--no-serve"]) == 0
    text, _ = capfd.readouterr()
    assert "[1/5] train the SAE on MiniLM: up to date" in text
    assert "[2/5] harvest the persona battery: up to date" in text
    assert "[3/5] label the features: up to date" in text
    assert "[4/5] index the dictionary: examples" in text
    assert "explore: skipped (--no-serve)" in text
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM persona_vectors").fetchone()[0] == 3
    con.close()
    mtime = db.stat().st_mtime_ns
    assert shoggoth.main(["demo", "--model", "minilm", "--out", str(out), "--no-serve"]) == 0
    text, _ = capfd.readouterr()
    assert "[4/5] index the dictionary: up to date" in text and db.stat().st_mtime_ns == mtime


def test_explore_refuses_a_bad_or_busy_port(capfd, tmp_path):
    assert shoggoth.main(["explore", "--db", str(tmp_path / "x.duckdb"), "--port", "0"]) == 2
    _, err = capfd.readouterr()
    assert err.count("\n") == 1 and "--port 0" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert shoggoth.main(["explore", "--db", str(tmp_path / "x.duckdb"), "--port",
                              str(port)]) == 2
        _, err = capfd.readouterr()
        assert err.count("\n") == 1 and f"--port {port}: cannot listen" in err
    assert shoggoth.main(["demo", "--out", str(tmp_path / "f"), "--port", "70000"]) == 2
    assert not (tmp_path / "f").exists()
