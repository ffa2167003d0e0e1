"""`shoggoth train` at scale: several SAEs from one activation stream (sae-lens's
MultiSAETrainer), and DDP under a real `torchrun` with two gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import default_sigint, kill_after_checkpoints
from safetensors.torch import load_file

from shoggoth import cli

TINY = [
    "--context-size",
    "32",
    "--k",
    "8",
    "--batch-tokens",
    "256",
    "--eval-tokens",
    "2048",
    "--lr",
    "3e-3",
]
EXE = Path(sys.executable).with_name("shoggoth")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def weights(folder: Path) -> dict:
    return load_file(str(folder / "sae_weights.safetensors"))


def largest_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_several_saes_from_one_stream_equal_separate_runs_and_resume(
    capfd, tmp_path, tiny_gpt2_dir
):
    """Two hooks in one run give, bit for bit, the SAEs of two separate runs, also after a
    kill -9 and --resume, and each lands in its own loadable folder."""
    tokens = ["--tokens", "30720", "--d-sae", "64", *TINY]
    together = [
        "train",
        "--model",
        tiny_gpt2_dir,
        "--layer",
        "0",
        "--layer",
        "2",
        *tokens,
        "--checkpoint-every",
        "10",
        "--keep-checkpoints",
        "100",
    ]
    out = tmp_path / "both"
    work = tmp_path / ".both.partial" / "checkpoints"
    proc = subprocess.Popen(
        [str(EXE), *map(str, together), "--out", str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    kill_after_checkpoints(proc, work, 2)
    assert not out.exists()
    saved = sorted(int(p.name) for p in work.glob("[0-9]*"))
    assert sorted(p.name for p in (work / str(saved[-1])).iterdir()) == [
        "blocks.0.hook_resid_post-d64",
        "blocks.2.hook_resid_post-d64",
    ]
    code, stdout, err = run(capfd, *together, "--out", out, "--resume")
    assert code == 0, err
    assert "resuming" in err and stdout.count("explained_variance") == 2
    for layer in (0, 2):
        alone = tmp_path / f"alone-{layer}"
        code, _, err = run(
            capfd, "train", "--model", tiny_gpt2_dir, "--layer", layer, *tokens, "--out", alone
        )
        assert code == 0, err
        folder = out / f"blocks.{layer}.hook_resid_post-d64"
        assert largest_difference(folder, alone) == 0.0
        meta = json.loads((folder / "shoggoth.json").read_text())
        assert meta["hook"] == f"blocks.{layer}.hook_resid_post"
        assert meta["trained_with"] == [f"blocks.{2 - layer}.hook_resid_post-d64"]
        assert meta["resumed_from_tokens"] == saved[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone-0", "alone-2", "both"]


def test_ddp_under_torchrun_trains_the_one_process_sae(capfd, tmp_path, tiny_gpt2_dir):
    """torchrun --nproc-per-node 2 (gloo): each rank streams one shard, gradients are averaged.
    The SAE equals one process streaming both shards (the same global batches) to float
    rounding (|Δw| < 1e-5; 1e-7 measured), the ranks end identical, and it is not the SAE of
    other batches (one unsharded stream: |Δw| > 1e-2)."""
    argv = [
        "train",
        "--model",
        tiny_gpt2_dir,
        "--layer",
        "1",
        "--tokens",
        "8192",
        "--d-sae",
        "64",
        *TINY,
        "--checkpoint-every",
        "0",
    ]
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "--no-python",
            str(EXE),
            *map(str, argv),
            "--ddp",
            "--out",
            str(ddp),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("explained_variance") == 1  # rank 0 reports
    meta = json.loads((ddp / "shoggoth.json").read_text())
    assert meta["ddp"] == {"world_size": 2, "backend": "gloo", "max_rank_difference": 0.0}
    assert meta["training_tokens"] == 8192 and meta["stream_shards"] == 2

    one = tmp_path / "one-process"
    code, _, err = run(capfd, *argv, "--shards", "2", "--out", one)
    assert code == 0, err
    assert largest_difference(ddp, one) < 1e-5
    ref = json.loads((one / "shoggoth.json").read_text())["evaluation"]
    assert abs(meta["evaluation"]["mse"] - ref["mse"]) < 1e-6

    other = tmp_path / "other-batches"
    code, _, err = run(capfd, *argv, "--out", other)
    assert code == 0, err
    assert largest_difference(ddp, other) > 1e-2
