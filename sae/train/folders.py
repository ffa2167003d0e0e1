"""SAE folders from other trainers that `shoggoth sae import --path` converts itself: a sparsify
(1.3.3) layer folder and a dictionary_learning folder.

Each is read into a `FolderSAE` (the weights in sae-lens's orientation and how the source combines
them), then built as the sae-lens SAE whose `encode`/`decode` compute exactly the source's
function, so the rest of shoggoth (`sae.encode`, `sae.decode`, `sae.W_dec`,
`sae.cfg.metadata.hook_name`) and `sae.save_model` work on it unchanged. sae-lens's own
`sparsify_disk_loader` is not used: it reads d_sae 0 when the width came from `expansion_factor`,
transposes `W_dec` and drops the `b_dec` subtraction sparsify's encoder always does.

Anything the conversion cannot represent exactly (a transcoder, a skip connection, an MLP or
attention hookpoint, sparsify's groupmax, a gated dictionary) is refused in one line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from shoggoth.core.errors import BadInput, first_line, shown

if TYPE_CHECKING:
    from sae_lens import SAE

Layout = Literal["sparsify", "dictionary_learning"]
Architecture = Literal["topk", "jumprelu", "standard"]

BLOCK = re.compile(r"(?:[A-Za-z_]\w*\.)*(?:layers|h)\.(\d+)(?:\.(.+))?")
"""A sparsify hookpoint: an HF module path relative to the base model. `layers.N` (Llama, Gemma,
Pythia, Qwen) or `h.N` (GPT-2) is the output of block N; anything after it is a submodule."""

SUBMODULES = {
    "mlp": "an MLP output",
    "attn": "an attention output",
    "self_attn": "an attention output",
    "attention": "an attention output",
}
"""What a submodule hookpoint reads, for the refusal (sparsify names HF's own modules)."""


@dataclass(frozen=True)
class FolderSAE:
    """One SAE as read from a foreign folder, in sae-lens's orientation (float32, CPU)."""

    layout: Layout
    """Which trainer wrote the folder; recorded in the import's origin."""
    architecture: Architecture
    """The sae-lens architecture whose forward equals the source's: topk (per-token top k after
    a ReLU), jumprelu (ReLU gated by a per-latent threshold) or standard (ReLU)."""
    hook: str
    """The TransformerLens hook the SAE reads, e.g. blocks.6.hook_resid_post."""
    W_enc: torch.Tensor
    """Encoder weights [d_in, d_sae] (the transpose of a torch Linear's weight)."""
    b_enc: torch.Tensor
    """Encoder bias [d_sae]."""
    W_dec: torch.Tensor
    """Decoder weights [d_sae, d_in]: a latent's row is its direction in the residual stream."""
    b_dec: torch.Tensor
    """Decoder bias [d_in], added to every reconstruction."""
    subtract_b_dec: bool
    """Whether the encoder sees x - b_dec (sae-lens's apply_b_dec_to_input)."""
    k: int | None
    """Latents kept per token (topk only)."""
    threshold: torch.Tensor | None
    """Per-latent activation threshold [d_sae] (jumprelu only)."""
    model_name: str | None
    """The model the folder says it was trained on, if it says."""
    context_size: int | None
    """The training context length, if the folder says (sizes the import's evaluation)."""

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads."""
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return int(self.W_enc.shape[1])


def folder_layout(path: Path) -> Layout | None:
    """Which foreign layout `path` holds, by its files; None when neither."""
    if (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file():
        return "sparsify"
    if (path / "config.json").is_file() and (path / "ae.pt").is_file():
        return "dictionary_learning"
    return None


def sparsify_run_hint(path: Path) -> str | None:
    """A one-line refusal when `path` is a whole sparsify run (config.json and one folder per
    hookpoint) rather than one layer folder; None otherwise."""
    if not path.is_dir() or not (path / "config.json").is_file():
        return None
    layers = sorted(p.name for p in path.iterdir() if folder_layout(p) == "sparsify")
    if not layers:
        return None
    some = ", ".join(layers[:4]) + (", …" if len(layers) > 4 else "")
    return f"--path {path}: a sparsify run folder; pass one of its hookpoint folders ({some})"


def load_folder(path: Path, device: str) -> tuple[SAE, str]:
    """The sae-lens SAE of a sparsify or dictionary_learning folder, and its origin string."""
    layout = folder_layout(path)
    if layout == "sparsify":
        record = read_sparsify(path)
    elif layout == "dictionary_learning":
        record = read_dictionary_learning(path)
    else:
        raise BadInput(f"--path {path}: neither a sparsify nor a dictionary_learning folder")
    return to_sae_lens(record, device), f"{layout} folder {path.resolve()}"


def read_sparsify(path: Path) -> FolderSAE:
    """A sparsify layer folder: `cfg.json` + `sae.safetensors`, the run's `config.json` above.

    sparsify encodes `topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias), k)` and decodes
    `acts @ W_dec + b_dec` (sparse_coder.py, fused_encoder.py): sae-lens's TopKSAE with
    apply_b_dec_to_input (its TopK applies the ReLU after choosing, which keeps the same values,
    ReLU being monotone)."""
    from safetensors.torch import load_file

    cfg = read_json(path / "cfg.json")
    # sparsify's own defaults (SparseCoderConfig) for a field an older cfg.json leaves out.
    if cfg.get("transcode", False):
        raise BadInput(
            f"--path {path}: a sparsify transcoder (cfg.json transcode: true), "
            "not a residual-stream SAE"
        )
    if cfg.get("skip_connection", False):
        raise BadInput(
            f"--path {path}: a sparsify SAE with a skip connection (cfg.json "
            "skip_connection: true), which a residual-stream SAE cannot represent"
        )
    hook = sparsify_hook(path)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise BadInput(
            f"--path {path}: sparsify activation {shown(activation)}: only topk has "
            "an sae-lens equivalent"
        )
    d_in = positive(cfg, "d_in", path / "cfg.json")
    # num_latents 0 (sparsify's default) means the width came from expansion_factor.
    if cfg.get("num_latents", 0) == 0:
        d_sae = d_in * positive(cfg, "expansion_factor", path / "cfg.json", 32)
    else:
        d_sae = positive(cfg, "num_latents", path / "cfg.json")
    k = at_most(positive(cfg, "k", path / "cfg.json", 32), d_sae, path / "cfg.json")

    weights = path / "sae.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as e:  # truncated or foreign file: one line naming it
        raise BadInput(f"{weights}: could not read it: {first_line(e)}") from None
    if "W_skip" in state:
        raise BadInput(
            f"{weights}: has W_skip (a skip connection), which a residual-stream SAE "
            "cannot represent"
        )
    if "W_dec" not in state:
        raise BadInput(f"{weights}: no W_dec (saved without its decoder)")
    encoder = tensor(state, "encoder.weight", (d_sae, d_in), weights)
    W_dec = tensor(state, "W_dec", (d_sae, d_in), weights)  # already [latent, d_in]
    run = read_json(path.parent / "config.json") if (path.parent / "config.json").is_file() else {}
    return FolderSAE(
        layout="sparsify",
        architecture="topk",
        hook=hook,
        W_enc=encoder.T,
        b_enc=tensor(state, "encoder.bias", (d_sae,), weights),
        W_dec=W_dec,
        b_dec=tensor(state, "b_dec", (d_in,), weights),
        subtract_b_dec=True,  # sparsify subtracts b_dec whatever normalize_decoder says
        k=k,
        threshold=None,
        model_name=str(run["model"]) if run.get("model") else None,
        context_size=run["ctx_len"] if isinstance(run.get("ctx_len"), int) else None,
    )


def sparsify_hook(path: Path) -> str:
    """The TransformerLens hook of a sparsify layer folder, from its name (the hookpoint)."""
    name = path.resolve().name
    match = BLOCK.fullmatch(name)
    if match is None:
        raise BadInput(
            f"--path {path}: sparsify hookpoint {shown(name)} (the folder name) is "
            "not a block output such as layers.N"
        )
    if match.group(2) is not None:
        sub = match.group(2)
        what = SUBMODULES.get(sub.split(".")[0], f"the output of submodule {shown(sub)}")
        raise BadInput(
            f"--path {path}: a sparsify SAE on {name}, {what}, not the residual "
            "stream (shoggoth imports block outputs such as layers.N)"
        )
    # HF's block N returns the residual stream after the block: TransformerLens's resid_post.
    return f"blocks.{int(match.group(1))}.hook_resid_post"


DICT_CLASSES: dict[str, tuple[Architecture, bool]] = {
    "AutoEncoderTopK": ("topk", True),
    "BatchTopKSAE": ("jumprelu", True),
    "MatryoshkaBatchTopKSAE": ("jumprelu", True),
    "JumpReluAutoEncoder": ("jumprelu", False),
    "AutoEncoder": ("standard", True),
}
"""dictionary_learning's dictionary classes → (sae-lens architecture, whether the encoder sees
x - b_dec). AutoEncoderTopK's default encode is per-token top k (its threshold is only used when
asked for); BatchTopK and Matryoshka encode with `relu(pre) * (relu(pre) > threshold)` at
inference, which equals sae-lens's JumpReLU `relu(pre) * (pre > threshold)` for any threshold;
JumpReluAutoEncoder does not subtract b_dec; AutoEncoder is ReLU with its `bias` as b_dec."""


def read_dictionary_learning(path: Path) -> FolderSAE:
    """A dictionary_learning folder: `config.json` (`trainer.{dict_class, layer, activation_dim,
    dict_size, k, lm_name}`) and `ae.pt` (the dictionary's state dict). The hook is the output of
    block `trainer.layer`, as sae-lens's dictionary_learning_1 converter reads it."""
    config = read_json(path / "config.json")
    trainer = config.get("trainer")
    where = path / "config.json"
    if not isinstance(trainer, dict):
        raise BadInput(f"{where}: no 'trainer' section")
    dict_class = trainer.get("dict_class")
    if dict_class not in DICT_CLASSES:
        raise BadInput(
            f"{where}: dict_class {shown(dict_class)} has no exact sae-lens "
            f"equivalent (known: {', '.join(DICT_CLASSES)})"
        )
    architecture, subtract = DICT_CLASSES[dict_class]
    submodule = str(trainer.get("submodule_name") or "")
    if "mlp" in submodule or "attn" in submodule:
        raise BadInput(f"{where}: submodule_name {shown(submodule)} is not the residual stream")
    layer = trainer.get("layer")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise BadInput(f"{where}: trainer.layer {shown(layer)} is not a layer number")
    d_in = positive(trainer, "activation_dim", where)
    d_sae = positive(trainer, "dict_size", where)

    ae = path / "ae.pt"
    try:
        state = torch.load(ae, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, truncated or foreign file: one line naming it
        raise BadInput(f"{ae}: could not read it: {first_line(e)}") from None
    if not isinstance(state, dict):
        raise BadInput(f"{ae}: not a state dict")
    if "optimizer" in state:
        # A mid-training backup: its biases are still in normalized units when the run
        # normalized activations; only the final ae.pt is rescaled to raw activations.
        raise BadInput(f"{ae}: a training backup (has 'optimizer'), not a finished dictionary")

    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "AutoEncoder"):  # torch Linear layers
        W_enc = tensor(state, "encoder.weight", (d_sae, d_in), ae).T
        b_enc = tensor(state, "encoder.bias", (d_sae,), ae)
        W_dec = tensor(state, "decoder.weight", (d_in, d_sae), ae).T
    else:  # raw parameters, already in sae-lens's orientation
        W_enc = tensor(state, "W_enc", (d_in, d_sae), ae)
        b_enc = tensor(state, "b_enc", (d_sae,), ae)
        W_dec = tensor(state, "W_dec", (d_sae, d_in), ae)
    b_dec = tensor(state, "bias" if dict_class == "AutoEncoder" else "b_dec", (d_in,), ae)

    k = None
    threshold = None
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        k = at_most(positive(trainer, "k", where), d_sae, where)
        # from_pretrained refuses a config k that differs from the saved one: so do we.
        if "k" in state and int(state["k"]) != k:
            raise BadInput(f"{ae}: k {int(state['k'])} differs from config.json's k {k}")
    if architecture == "jumprelu":
        saved = tensor(state, "threshold", None, ae)
        if saved.numel() == 1:  # BatchTopK keeps one threshold for every latent
            threshold = saved.reshape(()).expand(d_sae).clone()
        elif tuple(saved.shape) == (d_sae,):
            threshold = saved
        else:
            raise BadInput(
                f"{ae}: threshold has shape {list(saved.shape)}, expected [] or [{d_sae}]"
            )
    buffer = config.get("buffer")
    ctx = buffer.get("ctx_len") if isinstance(buffer, dict) else None
    return FolderSAE(
        layout="dictionary_learning",
        architecture=architecture,
        hook=f"blocks.{layer}.hook_resid_post",
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        subtract_b_dec=subtract,
        k=k,
        threshold=threshold,
        model_name=str(trainer["lm_name"]) if trainer.get("lm_name") else None,
        context_size=ctx if isinstance(ctx, int) and not isinstance(ctx, bool) else None,
    )


def to_sae_lens(record: FolderSAE, device: str) -> SAE:
    """The sae-lens SAE computing `record`'s function, with contiguous float32 parameters
    (`save_model` refuses the transposed views)."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(
        hook_name=record.hook, model_name=record.model_name, context_size=record.context_size
    )
    common: dict[str, Any] = {
        "d_in": record.d_in,
        "d_sae": record.d_sae,
        "dtype": "float32",
        "device": device,
        "apply_b_dec_to_input": record.subtract_b_dec,
        "metadata": meta,
    }
    state = {
        "W_enc": record.W_enc,
        "b_enc": record.b_enc,
        "W_dec": record.W_dec,
        "b_dec": record.b_dec,
    }
    sae: SAE
    if record.architecture == "topk":
        assert record.k is not None
        sae = TopKSAE(TopKSAEConfig(k=record.k, **common))
    elif record.architecture == "jumprelu":
        assert record.threshold is not None
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
        state["threshold"] = record.threshold
    else:
        sae = StandardSAE(StandardSAEConfig(**common))
    sae.load_state_dict(
        {name: value.to(torch.float32).contiguous() for name, value in state.items()}
    )
    sae.eval()
    return sae


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; BadInput naming the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: not readable JSON: {first_line(e)}") from None
    if not isinstance(value, dict):
        raise BadInput(f"{path}: not a JSON object")
    return value


def positive(section: dict[str, Any], key: str, where: Path, default: int | None = None) -> int:
    """`section[key]` (or `default` when absent) as a positive int; BadInput naming `where`."""
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadInput(f"{where}: {key} {shown(value)} is not a positive integer")
    return value


def at_most(k: int, d_sae: int, where: Path) -> int:
    """`k`, refused when it exceeds the number of latents (top-k could not pick that many)."""
    if k > d_sae:
        raise BadInput(f"{where}: k {k} exceeds the {d_sae} latents")
    return k


def tensor(
    state: dict[str, Any], key: str, shape: tuple[int, ...] | None, where: Path
) -> torch.Tensor:
    """`state[key]` as a float32 tensor of `shape` (any shape when None); BadInput naming the
    file, the key and both shapes otherwise."""
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise BadInput(f"{where}: no tensor {shown(key)}")
    if shape is not None and tuple(value.shape) != shape:
        raise BadInput(
            f"{where}: {key} has shape {list(value.shape)}, expected {list(shape)} "
            "(from the folder's config)"
        )
    # bf16/fp16 → float32 is exact; shoggoth's SAEs run in float32.
    return value.detach().to(torch.float32)
