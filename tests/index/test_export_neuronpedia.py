"""`shoggoth export --neuronpedia`: an indexed database in Neuronpedia's bulk-import layout, every
row checked against the field lists of neuronpedia's own dataclasses and its values against the
database; `--neuronpedia-url` against a stub of Neuronpedia's upload-batch route on 127.0.0.1
that checks each request as the route's schema does (no other network); bad input, a refusal
and an interruption write nothing or leave the last export."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import numpy as np
import pytest
from helpers import copy_db
from test_hostile_databases import SECRET, corpus, outside, run_one

import shoggoth.index.store.neuronpedia as np_export
import shoggoth.index.store.neuronpedia_upload as np_upload
from shoggoth import cli
from shoggoth.core.errors import BadInput

# The field lists of neuronpedia's dataclasses, in their order, copied from
# hijohnnylin/neuronpedia at commit ebb8426fc550ad5d1f76d52c271a624af3c08a57,
# utils/neuronpedia-utils/neuronpedia_utils/db_models/<file>.
FEATURE_FIELDS = [  # feature.py
    "modelId",
    "layer",
    "index",
    "creatorId",
    "createdAt",
    "maxActApprox",
    "hasVector",
    "vector",
    "vectorLabel",
    "vectorDefaultSteerStrength",
    "hookName",
    "topkCosSimIndices",
    "topkCosSimValues",
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_pearson",
    "correlated_neurons_l1",
    "correlated_features_indices",
    "correlated_features_pearson",
    "correlated_features_l1",
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
    "decoder_weights_dist",
    "sourceSetName",
]
ACTIVATION_FIELDS = [  # activation.py
    "id",
    "tokens",
    "index",
    "layer",
    "modelId",
    "maxValue",
    "maxValueTokenIndex",
    "minValue",
    "values",
    "creatorId",
    "dataSource",
    "dataIndex",
    "dfaValues",
    "dfaTargetIndex",
    "dfaMaxValue",
    "createdAt",
    "lossValues",
    "logitContributions",
    "binMin",
    "binMax",
    "binContains",
    "qualifyingTokenIndex",
    "zIndices",
    "zValues",
]
EXPLANATION_FIELDS = [  # explanation.py
    "id",
    "modelId",
    "layer",
    "index",
    "description",
    "authorId",
    "embedding",
    "triggeredById",
    "typeName",
    "explanationModelName",
    "notes",
    "createdAt",
]
MODEL_FIELDS = [  # model.py
    "id",
    "instruct",
    "creatorId",
    "displayNameShort",
    "displayName",
    "tlensId",
    "dimension",
    "visibility",
    "defaultSourceSetName",
    "defaultSourceId",
    "inferenceEnabled",
    "layers",
    "neuronsPerLayer",
    "createdAt",
    "owner",
    "updatedAt",
    "website",
]
SOURCE_FIELDS = [  # source.py
    "id",
    "modelId",
    "setName",
    "creatorId",
    "hasDashboards",
    "inferenceEnabled",
    "inferenceHosts",
    "saelensConfig",
    "saelensRelease",
    "saelensSaeId",
    "hfRepoId",
    "hfFolderId",
    "visibility",
    "defaultOfModelId",
    "hasUmap",
    "hasUmapLogSparsity",
    "hasUmapClusters",
    "num_prompts",
    "num_tokens_in_prompt",
    "dataset",
    "notes",
    "createdAt",
]
SOURCESET_FIELDS = [  # source_set.py
    "modelId",
    "name",
    "creatorId",
    "hasDashboards",
    "visibility",
    "description",
    "type",
    "creatorName",
    "urls",
    "creatorEmail",
    "releaseName",
    "defaultOfModelId",
    "defaultRange",
    "defaultShowBreaks",
    "showDfa",
    "showCorrelated",
    "showHeadAttribution",
    "showUmap",
    "createdAt",
]
RELEASE_FIELDS = [  # source_release.py
    "name",
    "description",
    "creatorName",
    "creatorId",
    "visibility",
    "isNewUi",
    "featured",
    "descriptionShort",
    "urls",
    "creatorEmail",
    "creatorNameShort",
    "defaultSourceSetName",
    "defaultSourceId",
    "defaultUmapSourceIds",
    "createdAt",
]
# Not a dataclass there: the ExplanationType model of apps/webapp/prisma/schema.prisma.
EXPLANATION_TYPE_FIELDS = [
    "name",
    "displayName",
    "description",
    "featured",
    "isAttention",
    "explainerModelSettingsId",
    "settings",
    "url",
    "creatorName",
    "creatorId",
    "createdAt",
    "updatedAt",
]

NP_ID = "gpt2-small/8-res-jb"
BATCH = 5
"""FEATURES_PER_BATCH in these tests, so that the fixture's fired features span batches."""
KEY = "np-test-key-123"


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def read_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def batch_files(folder: Path) -> list[str]:
    return sorted(
        (p.name for p in folder.iterdir()),
        key=lambda n: int(re.fullmatch(r"batch-(\d+)\.jsonl\.gz", n)[1]),
    )


def prepared_db(indexed_db: Path, target: Path) -> Path:
    """A copy of the indexed database with a Neuronpedia id, a mask-specific feature with an
    FDR, a manual label and one scored explanation."""
    db = copy_db(indexed_db, target)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE saes SET neuronpedia_id = ?", [NP_ID])
        ((sae,),) = con.execute("SELECT sae_id FROM saes").fetchall()
        first, second, third = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT feature FROM activations ORDER BY feature LIMIT 3"
            ).fetchall()
        ]
        con.execute(
            "UPDATE features SET label = 'mask-specific', top_persona = 'pirate' WHERE feature = ?",
            [first],
        )
        con.execute(
            "INSERT OR REPLACE INTO label_fdr VALUES (?, 'mask-specific', 1, 0.03, 0, 0.03)", [sae]
        )
        con.execute(
            "INSERT INTO annotations (sae_id, feature, label, note, author) VALUES "
            "(?, ?, 'shared', 'looked at it', 'me')",
            [sae, second],
        )
        con.execute(
            "INSERT INTO feature_explanations VALUES (?, ?, 'nautical talk', "
            "'local:smollm2', 'local:smollm2', 0.81, 40, [17, 16], 0.7, 40, [15, 13], 6, "
            "'{}', now())",
            [sae, third],
        )
    return db


@pytest.fixture(scope="module")
def exported(indexed_db, tmp_path_factory):
    """The prepared database exported with batches of `BATCH` features."""
    root = tmp_path_factory.mktemp("neuronpedia")
    db = prepared_db(indexed_db, root / "db.duckdb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(np_export, "FEATURES_PER_BATCH", BATCH)
        assert cli.main(["export", "--db", str(db), "--neuronpedia", str(root / "np")]) == 0
    return db, root / "np"


def database(db: Path) -> dict:
    """What the export should hold, read from the database with plain DuckDB."""
    with duckdb.connect(str(db), read_only=True) as con:
        ((sae, d_in, template),) = con.execute("SELECT sae_id, d_in, template FROM saes").fetchall()
        fired = dict(
            con.execute("SELECT feature, count(*) FROM activations GROUP BY feature").fetchall()
        )
        largest = dict(
            con.execute("SELECT feature, max(value) FROM activations GROUP BY feature").fetchall()
        )
        measured = con.execute("SELECT sum(n_tokens) FROM documents").fetchone()[0]
        tokens: dict[str, list[str]] = {}
        for item, token in con.execute(
            "SELECT item_id::VARCHAR, token FROM tokens ORDER BY item_id, pos"
        ).fetchall():
            tokens.setdefault(item, []).append(token)
        acts: dict[tuple, dict[int, float]] = {}
        for p, k, i, pos, f, v in con.execute(
            "SELECT persona::VARCHAR, paraphrase, item_id::VARCHAR, pos, feature, value "
            "FROM activations"
        ).fetchall():
            acts.setdefault((f, p, k, i), {})[pos] = v
        examples = con.execute(
            "SELECT feature, kind, rank, persona, paraphrase, item_id, pos, "
            "value, bin_lo, bin_hi FROM examples"
        ).fetchall()
        logits = {}
        for f, sign, words, values in con.execute(
            "SELECT feature, sign, list(token ORDER BY rank), list(value ORDER BY rank) "
            "FROM logit_effects GROUP BY ALL"
        ).fetchall():
            logits[(f, sign)] = (words, values)
        neighbours = {
            f: (n, c)
            for f, n, c in con.execute(
                "SELECT feature, list(neighbor ORDER BY rank), list(cosine ORDER BY rank) "
                "FROM neighbors GROUP BY feature"
            ).fetchall()
        }
        histograms = {
            f: c
            for f, c in con.execute(
                "SELECT feature, list(count ORDER BY bin) FROM feature_histograms GROUP BY feature"
            ).fetchall()
        }
        labels = dict(
            con.execute(
                "SELECT feature, coalesce(a.label, f.label) FROM features f "
                "LEFT JOIN annotations a USING (sae_id, feature)"
            ).fetchall()
        )
        explained = dict(
            con.execute("SELECT feature, explanation FROM feature_explanations").fetchall()
        )
    return {
        "sae": sae,
        "d_in": d_in,
        "template": template,
        "fired": fired,
        "largest": largest,
        "measured": measured,
        "tokens": tokens,
        "acts": acts,
        "examples": examples,
        "logits": logits,
        "neighbours": neighbours,
        "histograms": histograms,
        "labels": labels,
        "explained": explained,
    }


def same32(a: float, b: float) -> bool:
    return np.float32(a) == np.float32(b)


@pytest.mark.slow
def test_layout_and_every_row_has_neuronpedias_fields(exported):
    _, out = exported
    source = out / "gpt2-small" / "8-res-jb"
    assert sorted(p.name for p in out.iterdir()) == ["gpt2-small", "shoggoth-neuronpedia.json"]
    assert sorted(p.name for p in source.iterdir()) == [
        "activations",
        "explanation_type.jsonl",
        "explanations",
        "features",
        "model.jsonl",
        "release.jsonl",
        "source.jsonl",
        "sourceset.jsonl",
    ]
    for name, fields in (
        ("model.jsonl", MODEL_FIELDS),
        ("source.jsonl", SOURCE_FIELDS),
        ("sourceset.jsonl", SOURCESET_FIELDS),
        ("release.jsonl", RELEASE_FIELDS),
    ):
        rows = [json.loads(line) for line in (source / name).read_text().splitlines()]
        assert len(rows) == 1 and list(rows[0]) == fields, name
    types = [
        json.loads(line) for line in (source / "explanation_type.jsonl").read_text().splitlines()
    ]
    assert [list(t) for t in types] == [EXPLANATION_TYPE_FIELDS] * 2
    assert {t["name"] for t in types} == {"shoggoth-label", "shoggoth-explain"}
    features = batch_files(source / "features")
    # batch-0 … batch-N−1, gzip, the same batch numbers in all three folders
    assert features == [f"batch-{n}.jsonl.gz" for n in range(len(features))]
    assert len(features) > 1
    assert set(batch_files(source / "activations")) <= set(features)
    assert set(batch_files(source / "explanations")) <= set(features)
    for sub, fields in (
        ("features", FEATURE_FIELDS),
        ("activations", ACTIVATION_FIELDS),
        ("explanations", EXPLANATION_FIELDS),
    ):
        for name in batch_files(source / sub):
            assert (source / sub / name).read_bytes()[:2] == b"\x1f\x8b"  # gzip
            rows = read_gz(source / sub / name)
            assert rows and all(list(r) == fields for r in rows), (sub, name)
    for n, name in enumerate(features):
        indexes = [int(r["index"]) for r in read_gz(source / "features" / name)]
        assert indexes == sorted(indexes)
        assert len(indexes) == BATCH or n == len(features) - 1
        for sub in ("activations", "explanations"):
            if (source / sub / name).exists():
                assert {int(r["index"]) for r in read_gz(source / sub / name)} <= set(indexes)
    manifest = json.loads((out / "shoggoth-neuronpedia.json").read_text())
    assert manifest["modelId"] == "gpt2-small" and manifest["layer"] == "8-res-jb"
    assert manifest["batches"] == len(features)


@pytest.mark.slow
def test_values_are_the_databases(exported):
    db, out = exported
    want = database(db)
    source = out / "gpt2-small" / "8-res-jb"
    features = [
        r for n in batch_files(source / "features") for r in read_gz(source / "features" / n)
    ]
    acts = [
        r for n in batch_files(source / "activations") for r in read_gz(source / "activations" / n)
    ]
    notes = [
        r
        for n in batch_files(source / "explanations")
        for r in read_gz(source / "explanations" / n)
    ]
    (model,) = (json.loads(x) for x in (source / "model.jsonl").read_text().splitlines())
    (src,) = (json.loads(x) for x in (source / "source.jsonl").read_text().splitlines())
    assert model["id"] == "gpt2-small" and model["dimension"] == want["d_in"]
    assert model["instruct"] == (want["template"] == "chat")
    assert src["id"] == "8-res-jb" and src["setName"] == "res-jb"
    # one feature row per feature that fired, with DuckDB's density and maximum
    assert sorted(int(f["index"]) for f in features) == sorted(want["fired"])
    for f in features:
        i = int(f["index"])
        assert f["modelId"] == "gpt2-small" and f["layer"] == "8-res-jb"
        assert f["sourceSetName"] == "res-jb"
        assert f["frac_nonzero"] == pytest.approx(want["fired"][i] / want["measured"])
        assert 0 < f["frac_nonzero"] <= 1
        assert same32(f["maxActApprox"], want["largest"][i])
        words, values = want["logits"].get((i, "promoted"), ([], []))
        assert f["pos_str"] == words and all(map(same32, f["pos_values"], values))
        assert len(f["pos_values"]) == len(values)
        words, values = want["logits"].get((i, "suppressed"), ([], []))
        assert f["neg_str"] == words and all(map(same32, f["neg_values"], values))
        assert words and len(f["neg_values"]) == len(values)
        near, cosines = want["neighbours"][i]
        assert f["topkCosSimIndices"] == near and all(map(same32, f["topkCosSimValues"], cosines))
        assert f["freq_hist_data_bar_heights"] == [float(c) for c in want["histograms"][i]]
        assert len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"])
    # one activation row per example of a fired feature: its document's tokens and the
    # feature's activation on each, the example's token marked
    assert len(acts) == len(want["examples"])
    got, shares = [], Counter()
    for a in acts:
        i = int(a["index"])
        persona, paraphrase, item = a["dataIndex"].split("/")
        assert a["tokens"] == want["tokens"][item]
        fired = want["acts"][(i, persona, int(paraphrase), item)]
        assert len(a["values"]) == len(a["tokens"])
        assert all(same32(v, fired.get(p, 0.0)) for p, v in enumerate(a["values"]))
        assert a["maxValue"] == max(a["values"]) == a["values"][a["maxValueTokenIndex"]]
        assert a["minValue"] == min(a["values"])
        assert f"persona {persona}, prompt {paraphrase} " in a["dataSource"]
        assert f"item {item}" in a["dataSource"]
        q = a["qualifyingTokenIndex"]
        top = a["dataSource"].startswith("shoggoth top #")
        kind = "top" if top else re.search(r"(interval \d+/\d+) sample", a["dataSource"])[1]
        if top:
            assert (a["binMin"], a["binContains"]) == (-1, -1)
            assert same32(a["binMax"], want["largest"][i])
        else:
            assert 0 < a["binContains"] <= 1 and a["binMin"] <= a["values"][q] + 1e-6
            shares[(i, kind)] = a["binContains"]
        got.append((i, kind, persona, int(paraphrase), item, q, np.float32(a["values"][q])))
    assert sorted(got) == sorted(
        (f, k, p, r, i, pos, np.float32(v)) for f, k, _, p, r, i, pos, v, _, _ in want["examples"]
    )
    # every firing token lies in one interval, and every interval with tokens has examples
    per_feature = Counter()
    for (i, _), share in shares.items():
        per_feature[i] += share
    assert per_feature and all(s == pytest.approx(1.0) for s in per_feature.values())
    # explanations: shoggoth's label (its own type) and the scored explanation
    labels = {int(n["index"]): n for n in notes if n["typeName"] == "shoggoth-label"}
    assert set(labels) == {
        f for f, label in want["labels"].items() if label != "dead" and f in want["fired"]
    }
    first, second, third = sorted(want["fired"])[:3]
    assert labels[first]["description"] == "mask-specific: pirate (FDR 0.03)"
    assert labels[second]["description"] == "shared (manual label)"
    for f, n in labels.items():
        assert n["description"].split(":")[0].split(" (")[0] == want["labels"][f]
    explained = [n for n in notes if n["typeName"] == "shoggoth-explain"]
    assert [(int(n["index"]), n["description"]) for n in explained] == [(third, "nautical talk")]
    assert "detection 0.81 (n=40)" in explained[0]["notes"]
    assert len({n["id"] for n in notes}) == len(notes) and len({a["id"] for a in acts}) == len(acts)


# ---- the upload, against a stub of upload-batch ----


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def schema_problems(body: object) -> list[str]:
    """What apps/webapp/app/api/feature/upload-batch/route.tsx refuses (its yup schema, and the
    checks after it: tokens and values of one length, unique indexes)."""
    bad = []
    if not isinstance(body, dict):
        return ["body"]
    for key in ("modelId", "source"):
        if not isinstance(body.get(key), str) or not body[key]:
            bad.append(key)
    features = body.get("features")
    if not isinstance(features, list) or not 1 <= len(features) <= 128:
        return [*bad, "features: 1..128"]
    for f in features:
        if not isinstance(f.get("index"), int) or not 0 <= f["index"] <= 10_000_000:
            bad.append("index")
        if "density" in f and not (number(f["density"]) and 0 <= f["density"] <= 1):
            bad.append("density")
        for key in ("topLogits", "bottomLogits"):
            logits = f.get(key)
            if logits is None:
                continue
            if (
                not isinstance(logits, list)
                or len(logits) > 20
                or not all(
                    isinstance(x.get("token"), str) and x["token"] and number(x.get("value"))
                    for x in logits
                )
            ):
                bad.append(key)
        for e in f.get("explanations") or []:
            if not isinstance(e.get("text"), str) or not 1 <= len(e["text"]) <= 512:
                bad.append("explanation text")
            for key in ("methodName", "modelName"):
                if e.get(key) is not None and not isinstance(e[key], str):
                    bad.append(key)
        acts = f.get("activations")
        if not isinstance(acts, list) or not acts:
            bad.append("activations")
            continue
        for a in acts:
            tokens, values = a.get("tokens"), a.get("values")
            if (
                not isinstance(tokens, list)
                or not 1 <= len(tokens) <= 1024
                or not all(isinstance(t, str) and t for t in tokens)
            ):
                bad.append("tokens")
            if (
                not isinstance(values, list)
                or not 1 <= len(values) <= 1024
                or not all(number(v) for v in values)
            ):
                bad.append("values")
            if isinstance(tokens, list) and isinstance(values, list) and len(tokens) != len(values):
                bad.append("tokens and values differ in length")
            for key in ("quantileMax", "quantileMin"):
                if a.get(key) is not None and not (number(a[key]) and a[key] <= 99999999):
                    bad.append(key)
            if a.get("quantileFraction") is not None and not (
                number(a["quantileFraction"]) and 0 <= a["quantileFraction"] <= 1
            ):
                bad.append("quantileFraction")
    if len({f.get("index") for f in features}) != len(features):
        bad.append("indexes not unique")
    return bad


class Stub:
    """upload-batch on 127.0.0.1: answers each request with the next of `statuses` (the last
    one from then on) after checking its path, key and body."""

    def __init__(self, statuses: list[tuple[int, dict]]):
        self.statuses, self.requests, self.problems = list(statuses), [], []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/api/feature/upload-batch":
                    stub.problems.append(f"path {self.path}")
                if self.headers.get("X-Api-Key") != KEY:
                    stub.problems.append("no key")
                parsed = json.loads(body)
                stub.problems.extend(schema_problems(parsed))
                stub.requests.append(parsed)
                status, answer = (
                    stub.statuses.pop(0) if len(stub.statuses) > 1 else stub.statuses[0]
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://elsewhere.invalid/api")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def offline(monkeypatch):
    """The key in the environment, no proxy (127.0.0.1 is reached directly), no backoff."""
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEURONPEDIA_API_KEY", KEY)
    monkeypatch.setattr(np_upload, "BACKOFF_S", 0.0)


@pytest.mark.slow
def test_upload_retries_a_server_error_and_sends_what_the_route_accepts(
    exported, tmp_path, offline, monkeypatch, capfd
):
    db, _ = exported
    want = database(db)
    monkeypatch.setattr(np_upload, "UPLOAD_FEATURES", 6)
    with Stub([(500, {"error": "Something went wrong"}), (200, {"message": "ok"})]) as stub:
        assert (
            cli.main(
                [
                    "export",
                    "--db",
                    str(db),
                    "--neuronpedia",
                    str(tmp_path / "np"),
                    "--neuronpedia-url",
                    stub.url + "/",
                ]
            )
            == 0
        )
    assert not stub.problems, stub.problems
    first, *rest = stub.requests
    assert rest[0] == first  # the batch the server failed on was sent again, unchanged
    sent = [f for r in rest for f in r["features"]]
    assert all(len(r["features"]) <= 6 for r in rest) and len(rest) > 1
    assert {(r["modelId"], r["source"]) for r in rest} == {("gpt2-small", "8-res-jb")}
    assert sorted(f["index"] for f in sent) == sorted(want["fired"])
    assert sum(len(f["activations"]) for f in sent) == len(want["examples"])
    for f in sent:
        assert f["density"] == pytest.approx(want["fired"][f["index"]] / want["measured"])
        assert [x["token"] for x in f["topLogits"]] == want["logits"][(f["index"], "promoted")][0][
            :20
        ]
        for e in f["explanations"]:
            assert e["methodName"] in ("shoggoth-label", "shoggoth-explain")
            assert e["modelName"] is None
    assert f"uploaded {len(want['fired'])} features" in capfd.readouterr().out
    # --neuronpedia-untyped: no methodName
    with Stub([(200, {"message": "ok"})]) as stub:
        assert (
            cli.main(
                [
                    "export",
                    "--db",
                    str(db),
                    "--neuronpedia",
                    str(tmp_path / "np"),
                    "--overwrite",
                    "--neuronpedia-url",
                    stub.url,
                    "--neuronpedia-untyped",
                ]
            )
            == 0
        )
    assert not stub.problems
    assert {
        e["methodName"] for r in stub.requests for f in r["features"] for e in f["explanations"]
    } == {None}


@pytest.mark.slow
def test_a_refusal_is_one_line_with_the_servers_message_made_inert(
    exported, tmp_path, offline, capfd
):
    db, _ = exported
    capfd.readouterr()
    with Stub(
        [(403, {"error": "User is not the creator\x1b[31m of this source set.\nsecond line"})]
    ) as stub:
        assert (
            cli.main(
                [
                    "export",
                    "--db",
                    str(db),
                    "--neuronpedia",
                    str(tmp_path / "np"),
                    "--neuronpedia-url",
                    stub.url,
                ]
            )
            == 2
        )
    assert len(stub.requests) == 1  # a refusal is not retried
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --neuronpedia-url:"), err
    assert "HTTP 403" in err[0] and "User is not the creator" in err[0]
    assert "\x1b" not in err[0] and "request 1" in err[0]
    # a server that keeps failing: a bounded number of tries, then one line
    with Stub([(503, {"error": "down"})]) as stub:
        assert (
            cli.main(
                [
                    "export",
                    "--db",
                    str(db),
                    "--neuronpedia",
                    str(tmp_path / "np"),
                    "--overwrite",
                    "--neuronpedia-url",
                    stub.url,
                ]
            )
            == 2
        )
    assert len(stub.requests) == np_upload.TRIES
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 503" in err[0] and "failed 4 times" in err[0], err
    # a redirect is not followed (the key would go with it)
    with Stub([(308, {})]) as stub:
        assert (
            cli.main(
                [
                    "export",
                    "--db",
                    str(db),
                    "--neuronpedia",
                    str(tmp_path / "np"),
                    "--overwrite",
                    "--neuronpedia-url",
                    stub.url,
                ]
            )
            == 2
        )
    assert len(stub.requests) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 308 to http://elsewhere.invalid/api" in err[0], err


def test_requests_keep_to_the_routes_limits(monkeypatch):
    """At most 128 features and, where one feature allows it, `UPLOAD_BYTES` per request; the
    endpoint from an instance's address."""
    monkeypatch.setattr(np_upload, "UPLOAD_BYTES", 20_000)
    features = [
        {
            "index": i,
            "activations": [
                {
                    "tokens": ["x"] * (50 + 400 * (i % 7 == 0)),
                    "values": [0.5] * (50 + 400 * (i % 7 == 0)),
                }
            ],
        }
        for i in range(300)
    ]
    bodies = list(np_upload.requests_of(iter(features), "gpt2-small", "8-res-jb"))
    sent = []
    for count, body in bodies:
        parsed = json.loads(body)
        assert len(parsed["features"]) == count <= 128
        assert len(body) <= 20_000 or count == 1
        sent += [f["index"] for f in parsed["features"]]
    assert sent == list(range(300)) and len(bodies) > 3
    monkeypatch.setattr(np_upload, "UPLOAD_BYTES", 1 << 30)
    assert [c for c, _ in np_upload.requests_of(iter(features), "m", "0-s")] == [128, 128, 44]
    for url in (
        "https://www.neuronpedia.org",
        "https://www.neuronpedia.org/",
        "https://www.neuronpedia.org/api",
    ):
        assert np_upload.check_url(url) == "https://www.neuronpedia.org/api/feature/upload-batch"
    for bad in ("www.neuronpedia.org", "ftp://x.org", "https://u:p@x.org", "https://x.org/?a=1"):
        with pytest.raises(BadInput):
            np_upload.check_url(bad)


def one_line_refusal(capfd, argv: list, words: str) -> None:
    capfd.readouterr()
    assert cli.main(["export", *map(str, argv)]) == 2, argv
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], (err, words)


@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(
    exported, labelled_db, tmp_path, capfd, monkeypatch
):
    db, _ = exported
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    plain = copy_db(db, tmp_path / "plain.duckdb")  # no neuronpedia_id
    with duckdb.connect(str(plain)) as con:
        con.execute("UPDATE saes SET neuronpedia_id = NULL")
    unindexed = copy_db(labelled_db, tmp_path / "unindexed.duckdb")
    with duckdb.connect(str(unindexed)) as con:
        con.execute("UPDATE saes SET neuronpedia_id = ?", [NP_ID])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    out = tmp_path / "np"
    before = tree(tmp_path)
    for argv, words in (
        (["--db", plain, "--neuronpedia", out], "has no neuronpedia_id"),
        (["--db", plain, "--neuronpedia", out, "--neuronpedia-model", "gpt2-small"], "give both"),
        (["--db", unindexed, "--neuronpedia", out], "shoggoth index"),
        (
            ["--db", db, "--neuronpedia", out, "--neuronpedia-url", "https://x.org"],
            "NEURONPEDIA_API_KEY",
        ),
        (
            ["--db", db, "--parquet", tmp_path / "pq", "--neuronpedia-url", "https://x.org"],
            "needs --neuronpedia",
        ),
        (["--db", db, "--neuronpedia", out, "--neuronpedia-model", "../up"], "--neuronpedia-model"),
        (
            ["--db", db, "--neuronpedia", out, "--neuronpedia-source", "8res"],
            "--neuronpedia-source",
        ),
        (
            ["--db", db, "--neuronpedia", out, "--neuronpedia-source", "8-Res"],
            "--neuronpedia-source",
        ),
        (
            ["--db", db, "--neuronpedia", out, "--neuronpedia-url", "ftp://x.org"],
            "--neuronpedia-url",
        ),
        (
            ["--db", db, "--neuronpedia", out, "--neuronpedia-creator", "a b"],
            "--neuronpedia-creator",
        ),
        (["--db", db, "--neuronpedia", out, "--sae", "nope"], "--sae nope"),
        (["--db", db, "--neuronpedia", db], "--neuronpedia"),
        (["--db", db, "--neuronpedia", tmp_path / "other"], "--overwrite"),
        (["--db", db, "--neuronpedia", tmp_path / "other", "--overwrite"], "not a shoggoth export"),
        (["--db", db, "--neuronpedia", out, "--parquet", out / "pq"], "overlaps"),
        (["--db", db, "--neuronpedia", out, "--delphi", out], "overlaps"),
        (
            ["--db", db, "--neuronpedia", out, "--views-only", "--parquet", tmp_path / "pq"],
            "--views-only",
        ),
        # a refused --neuronpedia keeps the --parquet export of the same run from appearing
        (
            ["--db", plain, "--parquet", tmp_path / "pq", "--neuronpedia", out],
            "has no neuronpedia_id",
        ),
    ):
        one_line_refusal(capfd, argv, words)
        assert tree(tmp_path) == before, argv
    # the flags give what the database lacks
    assert (
        cli.main(
            [
                "export",
                "--db",
                str(plain),
                "--neuronpedia",
                str(out),
                "--neuronpedia-model",
                "tiny-gpt2",
                "--neuronpedia-source",
                "1-shoggoth-res__x",
            ]
        )
        == 0
    )
    sourceset = json.loads(
        (out / "tiny-gpt2" / "1-shoggoth-res__x" / "sourceset.jsonl").read_text()
    )
    assert sourceset["name"] == "shoggoth-res"
    one_line_refusal(
        capfd,
        [
            "--db",
            plain,
            "--neuronpedia",
            out,
            "--neuronpedia-model",
            "m",
            "--neuronpedia-source",
            "0-s",
        ],
        "--overwrite",
    )


@pytest.mark.slow
def test_an_interrupted_overwrite_keeps_the_last_export(exported, tmp_path, monkeypatch):
    db, _ = exported
    out = tmp_path / "np"
    assert cli.main(["export", "--db", str(db), "--neuronpedia", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, calls = np_export.activation_rows, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(np_export, "activation_rows", flaky)
    assert (
        cli.main(
            [
                "export",
                "--db",
                str(db),
                "--neuronpedia",
                str(out),
                "--parquet",
                str(tmp_path / "pq"),
                "--overwrite",
            ]
        )
        == 130
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["np"]  # no Parquet, no leftovers


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory, indexed_db) -> tuple[Path, dict[str, Path]]:
    """test_hostile_databases' corpus: member name → its database, each in its own folder."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "secret.txt").write_text(SECRET)
    members = {}
    for n, (name, make) in enumerate(corpus(root, indexed_db).items()):
        (root / f"m{n:02d}").mkdir()
        members[name] = copy_db(indexed_db, root / f"m{n:02d}" / "db.duckdb")
        make(members[name])
    return root, members


@pytest.mark.slow
def test_neuronpedia_over_every_hostile_database(capfd, hostile_corpus):
    """Over every hostile database: an export or one error line, no traceback, the canary never
    read, nothing written beside the output, and a refusal writes no output."""
    root, members = hostile_corpus
    failures, codes = [], Counter()
    for name, db in members.items():
        out = db.parent / "out-np"
        before = outside(root, db, out)
        code, stdout, stderr = run_one(
            capfd,
            [
                "export",
                "--db",
                str(db),
                "--neuronpedia",
                str(out),
                "--neuronpedia-model",
                "m",
                "--neuronpedia-source",
                "0-s",
            ],
        )
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        codes[code] += 1
        problem = (
            f"exit {code}"
            if code not in (0, 2)
            else "a traceback"
            if "Traceback" in stderr
            else "not one error line"
            if code == 2 and len(errors) != 1
            else "read the canary"
            if SECRET in stdout + stderr
            else "ran the SQL a name holds"
            if (root / "pwned.txt").exists()
            else "wrote outside its output"
            if outside(root, db, out) != before
            else "wrote an output and failed"
            if code == 2 and out.exists()
            else None
        )
        if problem:
            failures.append(f"{name}: {problem}: {stderr.strip()[-300:]}")
        shutil.rmtree(out, ignore_errors=True)
    assert not failures, "\n".join(failures)
    assert codes[0] and codes[2]  # some are exported, some refused
