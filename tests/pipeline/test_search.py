"""`shoggoth search` on a real harvested, labelled and indexed database: text mode against a
direct model + SAE run, --similar against brute force, persona mode against the stored persona
vectors, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from helpers import copy_db
from sae_lens import SAE

from shoggoth import cli


def subcommand(args: list[str]) -> list[str]:
    """The flag form (`--name X --json`) as the subcommand form (`name X --format json`)."""
    args = ["--format" if a == "--json" else a for a in args]
    args = [x for a in args for x in ((a, "json") if a == "--format" else (a,))]
    for flag, sub in (("--text", "text"), ("--name", "name")):
        if flag in args:
            i = args.index(flag)
            return [sub, *args[:i], *args[i + 2 :], args[i + 1]]
    if "--similar" in args:
        return ["similar", *[a for a in args if a != "--similar"]]
    return ["feature", *args] if "--feature" in args else ["persona", *args]


def search(capfd, db: Path, *args: str) -> tuple[int, str, str]:
    sub, *rest = subcommand(list(args))
    code = cli.main(["search", sub, "--db", str(db), *rest])
    out, err = capfd.readouterr()
    return code, out, err


def labels_of(db: Path) -> dict[int, str]:
    con = duckdb.connect(str(db), read_only=True)
    out = dict(con.execute("SELECT feature, label FROM feature_labels").fetchall())
    con.close()
    return out


def test_text_under_a_persona_matches_a_direct_run(capfd, indexed_db, tiny_gpt2, tiny_sae_dir):
    from shoggoth.sae.activations import continuation_activations
    from shoggoth.sae.prompts import build_batch

    text = "Rain is water that falls from clouds."
    code, out, err = search(
        capfd,
        indexed_db,
        "--text",
        text,
        "--persona",
        "pirate",
        "--paraphrase",
        "1",
        "--top",
        "5",
        "--json",
    )
    assert code == 0, err
    got = json.loads(out)
    batch = build_batch(
        tiny_gpt2.tokenizer,
        [("Act as a salty old buccaneer.", None, text)],
        prepend_bos=tiny_gpt2.prepend_bos,
    )
    sae = SAE.load_from_disk(str(tiny_sae_dir))
    f = (
        sae.encode(continuation_activations(tiny_gpt2, batch, "blocks.1.hook_resid_post"))
        .detach()
        .numpy()
    )
    assert len(got["tokens"]) == len(f) > 3
    labels = labels_of(indexed_db)
    for token, acts in zip(got["tokens"], f, strict=True):
        want = [int(j) for j in np.argsort(-acts)[:5] if acts[j] > 0]
        assert [x["feature"] for x in token["features"]] == want
        assert [x["label"] for x in token["features"]] == [labels[j] for j in want]
    mean = f.mean(axis=0)
    assert [x["feature"] for x in got["overall"]] == list(np.argsort(-mean)[:5])
    assert np.allclose([x["mean_act"] for x in got["overall"]], np.sort(mean)[::-1][:5], atol=1e-3)
    # Without a persona the text has no system prompt, and the activations differ.
    code, out, _ = search(capfd, indexed_db, "--text", text, "--top", "5", "--json")
    bare = json.loads(out)
    assert code == 0 and bare["persona"] is None and bare["tokens"] != got["tokens"]
    code, out, _ = search(capfd, indexed_db, "--text", text)
    assert (
        code == 0
        and "top features per token" in out
        and labels[got["overall"][0]["feature"]] in out
    )


def test_similar_matches_brute_force(capfd, indexed_db, tiny_sae_dir):
    w = SAE.load_from_disk(str(tiny_sae_dir)).W_dec.detach().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = w @ w[7]
    cos[7] = -np.inf
    code, out, err = search(
        capfd, indexed_db, "--feature", "7", "--similar", "--top", "15", "--json"
    )
    assert code == 0, err
    got = json.loads(out)
    assert [n["feature"] for n in got["neighbours"]] == list(np.argsort(-cos)[:15])
    assert np.allclose([n["cosine"] for n in got["neighbours"]], np.sort(cos)[::-1][:15], atol=1e-4)
    labels = labels_of(indexed_db)
    assert all(n["label"] == labels[n["feature"]] for n in got["neighbours"])


def test_feature_shows_its_label_and_contexts(capfd, indexed_db):
    con = duckdb.connect(str(indexed_db), read_only=True)
    feature, label, n_docs = con.execute(
        "SELECT feature, label, n_docs_firing FROM features ORDER BY density DESC LIMIT 1"
    ).fetchone()
    top = con.execute("SELECT max(value) FROM activations WHERE feature = ?", [feature]).fetchone()[
        0
    ]
    con.close()
    code, out, err = search(capfd, indexed_db, "--feature", str(feature), "--top", "3", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["label"] == label and got["statistics"]["n_docs_firing"] == n_docs
    assert [c["rank"] for c in got["contexts"]] == [1, 2, 3]
    assert got["contexts"][0]["value"] == pytest.approx(top, abs=1e-4)
    assert all(c["context"].count("[[") == 1 for c in got["contexts"])


def test_persona_mode(capfd, indexed_db, tmp_path):
    db = copy_db(indexed_db, tmp_path / "p.duckdb")
    con = duckdb.connect(str(db))
    nearest = [
        f
        for (f,) in con.execute(
            "SELECT feature FROM persona_features WHERE persona = 'pirate' ORDER BY rank LIMIT 4"
        ).fetchall()
    ]
    feature = con.execute(
        "SELECT feature FROM features WHERE label <> 'dead' ORDER BY feature LIMIT 1"
    ).fetchone()[0]
    con.execute(
        "UPDATE features SET label = 'mask-specific', top_persona = 'pirate' WHERE feature = ?",
        [feature],
    )
    con.close()
    code, out, err = search(capfd, db, "--persona", "pirate", "--top", "4", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert [n["feature"] for n in got["nearest"]] == nearest
    assert got["vector_norm"] > 0
    assert feature in [m["feature"] for m in got["mask_specific"]]
    code, out, _ = search(capfd, db, "--persona", "helper", "--json")
    assert code == 0 and feature not in [m["feature"] for m in json.loads(out)["mask_specific"]]


def test_name_mode_finds_features_by_handle(capfd, indexed_db):
    con = duckdb.connect(str(indexed_db), read_only=True)
    term = con.execute(
        "SELECT terms[1] FROM feature_handles WHERE len(terms) > 0 ORDER BY best_score DESC LIMIT 1"
    ).fetchone()[0]
    want = {
        f
        for (f,) in con.execute(
            "SELECT feature FROM feature_names WHERE name ILIKE ?", [f"%{term}%"]
        ).fetchall()
    }
    con.close()
    code, out, err = search(capfd, indexed_db, "--name", term.upper(), "--top", "1000", "--json")
    assert code == 0, err
    got = json.loads(out)["features"]
    assert {g["feature"] for g in got} == want
    assert all(term.lower() in g["name"].lower() for g in got)
    code, out, _ = search(capfd, indexed_db, "--name", "no such handle %_", "--json")
    assert code == 0 and json.loads(out)["features"] == []  # % and _ match only themselves
    code, out, _ = search(capfd, indexed_db, "--name", term)
    assert code == 0 and "features named like" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["persona", "--persona", "wizard"], "--persona wizard: not in this database"),
        (["name", "--feature", "1", "x"], "No such option '--feature'"),
        (["similar", "--feature", "9999"], "--feature 9999: out of range"),
        (["similar"], "--feature: required"),
        (["text"], "text: required"),
        (["text", "--feature", "1", "hi"], "No such option '--feature'"),
        (["text", "--persona", "pirate", "--paraphrase", "7", "hi"], "--paraphrase 7"),
        (["nonsense"], "No such command"),
    ],
)
def test_bad_input_is_one_line(capfd, indexed_db, args, words):
    code = cli.main(["search", args[0], "--db", str(indexed_db), *args[1:]])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--name", "x", "--feature", "1"], "give one of them"),
        (["--similar"], "--similar: needs --feature"),
        ([], "search: give --text"),
    ],
)
def test_the_flag_form_still_refuses_in_one_line(capfd, indexed_db, args, words):
    code = cli.main(["search", "--db", str(indexed_db), *args])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and words in err, err


def test_the_flag_form_runs_with_a_deprecation_note(capfd, indexed_db):
    """`search --db F --name X --json` (the earlier form) still works for one release."""
    code = cli.main(["search", "--db", str(indexed_db), "--name", "a", "--json"])
    out, err = capfd.readouterr()
    assert code == 0 and json.loads(out)["mode"] == "name"
    assert err.splitlines() == [
        "note: --json is deprecated and will be removed in the next release; use --format",
        "note: shoggoth search --name is deprecated and will be removed in the next release; "
        "use shoggoth search name",
    ]
    assert subcommand(["--name", "a", "--json"]) == ["name", "--format", "json", "a"]


def test_needs_an_index(capfd, labelled_db):
    code, _, err = search(capfd, labelled_db, "--feature", "1", "--similar")
    assert code == 2 and "run `shoggoth index` first" in err
