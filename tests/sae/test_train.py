"""`shoggoth train` and `shoggoth sae import`: real sae-lens training on the tiny GPT-2 and
MiniLM, kill -9 + --resume, and every bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import default_sigint
from sae_lens import SAE

from shoggoth import cli

TINY = [
    "--context-size",
    "32",
    "--d-sae",
    "64",
    "--k",
    "8",
    "--batch-tokens",
    "256",
    "--eval-tokens",
    "2048",
    "--lr",
    "3e-3",
]


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def test_train_tiny_gpt2_writes_a_loadable_sae(capfd, tmp_path, tiny_gpt2_dir, tiny_gpt2):
    out = tmp_path / "sae"
    code, stdout, err = run(
        capfd,
        "train",
        "--model",
        tiny_gpt2_dir,
        "--layer",
        "1",
        "--tokens",
        "16384",
        "--out",
        out,
        *TINY,
    )
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no work dir left behind
    written = {p.name for p in out.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "shoggoth.json"} <= written
    sae = SAE.load_from_disk(str(out))
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (tiny_gpt2.d_model, 64)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    meta = json.loads((out / "shoggoth.json").read_text())
    assert meta["hook"] == "blocks.1.hook_resid_post" and meta["training_tokens"] >= 16384
    assert meta["model"] == str(tiny_gpt2_dir) and meta["seed"] == 0
    assert set(meta["versions"]) >= {"sae-lens", "transformer-lens", "torch"}
    ev = meta["evaluation"]
    assert ev["l0"] == pytest.approx(8.0, abs=0.1)  # top-k: k active (ReLU may zero a few)
    assert 0 <= ev["dead_fraction"] <= 1 and ev["n_tokens"] > 1000
    assert -1 < ev["explained_variance"] <= 1
    assert {"ce_clean", "ce_with_sae", "ce_zero_ablation", "ce_loss_recovered"} <= set(ev)
    for key in ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered"):
        assert key in stdout  # the table printed at the end


@pytest.mark.parametrize(
    "architecture", ["batchtopk", "matryoshka", "jumprelu", "standard", "gated"]
)
def test_every_architecture_trains_and_loads(capfd, tmp_path, tiny_gpt2_dir, architecture):
    out = tmp_path / architecture
    code, _, err = run(
        capfd,
        "train",
        "--model",
        tiny_gpt2_dir,
        "--layer",
        "0",
        "--tokens",
        "4096",
        "--architecture",
        architecture,
        "--out",
        out,
        "--sparsity-coefficient",
        "0.1",
        *TINY,
    )
    assert code == 0, err
    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.d_sae == 64 and sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    meta = json.loads((out / "shoggoth.json").read_text())
    assert meta["architecture"] == architecture
    ev = meta["evaluation"]
    assert 0 < ev["l0"] <= 64 and -1 < ev["explained_variance"] <= 1


@pytest.mark.slow  # trains on real MiniLM weights
def test_train_minilm_short_run_learns(capfd, tmp_path):
    out = tmp_path / "minilm-sae"
    code, _, err = run(
        capfd,
        "train",
        "--model",
        "minilm",
        "--tokens",
        "40000",
        "--context-size",
        "64",
        "--expansion",
        "2",
        "--k",
        "16",
        "--batch-tokens",
        "512",
        "--eval-tokens",
        "4096",
        "--out",
        out,
    )
    assert code == 0, err
    meta = json.loads((out / "shoggoth.json").read_text())
    assert meta["model"] == "minilm" and meta["hook"] == "blocks.3.hook_resid_post"
    assert meta["d_sae"] == 768 and meta["dataset"] == "builtin"
    ev = meta["evaluation"]
    assert ev["l0"] == pytest.approx(16.0, abs=0.1)
    assert ev["explained_variance"] > 0.4  # even 40k tokens learn a good share of the variance
    assert "ce_loss_recovered" not in ev  # an encoder: no next-token loss
    assert "training_tokens" in meta and SAE.load_from_disk(str(out)).cfg.d_sae == 768


def train_process(model_dir, out, tokens, *extra):
    exe = Path(sys.executable).with_name("shoggoth")
    cmd = [
        str(exe),
        "train",
        "--model",
        str(model_dir),
        "--layer",
        "1",
        "--tokens",
        str(tokens),
        "--out",
        str(out),
        "--checkpoint-every",
        "4",
        *TINY,
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, tiny_gpt2_dir):
    out = tmp_path / "interrupted"
    work = tmp_path / ".interrupted.partial" / "checkpoints"
    tokens = 150_000
    proc = train_process(tiny_gpt2_dir, out, tokens, "--checkpoint-every", "20")
    deadline = time.time() + 120
    # The first scheduled checkpoint shows the trainer is inside fit(); then interrupt it.
    while time.time() < deadline and not any(p.name.isdigit() for p in work.glob("*")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    first = min(int(p.name) for p in work.iterdir() if p.name.isdigit())
    time.sleep(0.7)  # between two scheduled checkpoints (once, resuming from there crashed)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err.strip().splitlines()[-1]
    saved = max(int(p.name) for p in work.iterdir() if p.name.isdigit())
    assert first <= saved < tokens
    resumed = train_process(tiny_gpt2_dir, out, tokens, "--checkpoint-every", "20", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    meta = json.loads((out / "shoggoth.json").read_text())
    assert meta["resumed_from_tokens"] == saved and meta["training_tokens"] >= tokens


def nothing_written(tmp_path, before):
    return sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--dataset", "{tmp}/missing.txt"], ["{tmp}/missing.txt", "no such file"]),
        (["--dataset", "{tmp}/empty.txt"], ["{tmp}/empty.txt", "no text"]),
        (["--dataset", "{tmp}/docs.jsonl", "--text-column", "body"], ["'body'", "line 1"]),
        (["--k", "64", "--d-sae", "64"], ["--k 64", "--d-sae 64"]),
        (["--k", "1000", "--expansion", "1"], ["--k 1000", "d_sae"]),
        (["--d-sae", "0"], ["--d-sae 0"]),
        (["--d-sae", "-5"], ["--d-sae -5"]),
        (["--hook", "blocks.1.hook_nope"], ["blocks.1.hook_nope"]),
        (["--layer", "3"], ["layer 3"]),
        (["--resume"], ["--resume", "no checkpoint"]),
        (["--out", "{tmp}/exists"], ["{tmp}/exists", "already exists"]),
        (["--tokens", "0"], ["--tokens 0"]),
        (["--architecture", "sparse"], ["sparse"]),
        (["--ddp"], ["--ddp", "torchrun"]),
        (["--shards", "3"], ["--batch-tokens 256", "--shards 3"]),
        (["--d-sae", "64", "--d-sae", "4"], ["--k 8", "--d-sae 4"]),
    ],
)
def test_train_bad_input(capfd, tmp_path, tiny_gpt2_dir, argv, names):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "exists").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    no_width = [a for i, a in enumerate(TINY) if "--d-sae" not in TINY[max(0, i - 1) : i + 1]]
    code, out, err = run(
        capfd, "train", "--model", tiny_gpt2_dir, "--tokens", "2048", *no_width, *argv
    )
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name.replace("{tmp}", str(tmp_path)) in lines[0]
    assert nothing_written(tmp_path, before)


def test_train_reads_a_yaml_config(capfd, tmp_path, tiny_gpt2_dir):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"model: {tiny_gpt2_dir}\nlayer: 0\ntokens: 4096\ncontext-size: 32\n"
        "d_sae: 48\nk: 4\nbatch_tokens: 256\neval_tokens: 1024\n"
    )
    out = tmp_path / "from-yaml"
    code, _, err = run(capfd, "train", "--config", cfg, "--k", "6", "--out", out)
    assert code == 0, err
    meta = json.loads((out / "shoggoth.json").read_text())
    assert meta["hook"] == "blocks.0.hook_resid_post" and meta["d_sae"] == 48
    assert meta["config"]["k"] == 6
    assert meta["evaluation"]["l0"] == pytest.approx(6.0, abs=0.1)
    # The same --out again is refused, and replaced with --overwrite.
    code, _, err = run(capfd, "train", "--config", cfg, "--out", out)
    assert code == 2 and "already exists" in err
    code, _, err = run(capfd, "train", "--config", cfg, "--k", "5", "--out", out, "--overwrite")
    assert code == 0, err
    l0 = json.loads((out / "shoggoth.json").read_text())["evaluation"]["l0"]
    assert l0 == pytest.approx(5.0, abs=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from-yaml", "train.yaml"]


def test_sae_import_checks_the_model(
    capfd, monkeypatch, tmp_path, tmp_path_factory, tiny_gpt2_dir, tiny_gpt2_base_dir
):
    src = tmp_path / "trained"
    code, _, err = run(
        capfd,
        "train",
        "--model",
        tiny_gpt2_dir,
        "--layer",
        "2",
        "--tokens",
        "4096",
        "--out",
        src,
        *TINY,
    )
    assert code == 0, err
    dst = tmp_path / "imported"
    code, _, err = run(
        capfd,
        "sae",
        "import",
        "--path",
        src,
        "--model",
        tiny_gpt2_base_dir,
        "--out",
        dst,
        "--eval-tokens",
        "1024",
    )
    assert code == 0, err
    meta = json.loads((dst / "shoggoth.json").read_text())
    assert meta["hook"] == "blocks.2.hook_resid_post" and meta["imported_from"] == str(src)
    assert meta["evaluation"]["l0"] == pytest.approx(8.0, abs=0.1)
    assert SAE.load_from_disk(str(dst)).cfg.d_sae == 64

    before = sorted(p.name for p in tmp_path.iterdir())
    # MiniLM has d_model 384, the SAE reads 32 dimensions.
    code, out, err = run(
        capfd, "sae", "import", "--path", src, "--model", "minilm", "--out", tmp_path / "x"
    )
    assert code == 2 and "d_in 32" in err and "384" in err and len(err.strip().splitlines()) == 1
    # A model with the right width but too few layers for the SAE's hook.
    from helpers import build_tiny_gpt2

    shallow = build_tiny_gpt2(tmp_path / "shallow", None, n_layer=2)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(
        capfd, "sae", "import", "--path", src, "--model", shallow, "--out", tmp_path / "x"
    )
    assert code == 2 and "blocks.2.hook_resid_post" in err
    code, out, err = run(capfd, "sae", "import", "--path", tmp_path, "--out", tmp_path / "x")
    assert code == 2 and "not an sae-lens SAE directory" in err
    # A registry release for another model (gpt2-small; --model left at smollm2): refused by name.
    code, out, err = run(
        capfd,
        "sae",
        "import",
        "--release",
        "gpt2-small-res-jb",
        "--sae",
        "blocks.8.hook_resid_pre",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "made for model 'gpt2-small'" in err and "'smollm2'" in err
    # Offline, with nothing in the Hugging Face cache: one line saying so.
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run(
        capfd,
        "sae",
        "import",
        "--release",
        "gpt2-small-res-jb",
        "--sae",
        "blocks.8.hook_resid_pre",
        "--model",
        tiny_gpt2_base_dir,
        "--other-model",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (
        "--release gpt2-small-res-jb --sae blocks.8.hook_resid_pre: not in the Hugging Face cache"
        in err
        and "no network" in err
    )
    code, out, err = run(capfd, "sae", "import", "--out", tmp_path / "x")
    assert code == 2 and "--path" in err
    assert nothing_written(tmp_path, before)


def checkpoints(root: Path) -> list[int]:
    return sorted(int(p.name) for p in root.glob("*") if p.name.isdigit())


def weights_digest(directory: Path) -> str:
    import hashlib

    return hashlib.sha256((directory / "sae_weights.safetensors").read_bytes()).hexdigest()


def test_a_resume_from_every_checkpoint_equals_the_uninterrupted_run(tmp_path, tiny_gpt2_dir):
    """Bit for bit on the CPU: the activation stream, the optimizer, the scheduler, the sparsity
    counters and the step count all continue where the checkpoint left them."""
    import shutil

    tokens, every = 61_440, ["--checkpoint-every", "40", "--keep-checkpoints", "100"]
    plain = tmp_path / "plain"
    whole = train_process(tiny_gpt2_dir, plain, tokens, *every)  # runs beside the killed one

    out = tmp_path / "resumed"
    work = tmp_path / ".resumed.partial"
    proc = train_process(tiny_gpt2_dir, out, tokens, *every)
    deadline = time.time() + 300
    while time.time() < deadline and len(checkpoints(work / "checkpoints")) < 4:
        assert proc.poll() is None, "training finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, err = whole.communicate(timeout=400)
    assert whole.returncode == 0, err
    want = weights_digest(plain)
    pristine = tmp_path / "pristine"
    shutil.copytree(work, pristine)
    saved = sorted(int(p.name) for p in (pristine / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) >= 4 and saved[-1] < tokens
    # Without --resume, an interrupted run is not silently thrown away.
    again = train_process(tiny_gpt2_dir, out, tokens, *every)
    _, err = again.communicate(timeout=240)
    assert again.returncode == 2 and "--resume" in err and not out.exists()
    for start in (saved[2],):  # mid-run, with checkpoints before and after it
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        for later in saved:
            if later > start:
                shutil.rmtree(work / "checkpoints" / str(later))
        resumed = train_process(tiny_gpt2_dir, out, tokens, *every, "--resume")
        _, err = resumed.communicate(timeout=400)
        assert resumed.returncode == 0, err
        meta = json.loads((out / "shoggoth.json").read_text())
        assert meta["resumed_from_tokens"] == start
        assert weights_digest(out) == want, f"resumed from {start}: other weights"
        shutil.rmtree(out)
