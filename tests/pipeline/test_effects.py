"""`shoggoth effects` and `shoggoth steer`: the interventions against a manual computation on the
tiny GPT-2, the planted causal model (one residual direction carries the pirate's effect), the
stored tables and summary, resuming after an interruption, bad input, and the explorer's
causal section and steering panel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import battery, copy_db
from planted_causal import PERSONAS, build_planted
from streamlit.testing.v1 import AppTest

import shoggoth.pipeline.effects.run
from shoggoth import cli
from shoggoth.pipeline.effects.steer import SteerConfig, clamp, load_steering, steer_with
from shoggoth.sae.intervene import (
    AttributionPass,
    answer_logprobs,
    answer_span,
    generate,
    prepare,
    shared_blocks,
)
from shoggoth.sae.prompts import build_prompt
from shoggoth.sae.sae_dir import load_sae_dir

HOOK = "blocks.1.hook_resid_post"
EFFECTS = [
    "--top",
    "8",
    "--baseline",
    "0",
    "--per-feature",
    "0",
    "--items-per-topic",
    "12",
    "--bootstrap",
    "200",
]


def _manual(model, ids, hook, change):
    """Log-probabilities of a full forward pass (no cache, no batching), with `change(x)`
    applied by hand to the activations at `hook`."""

    def edit(x, hook=None):
        x = x.clone()
        change(x)
        return x

    with torch.inference_mode():
        logits = model.bridge.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(hook, edit)])
    return torch.log_softmax(logits[0].float(), -1)


def test_ablation_steering_and_attribution_match_a_manual_computation(tiny_gpt2, tiny_sae_dir):
    model, sae = tiny_gpt2, load_sae_dir(tiny_sae_dir, "cpu")
    prompt = build_prompt(
        model.tokenizer,
        "You are a pirate captain.",
        "Why is the sky blue?",
        "Sunlight scatters off air molecules, and blue scatters most.",
    )
    start, end = answer_span(prompt)
    ids, w_dec = prompt.input_ids, sae.W_dec.detach()
    answer = prepare(model, prompt)
    with torch.inference_mode():
        clean = model.bridge.run_with_cache(torch.tensor([ids]), names_filter=HOOK)[1][HOOK][0]
        fires = sae.encode(clean[start : end - 1]).sum(0)
    f, g, strength = int(fires.argmax()), int(fires.argmin()), 1.7

    def edit(x):
        acts = sae.encode(x[0])
        delta = torch.zeros_like(x)
        delta[1] = -acts[:, f, None] * w_dec[f]
        delta[2] = strength * w_dec[g]
        return delta

    lp, full = answer_logprobs(model, answer, HOOK, edit, 3, full=True)
    span = slice(start, end - 1)

    def ablate(x):
        x[0, span] -= sae.encode(x[0, span])[:, f, None] * w_dec[f]

    def steer(x):
        x[0, span] += strength * w_dec[g]

    target = torch.tensor(ids[start:end])
    for row, change in enumerate([lambda x: None, ablate, steer]):
        manual = _manual(model, ids, HOOK, change)[start - 1 : end - 1]
        expected = manual.gather(-1, target[:, None])[:, 0]
        assert torch.allclose(lp[row], expected, atol=1e-5), row
        assert torch.allclose(full[row], manual[1:], atol=1e-5)
    assert (lp[1] - lp[0]).abs().max() > 1e-3  # the ablation does something to compare

    # Attribution: the gradient of a weighted sum of the answer's log-probabilities, for two
    # documents (different prompts, the same answer) in one left-padded batch.
    other = build_prompt(
        model.tokenizer,
        "",
        "Why is the sky blue?",
        "Sunlight scatters off air molecules, and blue scatters most.",
    )
    weights = torch.randn(2, end - start, generator=torch.Generator().manual_seed(0))
    run = AttributionPass(model, [prompt, other], HOOK)
    x, lp_a, grad = run.x, run.lp, run.grad(weights)
    assert torch.allclose(lp_a[0], lp[0], atol=1e-5)
    leaf: dict[str, torch.Tensor] = {}

    def capture(x, hook=None):
        leaf["x"] = x.detach().requires_grad_(True)
        return leaf["x"]

    for row, doc in enumerate([prompt, other]):
        s, e = answer_span(doc)
        logits = model.bridge.run_with_hooks(
            torch.tensor([doc.input_ids]), fwd_hooks=[(HOOK, capture)]
        )
        logp = torch.log_softmax(logits[0].float(), -1)[s - 1 : e - 1]
        own = logp.gather(-1, target[:, None])[:, 0]
        assert torch.allclose(lp_a[row], own, atol=1e-5)
        (expected,) = torch.autograd.grad((own[1:] * weights[row, 1:]).sum(), leaf["x"])
        assert torch.allclose(grad[row], expected[0, s : e - 1], atol=1e-5)
        assert torch.allclose(x[row], leaf["x"][0, s : e - 1].detach(), atol=1e-5)
    assert torch.allclose(x[0], clean[span], atol=1e-5)

    # One document weighted three ways: one forward, one batched backward, the three gradients
    # of three separate passes.
    three = torch.randn(3, end - start, generator=torch.Generator().manual_seed(1))
    batched = AttributionPass(model, [prompt], HOOK).grads(three)
    assert batched.shape == (3, end - start - 1, grad.shape[-1])
    for row in range(3):
        alone = AttributionPass(model, [prompt], HOOK).grad(three[row : row + 1])
        assert torch.allclose(batched[row], alone[0], atol=1e-5), row
    assert (batched[0] - batched[1]).abs().max() > 1e-4  # the weightings give different ones
    with pytest.raises(ValueError, match="one document"):
        AttributionPass(model, [prompt, other], HOOK).grads(three)


@pytest.mark.parametrize(
    "hook, shared",
    [
        ("blocks.1.hook_resid_post", 2),
        ("blocks.1.hook_resid_pre", 1),
        ("blocks.0.hook_mlp_out", 1),
        ("blocks.1.attn.hook_q", None),
    ],
)
def test_edited_rows_share_the_blocks_before_the_hook(tiny_gpt2, hook, shared):
    """Several edited rows run the blocks before the hook once and widen there; each row equals
    its edit run alone (one row, the whole pass), and a hook inside a block's attention keeps
    the whole pass for every row."""
    model = tiny_gpt2
    prompt = build_prompt(model.tokenizer, "You are a pirate.", "What is rain?", "Water falls.")
    answer = prepare(model, prompt)
    assert shared_blocks(hook) == shared

    def edit(x):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        return noise * x.float().std()

    rows, full = answer_logprobs(model, answer, hook, edit, 3, full=True)
    for r in range(3):
        alone, alone_full = answer_logprobs(
            model,
            answer,
            hook,
            lambda x, r=r: edit(x.expand(3, *x.shape[1:]))[r : r + 1],
            1,
            full=True,
        )
        assert torch.allclose(rows[r], alone[0], atol=1e-5), r
        assert torch.allclose(full[r], alone_full[0], atol=1e-5), r
    assert (rows[0] - rows[1]).abs().max() > 0  # the rows' edits differ


def test_generation_with_a_clamp_matches_a_loop_of_full_passes(tiny_gpt2, tiny_sae_dir):
    model, sae = tiny_gpt2, load_sae_dir(tiny_sae_dir, "cpu")
    ids = build_prompt(model.tokenizer, "You are a pirate captain.", "What is rain?", "x").input_ids
    ids = ids[:-3]  # up to the assistant turn (the "x", <|end|> and newline cut)
    direction, target, f = sae.W_dec[5].detach(), 2.5, 5

    def clamp_by_hand(x, n_prompt):
        a = sae.encode(x[0, n_prompt:])[:, f]
        x[0, n_prompt:] += (target - a)[:, None] * direction

    def edit(x):
        return (target - sae.encode(x)[..., f])[..., None] * direction

    for clamp_edit, on_prompt in ((None, False), (edit, False), (edit, True)):
        tokens, why = generate(model, ids, HOOK, clamp_edit, 8, on_prompt=on_prompt)
        assert why == "length" and len(tokens) == 8
        seq, first = list(ids), 0 if on_prompt else len(ids)
        for _ in range(8):
            change = (lambda x, n=first: clamp_by_hand(x, n)) if clamp_edit else (lambda x: None)
            seq.append(int(_manual(model, seq, HOOK, change)[-1].argmax()))
        assert tokens == seq[len(ids) :], (clamp_edit is None, on_prompt)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted model's harvest, and its effects (a database each)."""
    work = tmp_path_factory.mktemp("planted")
    args = battery(work / "b", 12, PERSONAS)
    items = [json.loads(line) for line in (work / "b" / "items.jsonl").read_text().splitlines()]
    model, sae = build_planted(work, items)
    db = work / "harvest.duckdb"
    assert cli.main(["harvest", "--db", str(db), "--sae-dir", str(sae), *map(str, args)]) == 0
    measured = copy_db(db, work / "effects.duckdb")
    assert cli.main(["effects", "--db", str(measured), *EFFECTS]) == 0
    return db, measured


def _effects(db: Path) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT * FROM feature_effects ORDER BY ALL").df()
    finally:
        con.close()


def test_effects_find_the_planted_feature_and_nothing_orthogonal(planted):
    effects = _effects(planted[1]).set_index(["feature", "persona", "measure"])
    others = range(1, 8)
    mediated = effects.xs(("pirate", "mediated"), level=("persona", "measure"))
    assert mediated.loc[0, "ci_low"] > 0.8, mediated
    assert mediated.loc[list(others), "estimate"].abs().max() < 0.1
    kl = effects.xs(("pirate", "ablate_kl"), level=("persona", "measure"))["estimate"]
    assert kl[0] > 100 * kl[list(others)].max()
    screen = effects.xs(("pirate", "attribution"), level=("persona", "measure"))["estimate"]
    assert screen.abs().idxmax() == 0 and screen[0] > 0.5
    steer = effects.xs(("pirate", "steer_toward"), level=("persona", "measure"))
    assert steer.loc[0, "ci_low"] > 0.5 and steer.loc[list(others), "estimate"].abs().max() < 0.1
    # Feature 0 never fires under the helper or no persona: its ablation there is exactly nothing.
    assert effects.loc[(0, "helper", "mediated"), "estimate"] == 0
    assert effects.loc[(0, "control_none", "ablate_kl"), "estimate"] == 0
    con = duckdb.connect(str(planted[1]), read_only=True)
    shifts = con.execute("SELECT persona, rms_token_shift, n_items FROM persona_shifts").df()
    con.close()
    rms = dict(zip(shifts["persona"], shifts["rms_token_shift"], strict=True))
    assert rms["pirate"] > 5 * rms["helper"] and set(shifts["n_items"]) == {12}


@pytest.mark.slow  # label reads the SAE's decoder (for the persona decomposition)
def test_label_after_effects_fills_the_causal_summary(planted, tmp_path):
    db = copy_db(planted[1], tmp_path / "db.duckdb")
    assert cli.main(["label", "--db", str(db), "--min-docs", "3", "--calibration-seeds", "1"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    rows = dict(
        con.execute("SELECT feature, causal FROM features WHERE causal IS NOT NULL").fetchall()
    )
    persona = con.execute("SELECT mediated_persona FROM features WHERE feature = 0").fetchone()
    con.close()
    assert rows[0].startswith("mediates") and "pirate's shift" in rows[0] and persona[0] == "pirate"
    assert all(rows[f].startswith("no mediation shown") for f in range(1, 8))


def test_an_interrupted_run_resumes_to_the_same_tables(planted, tmp_path, monkeypatch):
    db = copy_db(planted[0], tmp_path / "db.duckdb")
    real, calls = shoggoth.pipeline.effects.run.exact_rows, []

    def interrupted(s, item, plan, fired, x_ref=None, added=None):
        calls.append(item)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(s, item, plan, fired, x_ref, added)

    monkeypatch.setattr(shoggoth.pipeline.effects.run, "exact_rows", interrupted)
    assert cli.main(["effects", "--db", str(db), *EFFECTS]) == 130
    con = duckdb.connect(str(db), read_only=True)
    assert "feature_effects" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    con.close()
    saved = sorted(p.name for p in Path(f"{db}.effects").glob("*/exact/*.npz"))
    assert saved == ["00000.npz", "00001.npz", "00002.npz"]
    monkeypatch.setattr(shoggoth.pipeline.effects.run, "exact_rows", real)
    assert cli.main(["effects", "--db", str(db), *EFFECTS]) == 0
    pd.testing.assert_frame_equal(_effects(db), _effects(planted[1]))
    assert not Path(f"{db}.effects").exists()


def test_bad_input_is_one_line_and_writes_nothing(planted, tmp_path, capfd):
    db = copy_db(planted[0], tmp_path / "db.duckdb")
    before = db.read_bytes()
    for args, says in (
        (["--features", "8"], "--features 8: 8 is outside 0 to 7"),
        (["--features", "3-1"], "--features 3-1: the range '3-1' runs backwards"),
        (["--labels", "shared"], "is not labelled yet"),
        (["--labels", "nonsense"], "--labels nonsense: unknown 'nonsense'"),
        (["--paraphrase", "5"], "--paraphrase 5: persona 'pirate' has 3"),
    ):
        assert cli.main(["effects", "--db", str(db), *args]) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert db.read_bytes() == before
    con = duckdb.connect(str(db))
    con.execute("UPDATE saes SET model = 'minilm'")
    con.close()
    before = db.read_bytes()
    assert cli.main(["effects", "--db", str(db)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "is an encoder, not a causal LM" in err
    assert cli.main(["steer", "--db", str(db), "--feature", "0", "--prompt", "hi"]) == 2
    assert "is an encoder" in capfd.readouterr().err
    assert not Path(f"{db}.effects").exists()
    assert db.read_bytes() == before
    con = duckdb.connect(str(db), read_only=True)
    assert "feature_effects" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    con.close()


def _mean_read(tokens: list[int], model) -> float:
    head = model.bridge.original_model.get_output_embeddings().weight[:, 0]
    return float(head[tokens].mean()) if tokens else float("-inf")


def test_steering_turns_the_planted_pirate_on_and_off(planted):
    cfg = SteerConfig(
        db=planted[0], feature=0, prompt="Why does it rain?", scale=3.0, max_tokens=12
    )
    s = load_steering(cfg)
    out = steer_with(s, cfg)
    assert out == steer_with(s, cfg)  # deterministic
    assert out.target == pytest.approx(3 * out.typical) and out.typical > 0
    from shoggoth.pipeline.effects.steer import prompt_ids

    ids = prompt_ids(s.model, None, cfg.prompt)
    plain, _ = generate(s.model, ids, s.hook, None, 12)
    on, _ = generate(s.model, ids, s.hook, clamp(s, 3 * s.typical), 12)
    # Turned on under no persona, the feature makes the answer read direction u: the tokens the
    # unembedding ties to u win.
    assert _mean_read(on, s.model) > _mean_read(plain, s.model) + 5
    pirate = load_steering(
        SteerConfig(
            db=planted[0], feature=0, prompt="Why does it rain?", persona="pirate", scale=0.0
        )
    )
    ids = prompt_ids(pirate.model, pirate.system, cfg.prompt)
    as_pirate, _ = generate(pirate.model, ids, pirate.hook, None, 12)
    off, _ = generate(pirate.model, ids, pirate.hook, clamp(pirate, 0.0), 12)
    assert _mean_read(as_pirate, s.model) > _mean_read(off, s.model) + 2


def test_the_feature_page_shows_effects_and_steers(planted, tmp_path):
    db = copy_db(planted[1], tmp_path / "db.duckdb")
    assert cli.main(["label", "--db", str(db), "--min-docs", "3", "--calibration-seeds", "1"]) == 0
    os.environ["SHOGGOTH_DB"] = str(db)
    at = AppTest.from_file(
        str(Path(__file__).parents[2] / "explorer" / "app.py"), default_timeout=120
    )
    at.run()
    assert "Causal effects (shoggoth effects)" in [h.value for h in at.subheader]
    assert any("mediates 99" in (link.proto.label or "") for link in at.get("page_link"))
    at.query_params.update({"feature": "0"})
    at.switch_page("views/feature.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Causal effects" in [h.value for h in at.subheader]
    pivot = [d.value for d in at.dataframe if "ablate_kl" in getattr(d.value, "columns", [])]
    assert pivot and pivot[0].loc["pirate", "ablate_kl"] > 1
    at.text_area(key="s_prompt").input("Why does it rain?")
    at.slider(key="s_scale").set_value(3.0)
    at.number_input(key="s_tokens").set_value(12)
    at.button(key="s_go").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    cfg = SteerConfig(db=db, feature=0, prompt="Why does it rain?", scale=3.0, max_tokens=12)
    expected = steer_with(load_steering(cfg), cfg)
    shown = [t.value for t in at.text]
    assert shown[-2:] == [expected.unsteered, expected.steered]
    assert np.isfinite(expected.typical)
