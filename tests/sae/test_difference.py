"""Difference dictionaries: the paired stream, training on persona-minus-reference shifts, the
harvest of shifts, the persona signal and each mask's decomposition, on a planted model whose
personas write known directions (tests/planted_masks.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from helpers import battery
from planted_masks import (
    COMMON,
    PERSONAS,
    battery_personas,
    build_planted_masks,
    directions,
    training_personas,
)

from shoggoth.sae.prompts import EMPTY_SYSTEM

EXE = Path(sys.executable).with_name("shoggoth")
HOOK = "blocks.0.hook_resid_post"
pytestmark = pytest.mark.slow  # trains, harvests and labels
TRAINING = (
    "--architecture",
    "batchtopk",
    "--d-sae",
    "8",
    "--k",
    "2",
    "--tokens",
    "81920",
    "--batch-tokens",
    "64",
    "--lr",
    "2e-3",
    "--eval-tokens",
    "4096",
    "--checkpoint-every",
    "0",
    "--device",
    "cpu",
)
PERSONA_LABELS = ("mask-specific", "persona-concept", "mask-or-concept", "mask-family")


def shoggoth(*args: object) -> subprocess.CompletedProcess:
    """A command run in this process (a new one would import torch and transformers again,
    seconds each): its exit code must be 0; returns what it printed."""
    from shoggoth import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    assert code == 0, err.getvalue()[-3000:]
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_pairs_measure_only_the_shared_tokens(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    from shoggoth.battery.personas import Persona
    from shoggoth.sae.prompts import special_ids
    from shoggoth.sae.train.paired import make_pairs

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    personas = [
        Persona("pirate", "fiction", "", ("You are a pirate captain.", "Arr.")),
        Persona("helper", "assistant", "", ("Help the user kindly.",)),
    ]
    pieces = [
        ["What is rain?", "Rain is water."],
        ["Why is the sky blue?", "Sunlight."],
        ["Hello.", "Hi."],
    ]
    pairs = make_pairs(tok, pieces, personas, EMPTY_SYSTEM, 64, prepend_bos=True)
    assert pairs.persona_of == [0, 1, 0] and len(pairs) == 3
    specials = special_ids(tok)
    for p, r, kp, kr in zip(
        pairs.persona_ids,
        pairs.reference_ids,
        pairs.persona_keep,
        pairs.reference_keep,
        strict=True,
    ):
        measured_p = [t for t, k in zip(p, kp, strict=True) if k]
        measured_r = [t for t, k in zip(r, kr, strict=True) if k]
        assert measured_p == measured_r and measured_p  # the same tokens, in the same order
        assert not specials & set(measured_p)
        text = tok.decode(measured_p)
        assert "pirate" not in text and "Help" not in text  # never the system prompt
        assert p[0] == tok.bos_token_id
    # Piece 2 runs under the pirate's second paraphrase.
    assert "Arr." in tok.decode(pairs.persona_ids[2])
    # A context too short for anything beside the prompt leaves no pair: one clear line.
    from shoggoth.core.errors import BadInput

    with pytest.raises(BadInput, match="--context-size 3"):
        make_pairs(tok, pieces, personas, EMPTY_SYSTEM, 3, prepend_bos=True)


def test_a_kept_stream_gives_the_same_batches_with_one_forward_pass_per_chunk(tiny_gpt2):
    """`--pair-tokens` below `--tokens`: the paired stream keeps its chunks' activations, so
    three epochs run each chunk through the model once, and the batches are those of a stream
    that runs them again every epoch."""
    import torch

    from shoggoth.battery.personas import Persona
    from shoggoth.sae.train.paired import PairedStream, make_pairs

    personas = [
        Persona("pirate", "fiction", "", ("You are a pirate captain.",)),
        Persona("helper", "assistant", "", ("Help the user kindly.",)),
    ]
    pieces = [[f"Question {i} about the rain?", f"Answer {i}: water falls."] for i in range(12)]
    pairs = make_pairs(tiny_gpt2.tokenizer, pieces, personas, EMPTY_SYSTEM, 64, True)
    hook = "blocks.1.hook_resid_post"
    calls = []
    handle = tiny_gpt2.bridge.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        streams = [
            PairedStream(tiny_gpt2, [hook], pairs, 16, 0, chunk_pairs=4, keep=keep)
            for keep in (False, True)
        ]
        epoch = pairs.tokens()
        per_stream = []
        for stream in streams:
            calls.clear()
            batches = stream.batches()
            per_stream.append([next(batches) for _ in range(3 * epoch // 16)])
            per_stream[-1].append(len(calls))
    finally:
        handle.remove()
    plain, kept = per_stream
    chunks = len(streams[0].sizes)
    assert kept[-1] == 2 * chunks and plain[-1] >= 2 * 3 * chunks - 2  # persona + reference
    for a, b in zip(plain[:-1], kept[:-1], strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_the_paired_forward_passes_show_progress_before_the_first_batch(capsys, tiny_gpt2):
    """The optimizer's bar does not move while a chunk's pairs run through the model: the
    stream says so itself, in token pairs, before it yields the first batch (the first optimizer
    step) and again when the pass is done."""
    from shoggoth.battery.personas import Persona
    from shoggoth.sae.train.paired import PairedStream, make_pairs

    personas = [Persona("pirate", "fiction", "", ("You are a pirate captain.",))]
    pieces = [[f"Question {i} about the rain?", f"Answer {i}: water falls."] for i in range(8)]
    pairs = make_pairs(tiny_gpt2.tokenizer, pieces, personas, EMPTY_SYSTEM, 64, True)
    stream = PairedStream(
        tiny_gpt2, ["blocks.1.hook_resid_post"], pairs, 16, 0, chunk_pairs=4, keep=True
    )
    batches = stream.batches()
    capsys.readouterr()
    next(batches)
    before = capsys.readouterr().err
    total = pairs.tokens()
    assert (
        f"paired stream: forward passes (held for later epochs): 0/{total:,} token pairs" in before
    )
    for _ in range(2 * total // 16):
        next(batches)
    after = capsys.readouterr().err
    assert f"{total:,}/{total:,} token pairs" in after and "pairs/s" in after
    assert "forward passes" not in after.split(f"{total:,}/{total:,}")[1]  # held: one pass


def test_a_killed_paired_run_resumes_to_the_uninterrupted_one(capfd, tmp_path, tiny_gpt2_dir):
    """Both targets from one paired stream, its pairs kept for four epochs: kill -9 after two
    checkpoints, then --resume, gives the SAEs of a run nobody stopped, bit for bit."""
    from helpers import default_sigint, kill_after_checkpoints
    from safetensors.torch import load_file

    from shoggoth import cli

    argv = [
        "train",
        "--model",
        tiny_gpt2_dir,
        "--layer",
        "1",
        "--target",
        "residual",
        "--target",
        "difference",
        "--tokens",
        "16384",
        "--pair-tokens",
        "4096",
        "--d-sae",
        "32",
        "--k",
        "4",
        "--context-size",
        "48",
        "--batch-tokens",
        "256",
        "--eval-tokens",
        "1024",
        "--checkpoint-every",
        "8",
        "--keep-checkpoints",
        "100",
        "--device",
        "cpu",
    ]
    out, work = tmp_path / "killed", tmp_path / ".killed.partial" / "checkpoints"
    proc = subprocess.Popen(
        [str(EXE), *map(str, argv), "--out", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    whole = tmp_path / "whole"
    assert cli.main([*map(str, argv), "--out", str(whole)]) == 0  # meanwhile, in this process
    kill_after_checkpoints(proc, work, 2)
    assert not out.exists()
    capfd.readouterr()
    assert cli.main([*map(str, argv), "--out", str(out), "--resume"]) == 0
    assert "resuming" in capfd.readouterr().err
    for name in ("blocks.1.hook_resid_post-d32", "blocks.1.hook_resid_post-d32-difference"):
        a, b = (load_file(str(root / name / "sae_weights.safetensors")) for root in (out, whole))
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a), name
    meta = json.loads(
        (out / "blocks.1.hook_resid_post-d32-difference" / "shoggoth.json").read_text()
    )
    assert meta["resumed_from_tokens"] > 0 and meta["config"]["pair_tokens"] == 4096
    assert meta["distinct_training_tokens"] <= 4096 + 48 < meta["training_tokens"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted model, a residual SAE and a difference dictionary trained from one paired
    stream, both harvested in one pass and labelled."""
    root = tmp_path_factory.mktemp("planted-masks")
    model = build_planted_masks(root)
    (root / "train.yaml").write_text(training_personas())
    out = root / "saes"
    # BatchTopK: a token that needs one direction uses one feature, so the planted basis is the
    # sparsest (with a fixed k of 2, any basis of the cone between c and a persona's own
    # direction reconstructs as well, and TopK finds one at random).
    shoggoth(
        "train",
        "--model",
        model,
        "--layer",
        "0",
        "--target",
        "residual",
        "--target",
        "difference",
        *TRAINING,
        "--personas",
        root / "train.yaml",
        "--out",
        out,
    )
    residual, difference = out / f"{HOOK}-d8", out / f"{HOOK}-d8-difference"
    args = battery(root / "battery", 24, battery_personas())
    db = root / "db.duckdb"
    shoggoth(
        "harvest",
        "--db",
        db,
        "--sae-dir",
        residual,
        "--sae-dir",
        difference,
        *args,
        "--device",
        "cpu",
    )
    labelled = {}
    for sae in (residual.name, difference.name):
        run = shoggoth(
            "label", "--db", db, "--sae", sae, "--format", "json", "--calibration-seeds", "1"
        )
        labelled[sae] = json.loads(run.stdout)
    return {
        "root": root,
        "model": model,
        "residual": residual,
        "difference": difference,
        "db": db,
        "labelled": labelled,
    }


def _decoder(folder: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(folder / "sae_weights.safetensors"))["W_dec"]


def _cos(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (w @ v) / (np.linalg.norm(w, axis=1) * np.linalg.norm(v) + 1e-12)


def test_a_difference_dictionary_is_an_sae_lens_sae_of_the_shift(planted):
    from sae_lens import SAE

    folder = planted["difference"]
    meta = json.loads((folder / "shoggoth.json").read_text())
    assert meta["target"] == "difference" and meta["reference"] == EMPTY_SYSTEM
    assert meta["training_personas"] == [f"train_{p}" for p in PERSONAS]
    sae = SAE.load_from_disk(str(folder), device="cpu")  # sae-lens loads it as any SAE
    # No decoder bias: the shift every persona shares must be a feature.
    assert float(sae.b_dec.detach().abs().max()) == 0.0
    assert sae.cfg.metadata.shoggoth_target == "difference"
    assert json.loads((planted["residual"] / "shoggoth.json").read_text())["target"] == "residual"
    # Held-out pieces of the training personas: the difference dictionary carries the persona
    # signal, the residual SAE (the content's variance dominates its loss) much less.
    diff = meta["evaluation"]["persona_signal"]
    resid = json.loads((planted["residual"] / "shoggoth.json").read_text())["evaluation"][
        "persona_signal"
    ]
    assert diff >= 0.8 and resid < diff - 0.3, (diff, resid)


def test_every_planted_direction_is_recovered(planted):
    w = _decoder(planted["difference"])
    for name, v in directions().items():
        assert _cos(w, v).max() >= 0.9, (name, np.round(_cos(w, v), 2))


def test_labels_name_each_mask_and_the_common_direction(planted):
    w = _decoder(planted["difference"])
    con = duckdb.connect(str(planted["db"]), read_only=True)
    features = (
        con.execute(
            "SELECT feature, label, top_persona FROM features WHERE sae_id = ?",
            [planted["difference"].name],
        )
        .df()
        .set_index("feature")
    )
    # The reference's own documents are zero: no feature fires under the empty system turn.
    fired = con.execute(
        "SELECT count(*) FROM doc_features WHERE sae_id = ? AND persona = 'control_empty_system'",
        [planted["difference"].name],
    ).fetchone()[0]
    con.close()
    assert fired == 0
    for name, v in directions().items():
        best = int(np.argmax(_cos(w, v)))
        row = features.loc[best]
        if name == COMMON:
            assert row["label"] in ("shared", "mask-general", "shared-modulated"), (name, dict(row))
        else:
            assert row["label"] == "mask-specific" and row["top_persona"] == name, (name, dict(row))
    # Nothing else claims a persona.
    owned = features[features["label"].isin(PERSONA_LABELS)]
    assert len(owned) <= len(PERSONAS) + 2


def test_the_persona_signal_and_the_decomposition_match_the_plant(planted):
    diff, resid = (planted["labelled"][planted[k].name] for k in ("difference", "residual"))
    assert diff["persona_signal"] >= 0.8
    assert resid["persona_signal"] < diff["persona_signal"]
    con = duckdb.connect(str(planted["db"]), read_only=True)
    shifts = con.execute(
        "SELECT persona::VARCHAR AS persona, shift FROM document_shifts WHERE sae_id = ?",
        [planted["difference"].name],
    ).df()
    parts = con.execute(
        "SELECT persona, part, share, ci_low, ci_high FROM persona_label_shares WHERE sae_id = ?",
        [planted["difference"].name],
    ).df()
    pattern = con.execute(
        "SELECT persona, part, share FROM persona_decomposition WHERE sae_id = ?",
        [planted["difference"].name],
    ).df()
    con.close()
    dirs = directions()
    for persona in PERSONAS:
        v = np.stack(shifts.loc[shifts["persona"] == persona, "shift"].to_numpy()).mean(axis=0)
        n2 = float(v @ v)
        planted_share = {
            "shared": float(v @ dirs[COMMON]) ** 2 / n2,
            "own": float(v @ dirs[persona]) ** 2 / n2,
        }
        mine = parts[parts["persona"] == persona].set_index("part")
        assert abs(mine["share"].sum() - 1) < 1e-6
        for part, want in planted_share.items():
            got = mine.loc[part]
            assert abs(got["share"] - want) <= 0.1, (persona, part, got["share"], want)
            assert got["ci_low"] <= got["share"] <= got["ci_high"]
        # Cut by pattern: each persona's own feature fires for it alone, so the common pattern
        # holds a quarter of it (the mean over four personas) and its own modulation the rest.
        cut = pattern[pattern["persona"] == persona].set_index("part")["share"]
        assert abs(cut.sum() - 1) < 1e-6
        n = len(PERSONAS)
        assert abs(cut["own_features"] - (n - 1) / n * planted_share["own"]) <= 0.1, dict(cut)
        assert abs(cut["common"] - planted_share["shared"] - planted_share["own"] / n) <= 0.1


def test_the_composition_test_rebuilds_each_mask_from_its_features(planted, tmp_path):
    """`effects` on the difference dictionary: each planted persona's common pattern with its
    own modulation, steered into the reference document, reproduces its effect on the answer,
    and the pattern and the modulation alone add up to it; the whole shift (the ceiling: the
    hook is the model's last residual) reproduces all of it; replacing the persona's own
    modulation by the common pattern removes part of its effect, not all."""
    db = tmp_path / "db.duckdb"
    shutil.copy(planted["db"], db)
    name = planted["difference"].name
    shoggoth(
        "effects",
        "--db",
        db,
        "--sae",
        name,
        "--items-per-topic",
        "2",
        "--top",
        "4",
        "--baseline",
        "0",
        "--bootstrap",
        "200",
        "--device",
        "cpu",
    )
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT persona, test, part, share, ci_low, ci_high FROM "
        "persona_composition WHERE sae_id = ?",
        [name],
    ).df()
    con.close()
    got = rows.set_index(["persona", "test", "part"])
    for persona in PERSONAS:
        share = got.loc[(persona, "steer", "shift"), "share"]
        assert 0.97 <= share <= 1.03, (persona, share)
        composed = got.loc[(persona, "steer", "common+own")]
        assert composed["share"] >= 0.8, (persona, dict(composed))
        assert composed["ci_low"] <= composed["share"] <= composed["ci_high"]
        alone = (
            got.loc[(persona, "steer", "own"), "share"]
            + got.loc[(persona, "steer", "common"), "share"]
        )
        assert abs(alone - composed["share"]) <= 0.2, (persona, alone, composed["share"])
        removed = got.loc[(persona, "ablate", "own"), "share"]
        assert 0.1 <= removed <= 0.9, (persona, removed)
    # Every planted persona is tested, and no control.
    assert set(rows["persona"]) == set(PERSONAS)
    # steer on a difference dictionary adds the feature's direction to the reference document
    # (where the shift, and so the feature, is zero), whatever the residual holds.
    import torch

    from shoggoth.pipeline.effects.steer import SteerConfig, clamp, load_steering, steer_with

    own = int(np.argmax(_cos(_decoder(planted["difference"]), directions()["pirate"])))
    cfg = SteerConfig(
        db=db, sae=name, feature=own, prompt="Hello.", scale=100.0, max_tokens=6, device="cpu"
    )
    steering = load_steering(cfg)
    assert steering.system == EMPTY_SYSTEM and steering.kind == "difference"
    x = torch.randn(2, 3, 32)
    added = clamp(steering, 2.5)(x)
    assert torch.allclose(added, 2.5 * steering.sae.W_dec[own].detach().float().expand(2, 3, 32))
    answers = steer_with(steering, cfg)
    assert answers.steered != answers.unsteered, answers
    # The persona page shows its composition test in one line.
    from streamlit.testing.v1 import AppTest

    from shoggoth.explorer import app as explorer_app

    os.environ["SHOGGOTH_DB"] = str(db)
    at = AppTest.from_file(explorer_app.__file__, default_timeout=120)
    at.query_params.update({"persona": "poet", "sae": name})
    at.run()
    at.switch_page("views/personas.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    line = next(
        str(e.value) for e in at.get("text") if "steered into the reference" in str(e.value)
    )
    want = got.loc[("poet", "steer", "common+own")]
    assert line.startswith("poet: ") and f"{want['share']:.2f} [{want['ci_low']:.2f}" in line


def test_the_grid_reads_each_documents_shift_against_the_reference(planted, tmp_path):
    """`grid` on the difference dictionary: a document under no persona has no shift (the
    planted template tokens write nothing in the persona dimensions), so nothing fires on it;
    under a persona's prompt, its own direction's feature fires, on its own answer and on the
    battery's alike."""
    db = tmp_path / "db.duckdb"
    shutil.copy(planted["db"], db)
    name = planted["difference"].name
    shoggoth(
        "generate",
        "--db",
        db,
        "--sae",
        name,
        "--items-per-topic",
        "1",
        "--max-tokens",
        "6",
        "--device",
        "cpu",
    )
    shoggoth("grid", "--db", db, "--sae", name, "--device", "cpu")
    con = duckdb.connect(str(db), read_only=True)
    fired = con.execute(
        """
        SELECT d.cell, d.context, f.feature, count(*) AS n
        FROM grid_doc_features f JOIN grid_documents d USING (sae_id, answer_set, neutral, doc)
        WHERE f.sae_id = ? GROUP BY ALL""",
        [name],
    ).df()
    con.close()
    assert not len(fired[fired["context"] == "control_none"]), fired
    w = _decoder(planted["difference"])
    for persona in PERSONAS:
        own = int(np.argmax(_cos(w, directions()[persona])))
        for cell in ("in_action", "neutral_text"):
            hits = fired[(fired["context"] == persona) & (fired["cell"] == cell)]
            assert own in set(hits["feature"]), (persona, cell, hits)


def test_a_battery_without_persona_directions_gets_no_persona_label(tmp_path):
    model = build_planted_masks(tmp_path, null=True)
    (tmp_path / "train.yaml").write_text(training_personas(null=True))
    out = tmp_path / "diff"
    shoggoth(
        "train",
        "--model",
        model,
        "--layer",
        "0",
        "--target",
        "difference",
        *TRAINING,
        "--tokens",
        "10240",
        "--personas",
        tmp_path / "train.yaml",
        "--out",
        out,
    )
    args = battery(tmp_path / "battery", 12, battery_personas(null=True))
    db = tmp_path / "db.duckdb"
    shoggoth("harvest", "--db", db, "--sae-dir", out, *args, "--device", "cpu")
    labels = json.loads(
        shoggoth("label", "--db", db, "--format", "json", "--calibration-seeds", "1").stdout
    )["labels"]
    assert sum(n for k, n in labels.items() if k != "dead") > 0, labels  # wording shifts fire
    assert not {k: v for k, v in labels.items() if k in PERSONA_LABELS}, labels


def test_the_composition_test_reuses_the_screens_runs_without_changing_a_number(planted):
    """The composition test takes every condition's clean run from the screen: its arrays equal
    those of running each document again (a screen saved without them) to float rounding."""
    from shoggoth.pipeline.effects.compose import compose_item
    from shoggoth.pipeline.effects.measure import clean_rows, screen_item
    from shoggoth.pipeline.effects.run import EffectsConfig, load_causal, make_setup, read_inputs

    cfg = EffectsConfig(
        db=planted["db"], sae=planted["difference"].name, items_per_topic=1, device="cpu"
    )
    inputs = read_inputs(cfg)
    assert inputs.parts is not None and inputs.kind == "difference"
    model, sae = load_causal(inputs.db, inputs.record, "cpu")
    s = make_setup(inputs, model, sae, cfg)
    for item in range(2):
        screen = screen_item(s, item)
        reused = compose_item(s, item, inputs.parts, *clean_rows(s, item, screen))
        rerun = compose_item(
            s,
            item,
            inputs.parts,
            *clean_rows(s, item, {k: v for k, v in screen.items() if k != "x"}),
        )
        for key in ("delta", "steer", "ablate"):
            scale = float(np.abs(rerun[key]).max())
            assert scale > 0.01, key
            np.testing.assert_allclose(reused[key], rerun[key], atol=1e-4 * scale, rtol=0)


def test_the_composition_edits_ride_in_the_exact_pass_without_changing_a_number(planted, tmp_path):
    """The effects step runs the composition test's edits in the exact pass's batches (one
    unedited row for both): its arrays equal the test run on its own, and the exact pass's own
    arrays equal those of a pass without the edits."""
    from shoggoth.pipeline.effects.compose import (
        compose_item,
        composition_arrays,
        composition_edits,
    )
    from shoggoth.pipeline.effects.measure import clean_rows, exact_item, exact_rows, screen_item
    from shoggoth.pipeline.effects.run import (
        EffectsConfig,
        load_causal,
        make_setup,
        plan_effects,
        read_inputs,
    )

    cfg = EffectsConfig(
        db=planted["db"], sae=planted["difference"].name, items_per_topic=1, device="cpu"
    )
    inputs = read_inputs(cfg)
    assert inputs.parts is not None
    model, sae = load_causal(inputs.db, inputs.record, "cpu")
    s = make_setup(inputs, model, sae, cfg)
    screens = [screen_item(s, item) for item in range(2)]
    _, _, plan = plan_effects(tmp_path, cfg, inputs, screens)
    assert plan.features
    for item, screen in enumerate(screens):
        lp, x = clean_rows(s, item, screen)
        edits = composition_edits(s, inputs.parts, x)
        assert sum(len(v) for v in edits.values()) == 6 * (len(s.conditions) - 1)
        merged, changes = exact_rows(s, item, plan, screen["fired"], x[0], edits)
        assert sorted(changes) == sorted(edits)
        alone = exact_item(s, item, plan, screen["fired"], x[0])
        for key, value in alone.items():
            np.testing.assert_allclose(merged[key], value, atol=1e-5, rtol=0, equal_nan=True)
        together = composition_arrays(s, lp, changes)
        apart = compose_item(s, item, inputs.parts, lp, x)
        for key in ("delta", "steer", "ablate"):
            scale = float(np.abs(apart[key]).max())
            assert scale > 0.01, key
            np.testing.assert_allclose(together[key], apart[key], atol=1e-5 * scale, rtol=0)


def test_the_explorer_shows_each_masks_decomposition(planted):
    from streamlit.testing.v1 import AppTest

    from shoggoth.explorer import app as explorer_app

    os.environ["SHOGGOTH_DB"] = str(planted["db"])
    at = AppTest.from_file(explorer_app.__file__, default_timeout=120)
    at.query_params["sae"] = planted["difference"].name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = "\n".join(
        str(e.value)
        for kind in ("subheader", "text", "metric")
        for e in at.get(kind)
        if hasattr(e, "value")
    )
    assert "What this dictionary sees of the masks" in text
    for persona in PERSONAS:
        assert f"{persona}'s shift: " in text and "the pattern every mask shares" in text
    assert not [w for w in at.warning if "persona signal" in str(w.value)]  # it carries it
    at.query_params.update({"persona": "pirate", "sae": planted["difference"].name})
    at.switch_page("views/personas.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("pirate's shift: " in str(e.value) for e in at.get("text"))
    # The residual SAE carries little of it: the overview says its labels cannot speak.
    at.query_params.update({"sae": planted["residual"].name})
    at.switch_page("views/overview.py")
    at.run()
    assert any("cannot speak for the model" in str(w.value) for w in at.warning)
