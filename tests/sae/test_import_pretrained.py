"""`shoggoth sae import --release R --sae S` offline, from a Hugging Face cache built by hand in
the real layouts of andyrdt/saes-llama-3.1-8b-instruct (dictionary_learning) and
google/gemma-scope-2-270m-it (Gemma Scope 2), with every socket connection refused: the imported
weights equal the files', shoggoth.json and the harvest's `saes` row keep the release, the SAE's
id and its Neuronpedia id, and every refusal (not cached, another model, a transcoder, processed
weights) is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
import torch
from helpers import battery

from shoggoth import cli
from shoggoth.sae.train.pretrained import same_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
D_IN, D_SAE = 32, 64  # the tiny GPT-2's d_model; the SAEs' width
GEMMA_REPO = "google/gemma-scope-2-270m-it"
GEMMA_FOLDER = "resid_post/layer_2_width_16k_l0_small"
ANDYRDT_REPO = "andyrdt/saes-llama-3.1-8b-instruct"
ANDYRDT_FOLDER = "resid_post_layer_1/trainer_1"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Iterator[Path]:
    """An empty Hugging Face cache, offline mode, and no socket that may connect (an attempt
    fails the test even when the code that made it swallowed the error)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these once, at import: the module's values are what it uses.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    attempts: list[str] = []

    def refuse(self, address, *args):
        attempts.append(str(address))
        raise OSError(f"a connection to {address} was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield cache
    assert attempts == []


def cached_repo(cache: Path, repo_id: str, files: dict[str, Callable[[Path], None]]) -> Path:
    """A repo in the cache's layout: refs/main naming a commit, the files in its snapshot."""
    base = cache / f"models--{repo_id.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    snapshot = base / "snapshots" / COMMIT
    for relative, write in files.items():
        (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
        write(snapshot / relative)
    return snapshot


def register(
    monkeypatch,
    release: str,
    repo_id: str,
    model: str,
    conversion_func: str | None,
    saes: dict[str, str],
    neuronpedia: dict[str, str] | None = None,
    overrides: dict | None = None,
) -> None:
    """A release in sae-lens's registry for this test only (the directory is cached: the entry is
    added to the dict every lookup returns, and removed after)."""
    from sae_lens.loading.pretrained_saes_directory import (
        PretrainedSAELookup,
        get_pretrained_saes_directory,
    )

    monkeypatch.setitem(
        get_pretrained_saes_directory(),
        release,
        PretrainedSAELookup(
            release=release,
            repo_id=repo_id,
            model=model,
            conversion_func=conversion_func,
            saes_map=saes,
            expected_var_explained={},
            expected_l0={},
            neuronpedia_id={i: (neuronpedia or {}).get(i) for i in saes},
            norm_scaling_factor={},
            config_overrides=overrides,
        ),
    )


def gemma_scope_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w_enc": torch.randn(D_IN, D_SAE, generator=g) / 4,
        "w_dec": torch.randn(D_SAE, D_IN, generator=g) / 4,
        "b_enc": torch.randn(D_SAE, generator=g) / 10,
        "b_dec": torch.randn(D_IN, generator=g),
        "threshold": torch.rand(D_SAE, generator=g) / 10,
    }


def gemma_scope_files(
    folder: str, params: dict[str, torch.Tensor], kind: str = "sae"
) -> dict[str, Callable[[Path], None]]:
    """A Gemma Scope 2 folder: params.safetensors and config.json (the real keys)."""
    from safetensors.torch import save_file

    layer = int(folder.split("layer_")[1].split("_")[0])
    hook_in = (
        f"model.layers.{layer}.output"
        if kind == "sae"
        else f"model.layers.{layer}.pre_feedforward_layernorm.output"
    )
    hook_out = (
        hook_in if kind == "sae" else f"model.layers.{layer}.post_feedforward_layernorm.output"
    )
    config = {
        "width": D_SAE,
        "model_name": "google/gemma-3-270m-it",
        "architecture": "jump_relu",
        "l0": 10,
        "affine_connection": False,
        "hf_hook_point_in": hook_in,
        "hf_hook_point_out": hook_out,
        "type": kind,
    }
    return {
        f"{folder}/params.safetensors": lambda p: save_file(params, str(p)),
        f"{folder}/config.json": lambda p: p.write_text(json.dumps(config)),
    }


def andyrdt_ae(seed: int = 1) -> dict[str, torch.Tensor]:
    """dictionary_learning's BatchTopKSAE state dict (as torch.save wrote ae.pt)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g) / 4,
        "encoder.bias": torch.randn(D_SAE, generator=g) / 10,
        "decoder.weight": torch.randn(D_IN, D_SAE, generator=g) / 4,
        "b_dec": torch.randn(D_IN, generator=g),
        "threshold": torch.tensor(0.05),
        "k": torch.tensor(8),
    }


def andyrdt_files(folder: str, ae: dict[str, torch.Tensor]) -> dict[str, Callable[[Path], None]]:
    layer = int(folder.split("layer_")[1].split("/")[0])
    config = {
        "trainer": {
            "trainer_class": "BatchTopKTrainer",
            "dict_class": "BatchTopKSAE",
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "k": 8,
            "layer": layer,
            "lm_name": "meta-llama/Llama-3.1-8B-Instruct",
            "submodule_name": f"resid_post_layer_{layer}",
        },
        "buffer": {"d_submodule": D_IN, "io": "out", "ctx_len": 64},
    }
    return {
        f"{folder}/ae.pt": lambda p: torch.save(ae, p),
        f"{folder}/config.json": lambda p: p.write_text(json.dumps(config)),
    }


def loaded(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "sae_weights.safetensors"))


@pytest.mark.slow
def test_a_gemma_scope_2_release_imports_offline_and_harvests(
    capsys, tmp_path, monkeypatch, hf_cache, tiny_gpt2_dir
):
    params = gemma_scope_params()
    cached_repo(hf_cache, GEMMA_REPO, gemma_scope_files(GEMMA_FOLDER, params))
    register(
        monkeypatch,
        "tiny-gemma-scope-2-res",
        GEMMA_REPO,
        str(tiny_gpt2_dir),
        "gemma_3",
        {"layer_2_width_16k_l0_small": GEMMA_FOLDER},
        {"layer_2_width_16k_l0_small": "gemma-3-270m-it/2-gemmascope-2-res-16k"},
    )
    out = tmp_path / "imported"
    code, _, err = run(
        capsys,
        "sae",
        "import",
        "--release",
        "tiny-gemma-scope-2-res",
        "--sae",
        "layer_2_width_16k_l0_small",
        "--model",
        tiny_gpt2_dir,
        "--out",
        out,
        "--eval-tokens",
        "512",
        "--device",
        "cpu",
    )
    assert code == 0, err
    weights = loaded(out)  # Gemma Scope's orientation is sae-lens's: no transpose
    for ours, theirs in [
        ("W_enc", "w_enc"),
        ("W_dec", "w_dec"),
        ("b_enc", "b_enc"),
        ("b_dec", "b_dec"),
        ("threshold", "threshold"),
    ]:
        assert torch.equal(weights[ours], params[theirs]), ours
    meta = json.loads((out / "shoggoth.json").read_text())
    assert meta["release"] == "tiny-gemma-scope-2-res"
    assert meta["sae_lens_id"] == "layer_2_width_16k_l0_small"
    assert meta["neuronpedia_id"] == "gemma-3-270m-it/2-gemmascope-2-res-16k"
    assert meta["hook"] == "blocks.2.hook_resid_post" and meta["architecture"] == "jumprelu"
    assert (
        meta["imported_from"] == "sae-lens registry: tiny-gemma-scope-2-res / "
        "layer_2_width_16k_l0_small"
    )
    assert meta["evaluation"]["n_tokens"] > 0

    db = tmp_path / "h.duckdb"
    code, _, err = run(
        capsys,
        "harvest",
        "--db",
        db,
        "--sae-dir",
        out,
        "--batch",
        "5",
        "--device",
        "cpu",
        *battery(tmp_path / "battery", 4),
    )
    assert code == 0, err
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT hook, d_sae, release, sae_lens_id, neuronpedia_id FROM saes"
        ).fetchone()
        assert row == (
            "blocks.2.hook_resid_post",
            D_SAE,
            "tiny-gemma-scope-2-res",
            "layer_2_width_16k_l0_small",
            "gemma-3-270m-it/2-gemmascope-2-res-16k",
        )
        assert con.execute("SELECT count(*) FROM activations").fetchone()[0] > 0
    finally:
        con.close()


@pytest.mark.slow
def test_a_dictionary_learning_release_imports_offline(
    capsys, tmp_path, monkeypatch, hf_cache, tiny_gpt2_dir
):
    """sae-lens's dictionary_learning_1 conversion hands over transposed views; they are saved
    (made contiguous first) as the transposes of ae.pt's Linear weights. The release's
    processing (fold_ln, center_unembed) leaves the residual stream as it is: accepted."""
    ae = andyrdt_ae()
    cached_repo(hf_cache, ANDYRDT_REPO, andyrdt_files(ANDYRDT_FOLDER, ae))
    register(
        monkeypatch,
        "tiny-andyrdt",
        ANDYRDT_REPO,
        tiny_gpt2_dir.name,
        "dictionary_learning_1",
        {"resid_post_layer_1_trainer_1": ANDYRDT_FOLDER},
        {"resid_post_layer_1_trainer_1": "tiny/1-resid-post-aa"},
        {"model_from_pretrained_kwargs": {"fold_ln": True, "center_unembed": True}},
    )
    out = tmp_path / "imported"
    code, _, err = run(
        capsys,
        "sae",
        "import",
        "--release",
        "tiny-andyrdt",
        "--sae",
        "resid_post_layer_1_trainer_1",
        "--model",
        tiny_gpt2_dir,
        "--out",
        out,
        "--no-evaluate",
        "--device",
        "cpu",
    )
    assert code == 0, err
    weights = loaded(out)
    assert torch.equal(weights["W_enc"], ae["encoder.weight"].T)
    assert torch.equal(weights["W_dec"], ae["decoder.weight"].T)
    assert torch.equal(weights["b_enc"], ae["encoder.bias"])
    assert torch.equal(weights["b_dec"], ae["b_dec"])
    assert torch.equal(weights["threshold"], torch.full((D_SAE,), 0.05))  # a scalar, per latent
    meta = json.loads((out / "shoggoth.json").read_text())
    assert (meta["release"], meta["sae_lens_id"], meta["neuronpedia_id"]) == (
        "tiny-andyrdt",
        "resid_post_layer_1_trainer_1",
        "tiny/1-resid-post-aa",
    )
    assert meta["hook"] == "blocks.1.hook_resid_post" and meta["evaluation"] is None


@pytest.mark.slow
def test_a_hugging_face_repo_id_imports_from_the_cache(capsys, tmp_path, hf_cache, tiny_gpt2_dir):
    """--release ORG/NAME --sae FOLDER: sae-lens's own layout, the model its cfg.json names."""
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    def save(folder: Path, model_name: str) -> None:
        cfg = StandardSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name=model_name),
        )
        torch.manual_seed(2)
        SAE.from_dict(cfg.to_dict()).save_model(str(folder))

    snapshot = cached_repo(
        hf_cache,
        "someone/tiny-saes",
        {
            "ours/cfg.json": lambda p: save(p.parent, tiny_gpt2_dir.name),
            "theirs/cfg.json": lambda p: save(p.parent, "gpt2"),
        },
    )
    out = tmp_path / "imported"
    code, _, err = run(
        capsys,
        "sae",
        "import",
        "--release",
        "someone/tiny-saes",
        "--sae",
        "ours",
        "--model",
        tiny_gpt2_dir,
        "--out",
        out,
        "--no-evaluate",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert torch.equal(loaded(out)["W_dec"], loaded(snapshot / "ours")["W_dec"])
    meta = json.loads((out / "shoggoth.json").read_text())
    assert (meta["release"], meta["sae_lens_id"]) == ("someone/tiny-saes", "ours")
    assert meta["imported_from"] == "Hugging Face repo: someone/tiny-saes / ours"

    before = files_under(tmp_path)
    code, _, err = run(
        capsys,
        "sae",
        "import",
        "--release",
        "someone/tiny-saes",
        "--sae",
        "theirs",
        "--model",
        tiny_gpt2_dir,
        "--out",
        tmp_path / "x",
        "--no-evaluate",
        "--device",
        "cpu",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "made for model 'gpt2'" in err and str(tiny_gpt2_dir) in err and "--other-model" in err
    assert files_under(tmp_path) == before


def test_a_release_for_another_model_is_refused_before_any_model_loads(capsys, tmp_path):
    """The real registry entry (meta-llama/Llama-3.1-8B-Instruct) against --model minilm: no
    file, no model and no network is touched to say so."""
    code, _, err = run(
        capsys,
        "sae",
        "import",
        "--release",
        "llama-3.1-8b-instruct-andyrdt",
        "--sae",
        "resid_post_layer_3_trainer_1",
        "--model",
        "minilm",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "meta-llama/Llama-3.1-8B-Instruct" in err and "'minilm'" in err
    assert "--other-model" in err
    code, _, err = run(
        capsys,
        "sae",
        "import",
        "--release",
        "llama-3.1-8b-instruct-andyrdt",
        "--sae",
        "layer_99",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "has no SAE 'layer_99'" in err and "resid_post_layer_3_trainer_1" in err
    code, _, err = run(
        capsys,
        "sae",
        "import",
        "--release",
        "no-such-release",
        "--sae",
        "x",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "not a release of sae-lens's registry" in err
    assert list(tmp_path.iterdir()) == []


def test_model_names_match_across_hub_ids_directories_and_aliases(tmp_path):
    cached = tmp_path / "models--google--gemma-3-270m-it" / "snapshots" / COMMIT
    cached.mkdir(parents=True)
    local = tmp_path / "Llama-3.1-8B-Instruct"
    local.mkdir()
    assert same_model("gpt2-small", "gpt2")  # TransformerLens's alias and shoggoth's
    assert same_model("google/gemma-3-270m-it", "google/gemma-3-270m-it")
    assert same_model("google/gemma-3-270m-it", str(cached))
    assert same_model("meta-llama/Llama-3.1-8B-Instruct", str(local))
    assert same_model("pythia-70m-deduped", "pythia-70m")  # shoggoth's alias is the deduped one
    assert not same_model("google/gemma-3-270m-it", "google/gemma-3-270m")
    assert not same_model("meta-llama/Llama-3.1-8B-Instruct", "minilm")


@pytest.mark.slow
def test_refusals_are_one_line_and_write_nothing(
    capsys, tmp_path, monkeypatch, hf_cache, tiny_gpt2_dir
):
    """Not cached (offline), a transcoder, weights processed in a way that changes the residual
    stream: each one line, exit 2, nothing written (the cache included)."""
    cached_repo(
        hf_cache,
        GEMMA_REPO,
        {
            **gemma_scope_files(
                "transcoder/layer_1_width_16k_l0_small", gemma_scope_params(3), "transcoder"
            ),
            **gemma_scope_files(GEMMA_FOLDER, gemma_scope_params()),
        },
    )
    cached_repo(hf_cache, ANDYRDT_REPO, andyrdt_files(ANDYRDT_FOLDER, andyrdt_ae()))
    model = str(tiny_gpt2_dir)
    register(
        monkeypatch,
        "tiny-transcoders",
        GEMMA_REPO,
        model,
        "gemma_3",
        {"layer_1": "transcoder/layer_1_width_16k_l0_small"},
    )
    register(
        monkeypatch,
        "tiny-centered",
        ANDYRDT_REPO,
        model,
        "dictionary_learning_1",
        {"layer_1": ANDYRDT_FOLDER},
        None,
        {"model_from_pretrained_kwargs": {"center_writing_weights": True, "fold_ln": True}},
    )
    register(
        monkeypatch,
        "tiny-uncached",
        "andyrdt/saes-not-downloaded",
        model,
        "dictionary_learning_1",
        {"layer_1": ANDYRDT_FOLDER},
    )
    register(
        monkeypatch,
        "tiny-half-cached",
        GEMMA_REPO,
        model,
        "gemma_3",
        {"layer_5": "resid_post/layer_5_width_16k_l0_small"},
    )
    harvest_battery = battery(tmp_path / "battery", 2)
    before = files_under(tmp_path)
    cases = [
        (
            "tiny-transcoders",
            "layer_1",
            "is a transcoder (reads blocks.1.hook_mlp_in, writes blocks.1.hook_mlp_out); shoggoth "
            "reads residual SAEs only",
        ),
        ("tiny-centered", "layer_1", "center_writing_weights=True at blocks.1.hook_resid_post"),
        (
            "tiny-uncached",
            "layer_1",
            "--release tiny-uncached --sae layer_1: not in the Hugging "
            "Face cache (andyrdt/saes-not-downloaded) and no network",
        ),
        (
            "tiny-half-cached",
            "layer_5",
            "--release tiny-half-cached --sae layer_5: not in the Hugging Face cache",
        ),
    ]
    for release, sae, expected in cases:
        code, _, err = run(
            capsys,
            "sae",
            "import",
            "--release",
            release,
            "--sae",
            sae,
            "--model",
            model,
            "--out",
            tmp_path / "x",
            "--no-evaluate",
            "--device",
            "cpu",
        )
        assert code == 2, (release, err)
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert files_under(tmp_path) == before, release

    # sae-lens folders holding a transcoder, or an SAE of centered residuals, are refused by
    # harvest --sae-dir too (before any model loads).
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig

    transcoder = JumpReLUTranscoderConfig(
        d_in=D_IN, d_sae=D_SAE, d_out=D_IN, apply_b_dec_to_input=False
    )
    transcoder.metadata.hook_name = "blocks.1.hook_mlp_in"
    transcoder.metadata.hook_name_out = "blocks.1.hook_mlp_out"
    JumpReLUTranscoder(transcoder).save_model(str(tmp_path / "transcoder"))
    centered = StandardSAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        metadata=SAEMetadata(
            hook_name="blocks.1.hook_resid_post",
            model_from_pretrained_kwargs={"center_writing_weights": True},
        ),
    )
    SAE.from_dict(centered.to_dict()).save_model(str(tmp_path / "centered"))
    for name, expected in [
        (
            "transcoder",
            "is a transcoder (reads blocks.1.hook_mlp_in, writes blocks.1.hook_mlp_out)",
        ),
        ("centered", "center_writing_weights=True at blocks.1.hook_resid_post"),
    ]:
        (tmp_path / name / "shoggoth.json").write_text(json.dumps({"model": model}))
        before = files_under(tmp_path)
        code, _, err = run(
            capsys,
            "harvest",
            "--db",
            tmp_path / "h.duckdb",
            "--sae-dir",
            tmp_path / name,
            "--device",
            "cpu",
            *harvest_battery,
        )
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert expected in err and f"--sae {tmp_path / name}: " in err, err
        assert files_under(tmp_path) == before


@pytest.mark.slow
def test_a_gemma_scope_config_json_is_inferred_only_when_the_hub_said_it_is_absent(
    monkeypatch, hf_cache
):
    """Offline, a config.json that is merely not cached is a cache miss (one line); one the hub
    said is absent (the cache's .no_exist marker) is inferred from the folder's name, as
    sae-lens does."""
    from safetensors.torch import save_file

    from shoggoth.core.errors import BadInput
    from shoggoth.sae.train.pretrained import load_pretrained

    params = gemma_scope_params()
    cached_repo(
        hf_cache,
        GEMMA_REPO,
        {f"{GEMMA_FOLDER}/params.safetensors": lambda p: save_file(params, str(p))},
    )
    register(monkeypatch, "tiny-no-config", GEMMA_REPO, "m", "gemma_3", {"l2": GEMMA_FOLDER})
    with pytest.raises(BadInput, match="not in the Hugging Face cache"):
        load_pretrained("tiny-no-config", "l2", "cpu")
    marker = (
        hf_cache
        / f"models--{GEMMA_REPO.replace('/', '--')}"
        / ".no_exist"
        / COMMIT
        / GEMMA_FOLDER
        / "config.json"
    )
    marker.parent.mkdir(parents=True)
    marker.touch()
    sae = load_pretrained("tiny-no-config", "l2", "cpu")
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert sae.cfg.metadata.model_name == "google/gemma-3-270m-it"
    assert torch.equal(sae.W_enc, params["w_enc"])
