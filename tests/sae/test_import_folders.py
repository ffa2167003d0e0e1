"""`shoggoth sae import --path` on sparsify (1.3.3) layer folders and dictionary_learning folders:
the folders are written here by hand (no sparsify or dictionary_learning dependency), imported
onto the tiny GPT-2, reloaded from the published sae-lens folder, and their encode/decode compared
with the source libraries' formulas recomputed in numpy. Every refusal: exit 2, one line, nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from helpers import battery, build_random_sae
from sae_lens import SAE
from safetensors.torch import save_file

from shoggoth import cli

D_IN = 32  # the tiny GPT-2's d_model
K = 4


def run(capfd, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def rng_weights(seed: int, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.normal(0, 0.3, shape)).astype(np.float32) for name, shape in shapes.items()}


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0)


def topk(a: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest entries, zero the rest."""
    keep = np.argpartition(-a, k - 1, axis=-1)[:, :k]
    out = np.zeros_like(a)
    np.put_along_axis(out, keep, np.take_along_axis(a, keep, axis=-1), axis=-1)
    return out


# sparsify ---------------------------------------------------------------------------------------


def write_sparsify(
    run_dir: Path,
    hookpoint: str = "layers.1",
    d_in: int = D_IN,
    d_sae: int = 64,
    cfg: dict | None = None,
    seed: int = 0,
    extra: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Path, dict[str, np.ndarray]]:
    """A sparsify run folder with one layer folder; the layer folder and its weights."""
    layer = run_dir / hookpoint
    layer.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps(
            {"model": "EleutherAI/pythia-70m", "dataset": "x", "ctx_len": 64, "hookpoints": []}
        )
    )
    full = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": d_sae,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
        **(cfg or {}),
    }
    (layer / "cfg.json").write_text(json.dumps(full))
    w = rng_weights(seed, enc=(d_sae, d_in), enc_b=(d_sae,), dec=(d_sae, d_in), b_dec=(d_in,))
    tensors = {
        "encoder.weight": w["enc"],
        "encoder.bias": w["enc_b"],
        "W_dec": w["dec"],
        "b_dec": w["b_dec"],
    }
    state = {k: torch.from_numpy(v).to(dtype) for k, v in tensors.items()}
    save_file({**state, **(extra or {})}, str(layer / "sae.safetensors"))
    # What sparsify itself computes with: the stored values, as float64.
    return layer, {
        k: v.to(torch.float64).numpy()
        for k, v in zip(["enc", "enc_b", "dec", "b_dec"], state.values(), strict=True)
    }


def sparsify_encode(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """sparsify 1.3.3 (sparse_coder.py, fused_encoder.py): topk(relu((x - b_dec) @ W.T + b))."""
    return topk(relu((x - w["b_dec"]) @ w["enc"].T + w["enc_b"]), K)


def sparsify_decode(acts: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    return acts @ w["dec"] + w["b_dec"]


def inputs(seed: int = 1, n: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, D_IN)).astype(np.float32)


def check_same_function(sae: SAE, encode, decode) -> None:
    x = inputs()
    with torch.no_grad():
        acts = sae.encode(torch.from_numpy(x)).numpy()
        recon = sae.decode(torch.from_numpy(acts)).numpy()
    expected = encode(x.astype(np.float64))
    assert (acts != 0).sum() > 0
    np.testing.assert_allclose(acts, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(recon, decode(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "num_latents, expansion_factor, d_sae, dtype",
    [
        (0, 2, 64, torch.float32),  # the width from expansion_factor: 32 × 2
        (48, 32, 48, torch.bfloat16),  # num_latents wins; bf16 weights as sparsify stores them
    ],
)
def test_sparsify_folder_imports_as_the_same_function(
    capfd, tmp_path, tiny_gpt2_dir, num_latents, expansion_factor, d_sae, dtype
):
    layer, w = write_sparsify(
        tmp_path / "run",
        d_sae=d_sae,
        dtype=dtype,
        cfg={"num_latents": num_latents, "expansion_factor": expansion_factor},
    )
    dst = tmp_path / "imported"
    code, _, err = run(
        capfd,
        "sae",
        "import",
        "--path",
        layer,
        "--model",
        tiny_gpt2_dir,
        "--out",
        dst,
        "--eval-tokens",
        "256",
    )
    assert code == 0, err
    assert "trained on 'EleutherAI/pythia-70m'" in err  # the run's config.json names the model
    meta = json.loads((dst / "shoggoth.json").read_text())
    assert meta["hook"] == "blocks.1.hook_resid_post"  # layers.1: the output of block 1
    assert meta["imported_from"] == f"sparsify folder {layer.resolve()}"
    assert (meta["architecture"], meta["d_sae"]) == ("topk", d_sae)
    assert meta["evaluation"]["l0"] <= K
    sae = SAE.load_from_disk(str(dst))
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, d_sae)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    check_same_function(sae, lambda x: sparsify_encode(x, w), lambda a: sparsify_decode(a, w))


def test_gpt2_style_hookpoint_names_read_the_block_output(tmp_path):
    from shoggoth.sae.train.folders import load_folder

    layer, _ = write_sparsify(tmp_path / "run", hookpoint="h.2")
    sae, origin = load_folder(layer, "cpu")
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert origin.startswith("sparsify folder ")


# dictionary_learning ----------------------------------------------------------------------------

LINEAR = ("AutoEncoderTopK", "BatchTopKSAE", "AutoEncoder")
"""Classes whose ae.pt holds torch Linear layers (encoder.weight [n,d], decoder.weight [d,n]);
the others hold W_enc [d,n] and W_dec [n,d]."""


def write_dictionary_learning(
    path: Path,
    dict_class: str,
    layer: int = 2,
    d_in: int = D_IN,
    d_sae: int = 64,
    threshold: float | None = 0.3,
    trainer: dict | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A dictionary_learning folder (config.json + ae.pt); the weights as numpy arrays."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "trainer": {
                    "trainer_class": "X",
                    "dict_class": dict_class,
                    "activation_dim": d_in,
                    "dict_size": d_sae,
                    "k": K,
                    "layer": layer,
                    "lm_name": "Qwen/Qwen2.5-7B",
                    "submodule_name": f"resid_post_layer_{layer}",
                    **(trainer or {}),
                },
                "buffer": {"d_submodule": d_in, "ctx_len": 64},
            }
        )
    )
    w = rng_weights(seed, W_enc=(d_in, d_sae), b_enc=(d_sae,), W_dec=(d_sae, d_in), b_dec=(d_in,))
    rng = np.random.default_rng(seed + 1)
    w["threshold"] = (
        rng.uniform(0, 0.5, d_sae).astype(np.float32)
        if dict_class == "JumpReluAutoEncoder"
        else np.full(d_sae, threshold, np.float32)
    )
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    if dict_class in LINEAR:
        state = {
            "encoder.weight": t["W_enc"].T.contiguous(),
            "encoder.bias": t["b_enc"],
            "decoder.weight": t["W_dec"].T.contiguous(),
        }
    else:
        state = {"W_enc": t["W_enc"], "b_enc": t["b_enc"], "W_dec": t["W_dec"]}
    state["bias" if dict_class == "AutoEncoder" else "b_dec"] = t["b_dec"]
    if dict_class == "JumpReluAutoEncoder":
        state["threshold"] = t["threshold"]
    elif dict_class != "AutoEncoder":
        state["threshold"] = torch.tensor(threshold, dtype=torch.float32)  # one, for every latent
        state["k"] = torch.tensor(K, dtype=torch.int32)
    if dict_class == "MatryoshkaBatchTopKSAE":
        state["group_sizes"] = torch.tensor([16, 48])
    torch.save(state, path / "ae.pt")
    return {k: v.astype(np.float64) for k, v in w.items()}


def dictionary_learning_encode(
    x: np.ndarray, w: dict[str, np.ndarray], dict_class: str
) -> np.ndarray:
    """dictionary_learning's `encode` of each class at inference (its defaults)."""
    if dict_class == "JumpReluAutoEncoder":  # no b_dec subtraction
        pre = x @ w["W_enc"] + w["b_enc"]
        return relu(pre * (pre > w["threshold"]))
    post = relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    if dict_class == "AutoEncoderTopK":  # use_threshold=False: per-token top k
        return topk(post, K)
    if dict_class == "AutoEncoder":
        return post
    return post * (post > w["threshold"])  # BatchTopK, Matryoshka: use_threshold=True


@pytest.mark.parametrize(
    "dict_class, threshold, architecture",
    [
        ("BatchTopKSAE", 0.3, "jumprelu"),
        ("MatryoshkaBatchTopKSAE", -1.0, "jumprelu"),  # the untrained threshold: a plain ReLU
        ("AutoEncoderTopK", 0.5, "topk"),  # its threshold is not used by the default encode
        ("JumpReluAutoEncoder", None, "jumprelu"),
        ("AutoEncoder", None, "standard"),
    ],
)
def test_dictionary_learning_folder_imports_as_the_same_function(
    capfd, tmp_path, tiny_gpt2_dir, dict_class, threshold, architecture
):
    src = tmp_path / "trainer_0"
    w = write_dictionary_learning(src, dict_class, threshold=threshold)
    dst = tmp_path / "imported"
    code, _, err = run(
        capfd,
        "sae",
        "import",
        "--path",
        src,
        "--model",
        tiny_gpt2_dir,
        "--out",
        dst,
        "--no-evaluate",
    )
    assert code == 0, err
    meta = json.loads((dst / "shoggoth.json").read_text())
    assert meta["hook"] == "blocks.2.hook_resid_post"  # trainer.layer 2: block 2's output
    assert meta["imported_from"] == f"dictionary_learning folder {src.resolve()}"
    assert (meta["architecture"], meta["d_sae"]) == (architecture, 64)
    sae = SAE.load_from_disk(str(dst))
    assert sae.cfg.metadata.model_name == "Qwen/Qwen2.5-7B"
    check_same_function(
        sae,
        lambda x: dictionary_learning_encode(x, w, dict_class),
        lambda a: a @ w["W_dec"] + w["b_dec"],
    )


def test_sae_lens_folders_still_import_as_before(capfd, tmp_path, tiny_gpt2_dir):
    src = build_random_sae(
        tmp_path / "saelens", str(tiny_gpt2_dir), D_IN, "blocks.0.hook_resid_post"
    )
    dst = tmp_path / "imported"
    code, _, err = run(
        capfd,
        "sae",
        "import",
        "--path",
        src,
        "--model",
        tiny_gpt2_dir,
        "--out",
        dst,
        "--no-evaluate",
    )
    assert code == 0, err
    assert json.loads((dst / "shoggoth.json").read_text())["imported_from"] == str(src.resolve())


# refusals ---------------------------------------------------------------------------------------


def sparsify_case(
    cfg: dict | None = None,
    hookpoint: str = "layers.1",
    d_in: int = D_IN,
    extra: dict | None = None,
    corrupt_d_in: bool = False,
):
    def make(root: Path) -> Path:
        layer, _ = write_sparsify(
            root / "run", hookpoint=hookpoint, d_in=d_in, cfg=cfg, extra=extra
        )
        if corrupt_d_in:  # cfg.json says 16: the tensors are 32 wide
            (layer / "cfg.json").write_text(
                json.dumps({**json.loads((layer / "cfg.json").read_text()), "d_in": 16})
            )
        return layer

    return make


def dl_case(dict_class: str = "BatchTopKSAE", **kwargs):
    def make(root: Path) -> Path:
        write_dictionary_learning(root / "dl", dict_class, **kwargs)
        return root / "dl"

    return make


def unknown(root: Path) -> Path:
    (root / "junk").mkdir(parents=True)
    (root / "junk" / "weights.bin").write_bytes(b"\0" * 8)
    return root / "junk"


def whole_run(root: Path) -> Path:
    write_sparsify(root / "run")
    return root / "run"


@pytest.mark.parametrize(
    "make, names",
    [
        (
            sparsify_case(hookpoint="layers.1.mlp"),
            ["layers.1.mlp", "an MLP output", "not the residual stream"],
        ),
        (sparsify_case(hookpoint="layers.1.self_attn"), ["an attention output"]),
        (sparsify_case(hookpoint="embed_tokens"), ["'embed_tokens'", "not a block output"]),
        (sparsify_case(cfg={"transcode": True}), ["transcoder", "transcode: true"]),
        (
            sparsify_case(cfg={"skip_connection": True}, extra={"W_skip": torch.zeros(D_IN, D_IN)}),
            ["skip connection"],
        ),
        (sparsify_case(extra={"W_skip": torch.zeros(D_IN, D_IN)}), ["sae.safetensors", "W_skip"]),
        (sparsify_case(cfg={"activation": "groupmax"}), ["'groupmax'", "only topk"]),
        (
            sparsify_case(
                cfg={"k": 65},
            ),
            ["cfg.json", "k 65", "64 latents"],
        ),
        (sparsify_case(d_in=64), ["d_in 64", "d_model 32"]),  # does not fit the model
        (sparsify_case(corrupt_d_in=True), ["sae.safetensors", "encoder.weight", "[64, 16]"]),
        (dl_case("GatedAutoEncoder"), ["config.json", "'GatedAutoEncoder'"]),
        (dl_case(trainer={"submodule_name": "mlp_out_layer_2"}), ["'mlp_out_layer_2'"]),
        (dl_case(trainer={"k": 8}), ["ae.pt", "k 4", "k 8"]),
        (dl_case(d_in=64), ["d_in 64", "d_model 32"]),
        (
            unknown,
            [
                "not an sae-lens SAE directory",
                "sparsify layer folder",
                "dictionary_learning folder",
            ],
        ),
        (whole_run, ["a sparsify run folder", "layers.1"]),
    ],
    ids=[
        "mlp",
        "attention",
        "embed",
        "transcode",
        "skip",
        "stray-W_skip",
        "groupmax",
        "k",
        "model-d_in",
        "cfg-d_in",
        "gated",
        "dl-mlp",
        "dl-k",
        "dl-d_in",
        "unknown",
        "run",
    ],
)
def test_refusals_are_one_line_and_write_nothing(capfd, tmp_path, tiny_gpt2_dir, make, names):
    src = make(tmp_path / "src")
    before = listing(tmp_path)
    code, out, err = run(
        capfd,
        "sae",
        "import",
        "--path",
        src,
        "--model",
        tiny_gpt2_dir,
        "--out",
        tmp_path / "out",
        "--no-evaluate",
    )
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)
    assert listing(tmp_path) == before


# downstream -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_harvest_runs_on_an_imported_sparsify_folder(capfd, tmp_path, tiny_gpt2_dir):
    layer, _ = write_sparsify(tmp_path / "run", d_sae=64)
    dst = tmp_path / "imported"
    code, _, err = run(
        capfd,
        "sae",
        "import",
        "--path",
        layer,
        "--model",
        tiny_gpt2_dir,
        "--out",
        dst,
        "--no-evaluate",
    )
    assert code == 0, err
    db = tmp_path / "h.duckdb"
    code, _, err = run(
        capfd, "harvest", "--db", db, "--sae-dir", dst, "--batch", "5", *battery(tmp_path / "b", 6)
    )
    assert code == 0, err
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT hook, d_in, d_sae, architecture FROM saes").fetchone()
        assert row == ("blocks.1.hook_resid_post", D_IN, 64, "topk")
        assert con.execute("SELECT count(*) FROM activations").fetchone()[0] > 0
    finally:
        con.close()
