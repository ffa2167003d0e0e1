"""`shoggoth explain`: the scoring on planted judges (a perfect one scores 1, a blind one 0.5,
a biased one that still ranks the classes 1),
the local SmolLM2 explainer end to end on a real database, a real OpenAI-compatible server
(`transformers serve` with the local SmolLM2 on 127.0.0.1, started here), and failures: an
unreachable or slow endpoint is one line and exit 2, a request failing mid-run is one line per
feature, no row and exit 1; never a made-up score."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import httpx
import pytest
from helpers import copy_db

from shoggoth import cli
from shoggoth.core.processes import start_child, stop_child
from shoggoth.pipeline.explanations.prompts import (
    Evidence,
    Window,
    auc_score,
    score_detection,
    score_fuzzing,
)
from shoggoth.sae.gguf import smollm2_dir

SMALL = ["--shown", "4", "--held-out", "3", "--width", "5", "--max-tokens", "16"]


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


class Oracle:
    """A judge that knows the truth: the feature fires on the word 'rain'."""

    name = "oracle"

    def __init__(self, blind: bool = False) -> None:
        self.blind, self.calls = blind, 0

    def chat(self, messages, max_tokens):
        return "rain"

    def judge_many(self, requests):
        return [self.judge(m) for m in requests]

    def judge(self, messages):
        self.calls += 1
        text = messages[-1]["content"].split("Text: ", 1)[1]
        if self.blind:
            return 1.0 if self.calls % 2 == 0 else -1.0
        if "marked" in messages[-1]["content"]:
            return 1.0 if "<<rain>>" in text else -1.0
        return 1.0 if "rain" in text else -1.0


def window(words: list[str], fire: str | None) -> Window:
    return Window(
        "item", tuple(f" {w}" for w in words), tuple(1.0 if w == fire else 0.0 for w in words)
    )


def test_scores_are_aucs_of_the_judge():
    held = [window(["the", "rain", "falls", "on", "roofs"], "rain") for _ in range(6)]
    silent = [window(["a", "dry", "sunny", "day", "here"], None) for _ in range(6)]
    ev = Evidence(1, held[:2], held, silent, [])
    det, fuzz = score_detection(Oracle(), "rain", ev), score_fuzzing(Oracle(), "rain", ev, 0)
    assert (det.value, det.n, det.hits) == (1.0, 12, (6, 6))
    assert (fuzz.value, fuzz.n) == (1.0, 12)
    blind = score_detection(Oracle(blind=True), "rain", ev)
    assert blind.value == 0.5 and blind.n == 12
    assert auc_score([1.0] * 3, []).value is None  # one class missing: no score, not 0
    # A judge biased to "no" whose margins still rank the classes: AUC 1, accuracy at chance.
    biased = auc_score([-1.0, -2.0, -1.5], [-5.0, -4.0, -6.0])
    assert biased.value == 1.0 and biased.hits == (0, 3)


def test_batched_local_judgments_equal_one_at_a_time():
    """Prompts of different lengths in left-padded batches give each prompt's own margin."""
    from shoggoth.pipeline.explanations.prompts import detection_messages
    from shoggoth.sae.llm_clients import LocalChat

    judge = LocalChat("smollm2", "cpu")
    words = "the rain falls on the old stone roofs of the quiet town at night".split()
    requests = [detection_messages("rain", window(words[: 3 + 2 * i], "rain")) for i in range(7)]
    alone = [judge.judge_many([r])[0] for r in requests]
    together = judge.judge_many(requests, batch=3)  # three batches, the last one short
    assert len(together) == 7
    assert max(abs(a - b) for a, b in zip(alone, together, strict=True)) < 1e-3
    assert len({round(m, 3) for m in alone}) > 1  # the margins differ: a real comparison


@pytest.fixture(scope="module")
def explained_db(indexed_db, tmp_path_factory):
    return copy_db(indexed_db, tmp_path_factory.mktemp("explain") / "db.duckdb")


def stored(db: Path) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM feature_explanations ORDER BY feature")
        return [dict(zip([c[0] for c in cur.description], r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def live_features(db: Path, n: int) -> list[int]:
    """The n live features with the most examples among those that some answers never fire
    and that fire in at least 4 places (so detection has windows of both kinds to judge)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [
            f
            for (f,) in con.execute(
                """
            SELECT e.feature FROM examples e
            WHERE e.feature IN (SELECT feature FROM doc_features GROUP BY feature
                                HAVING count(DISTINCT item_id) < (SELECT count(*) FROM items))
            GROUP BY e.feature HAVING count(DISTINCT (e.item_id, e.pos)) >= 4
            ORDER BY count(*) DESC, e.feature LIMIT ?""",
                [n],
            ).fetchall()
        ]
    finally:
        con.close()


def test_local_smollm2_explains_scores_and_resumes(capfd, explained_db):
    features = live_features(explained_db, 2)
    spec = ",".join(map(str, features))
    code, out, err = run(capfd, "explain", "--db", explained_db, "--features", spec, *SMALL)
    assert code == 0, err
    assert "one judgment took" in err and "requests" in err  # the plan and estimate first
    rows = stored(explained_db)
    assert [r["feature"] for r in rows] == features
    for r in rows:
        assert r["explanation"].strip() and r["explainer"].startswith("local:smollm2")
        assert 0 <= sum(r["detection_hits"]) <= r["detection_n"]
        assert 2 <= r["detection_n"] <= 6 and 0.0 <= r["detection"] <= 1.0
        assert r["n_shown"] >= 1
        assert json.loads(r["settings_json"])["held_out"] == 3
    # Shown with the feature wherever it is named.
    code, out, _ = run(capfd, "search", "feature", "--db", explained_db, "--feature", features[0])
    assert code == 0 and rows[0]["explanation"][:20] in " ".join(out.split())
    # Same settings again: nothing to do; --overwrite would redo them.
    code, _, err = run(capfd, "explain", "--db", explained_db, "--features", spec, *SMALL)
    assert code == 0 and "already explained" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`transformers serve` with the local SmolLM2 on 127.0.0.1 (dies with this process)."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    proc = start_child(
        [
            str(exe),
            "serve",
            str(smollm2_dir()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        {**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, "transformers serve exited"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        pytest.fail("transformers serve did not start within 180 s")
    yield url
    stop_child(proc)


def test_a_real_openai_compatible_server_explains(capfd, explained_db, server):
    feature = live_features(explained_db, 3)[2]
    code, _, err = run(
        capfd,
        "explain",
        "--db",
        explained_db,
        "--features",
        feature,
        "--explainer",
        f"{server}/v1",
        *SMALL,
    )
    assert code == 0, err
    row = next(r for r in stored(explained_db) if r["feature"] == feature)
    assert row["explainer"].startswith(f"{server}/v1 ") and row["scorer"] == row["explainer"]
    assert row["explanation"].strip() and row["detection_n"] >= 2


def test_unreachable_or_slow_endpoints_are_one_line(capfd, explained_db, server):
    before = len(stored(explained_db))
    dead = f"http://127.0.0.1:{free_port()}/v1"
    code, out, err = run(
        capfd,
        "explain",
        "--db",
        explained_db,
        "--explainer",
        dead,
        "--limit",
        "1",
        "--overwrite",
        *SMALL,
    )
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --explainer {dead}")
    code, _, err = run(
        capfd,
        "explain",
        "--db",
        explained_db,
        "--explainer",
        server,
        "--timeout",
        "0.001",
        "--limit",
        "1",
        "--overwrite",
        *SMALL,
    )
    assert code == 2 and "no answer within 0.001 s" in err and len(err.strip().splitlines()) == 1
    assert len(stored(explained_db)) == before


class Failing(BaseHTTPRequestHandler):
    """An endpoint that lists a model and answers, except that the second explanation it is
    asked for fails with HTTP 500 (judgments ask for at most 3 tokens, explanations more)."""

    explanations = 0

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": "planted"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body["max_tokens"] > 3:
            Failing.explanations += 1
            if Failing.explanations == 2:
                self._send(500, {"error": "planted failure"})
                return
        answer = "Yes" if body["max_tokens"] <= 3 else "words about things"
        self._send(200, {"choices": [{"message": {"content": answer}}]})


def test_a_failure_mid_run_is_one_line_per_feature_and_no_row(capfd, indexed_db, tmp_path):
    explained_db = copy_db(indexed_db, tmp_path / "fresh.duckdb")
    features = live_features(explained_db, 2)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        code, out, err = run(
            capfd,
            "explain",
            "--db",
            explained_db,
            "--features",
            ",".join(map(str, features)),
            "--explainer",
            f"http://127.0.0.1:{httpd.server_port}/v1",
            *SMALL,
        )
    finally:
        httpd.shutdown()
    failed = [line for line in err.splitlines() if line.startswith("feature ")]
    rows = {r["feature"]: r for r in stored(explained_db)}
    assert code == 1 and "1 of 2 features were not explained" in err and "rerun" in err
    assert len(failed) == 1 and failed[0].startswith(f"feature {features[1]}: ")
    assert "HTTP 500" in failed[0]
    assert features[1] not in rows  # no row, not a zero score
    assert rows[features[0]]["explanation"] == "words about things"
    assert rows[features[0]]["detection"] == 0.5  # always "yes": chance, as it should be


def test_the_default_choice_can_be_scored(explained_db):
    """Without --features: only features with room for the held-out windows and silent answers
    to judge them against, persona-labelled ones first, then the most distinctive handles."""
    from shoggoth.index.explanations.store import choose_features

    con = duckdb.connect(str(explained_db), read_only=True)
    try:
        chosen = choose_features(con, "tiny-sae", None, 50, 7)
        places = dict(
            con.execute(
                "SELECT feature, count(DISTINCT (item_id, pos)) FROM examples GROUP BY feature"
            ).fetchall()
        )
        items = dict(
            con.execute(
                "SELECT feature, count(DISTINCT item_id) FROM doc_features GROUP BY feature"
            ).fetchall()
        )
        n_items = con.execute("SELECT count(*) FROM items").fetchone()[0]
        scores = dict(con.execute("SELECT feature, best_score FROM feature_handles").fetchall())
        persona = {
            f
            for (f,) in con.execute(
                "SELECT feature FROM features WHERE label IN ('mask-specific', 'persona-concept', "
                "'mask-or-concept', 'mask-family')"
            ).fetchall()
        }
    finally:
        con.close()
    assert chosen and all(places[f] >= 7 and items[f] < n_items for f in chosen)
    eligible = [f for f in places if places[f] >= 7 and items.get(f, 0) < n_items]
    assert sorted(chosen) == sorted(eligible)
    first = [f in persona for f in chosen]
    assert first == sorted(first, reverse=True)
    rest = [scores.get(f, 0) for f in chosen if f not in persona]
    assert rest == sorted(rest, reverse=True)
