"""Pretrained SAEs through sae-lens (`shoggoth sae import --release R --sae S`), offline from the
Hugging Face cache.

`--release` is a release of sae-lens's registry (`pretrained_saes.yaml`) or a Hugging Face repo
id (then `--sae` is the folder holding sae-lens's cfg.json and sae_weights.safetensors). sae-lens
fetches every file with `hf_hub_download`, which serves the cache when the hub cannot be asked;
shoggoth adds what that leaves out:

- no network and HF_HUB_OFFLINE unset: hf_hub_download would first try the hub (and retry)
  before falling back to the cache, so the load runs in offline mode after a quick probe;
- sae-lens's `gemma_3` config builder asks the hub for params.safetensors' tensor shapes with a
  raw HTTP range request that ignores the cache: `gemma_3_converter` reads them from the file's
  own header instead;
- a file that is neither cached nor downloadable is one line naming the release and the SAE;
- a registry release made for another model than `--model` is refused before any model loads
  (unless `--other-model`): a width and hook that happen to fit do not make the SAE's
  features mean anything on another model's residual stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from shoggoth.core.errors import BadInput, first_line
from shoggoth.sae.models import ALIASES, hub_reachable

if TYPE_CHECKING:
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

CACHED_REPO = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")
"""A directory inside the Hugging Face cache: its repo id is ORG/NAME."""


def registry_entry(release: str) -> PretrainedSAELookup | None:
    """The sae-lens registry's entry for `release` (None: not a registry release)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory().get(release)


def who(release: str, sae_id: str) -> str:
    """How messages name a pretrained SAE: the flags the user gave."""
    return f"--release {release} --sae {sae_id}"


def check_release(release: str, sae_id: str, model: str, other_model: bool) -> None:
    """BadInput in one line, before anything loads, when `release` is neither a registry release
    nor a repo id, when the registry release has no SAE `sae_id`, or when it was made for
    another model than `model` (unless `other_model`)."""
    entry = registry_entry(release)
    if entry is None:
        if "/" not in release:
            raise BadInput(
                f"--release {release}: not a release of sae-lens's registry and not "
                "a Hugging Face repo id (ORG/NAME)"
            )
        return  # a repo id: its cfg.json says the model, checked once it is loaded
    if sae_id not in entry.saes_map:
        ids = list(entry.saes_map)
        listed = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        raise BadInput(f"--release {release}: has no SAE '{sae_id}' (it has {listed})")
    check_trained_on(entry.model, model, f"--release {release}", other_model)


def check_trained_on(trained_on: str | None, model: str, what: str, other_model: bool) -> None:
    """BadInput naming both models when an SAE made for `trained_on` is imported for `model`
    (unless `other_model`; nothing to check when the SAE does not say)."""
    if not trained_on or other_model or same_model(trained_on, model):
        return
    raise BadInput(
        f"{what}: made for model '{trained_on}', not --model '{model}' (pass "
        "--other-model to import it anyway)"
    )


def same_model(trained_on: str, model: str) -> bool:
    """Whether the model an SAE names and the user's `--model` are the same model: compared by
    hub id or by its last part (a local directory usually bears the model's name), through
    TransformerLens's aliases (the registry says `gpt2-small` for `gpt2`)."""
    ours = set().union(*(name_keys(n) for n in model_names(model)))
    return bool(name_keys(trained_on) & ours)


def model_names(model: str) -> set[str]:
    """The names `--model` goes by without loading it: as given, a hub alias's hub id, a local
    directory's name and, inside the Hugging Face cache, its repo id."""
    names = {model}
    alias = ALIASES.get(model)
    if alias is not None and not alias.offline:
        names.add(alias.locate())  # a hub id; only offline aliases build anything to locate
    path = Path(model).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        names.add(resolved.name)
        cached = CACHED_REPO.search(resolved.as_posix())
        if cached is not None:
            names.add(f"{cached.group(1)}/{cached.group(2)}")
    return names


def name_keys(name: str) -> set[str]:
    """Lower-cased forms a model name is matched by: whole, its last part, and the same for
    TransformerLens's official name when `name` is one of its aliases."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    forms = {name}
    try:
        forms.add(get_official_model_name(name))
    except ValueError:  # not a TransformerLens name: the name as it is
        pass
    keys = set()
    for form in forms:
        keys.add(form.lower())
        keys.add(form.rstrip("/").rsplit("/", 1)[-1].lower())
    return keys


@contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Run the body in Hugging Face offline mode unless the hub answers a quick probe (yields
    whether it did). Without this, hf_hub_download with no network tries the hub and retries
    (27 s measured) before it serves the cache; offline, it serves the cache at once."""
    from huggingface_hub import constants

    reachable = hub_reachable()
    before = constants.HF_HUB_OFFLINE
    if not reachable:
        constants.HF_HUB_OFFLINE = True  # read at each request, not only at import
    try:
        yield reachable
    finally:
        constants.HF_HUB_OFFLINE = before


def not_cached(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says a file is neither in the cache nor
    downloadable: huggingface_hub's LocalEntryNotFoundError (its cache miss without network),
    OfflineModeIsEnabled (an HTTP call refused offline) or a failed connection."""
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            LocalEntryNotFoundError
            | OfflineModeIsEnabled
            | requests.ConnectionError
            | ConnectionError,
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def load_pretrained(release: str, sae_id: str, device: str) -> SAE:
    """The SAE `sae_id` of `release` through sae-lens, from the Hugging Face cache when the hub
    cannot be reached; BadInput in one line when it cannot be loaded."""
    from sae_lens import SAE

    entry = registry_entry(release)
    # The registry names each release's converter; gemma_3's is replaced by one that reads the
    # tensor shapes from the cached file (sae-lens's asks the hub over raw HTTP).
    converter = gemma_3_converter if entry and entry.conversion_func == "gemma_3" else None
    with offline_unless_reachable() as reachable:
        try:
            return SAE.from_pretrained(release, sae_id, device=device, converter=converter)
        except BadInput:
            raise
        except Exception as e:  # unknown id, a missing or damaged file: one line
            if not reachable and not_cached(e):
                repo = entry.repo_id if entry else release
                raise BadInput(
                    f"{who(release, sae_id)}: not in the Hugging Face cache ({repo}) and no network"
                ) from None
            raise BadInput(f"{who(release, sae_id)}: {first_line(e)}") from None


def make_contiguous(sae: torch.nn.Module) -> None:
    """Give every parameter and buffer contiguous storage. Converters hand sae-lens transposed
    views (dictionary_learning's `W_enc = encoder.weight.T`), which safetensors refuses to save
    ("You are trying to save a non contiguous tensor")."""
    with torch.no_grad():
        for tensor in (*sae.parameters(), *sae.buffers()):
            if not tensor.is_contiguous():
                tensor.data = tensor.data.contiguous()


def tensor_shapes(path: str) -> dict[str, list[int]]:
    """The tensor shapes a safetensors file's header declares (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def gemma_3_raw_config(repo_id: str, folder_name: str, force_download: bool) -> dict[str, Any]:
    """A Gemma Scope 2 SAE's config.json, or sae-lens's inference from the folder's name when
    the repo has none (as sae-lens's own gemma_3 loader does). Offline, a config.json that is
    merely not cached is a cache miss, not an absent file: inferring would guess."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    # sae-lens's own inference (private, but the version is pinned): the same guess it makes.
    from sae_lens.loading.pretrained_sae_loaders import _infer_gemma_3_raw_cfg_dict

    filename = f"{folder_name}/config.json"
    try:
        path = hf_hub_download(repo_id, filename, force_download=force_download)
    except RemoteEntryNotFoundError:  # the hub says the repo has no config.json
        return cast("dict[str, Any]", _infer_gemma_3_raw_cfg_dict(repo_id, folder_name))
    except LocalEntryNotFoundError:
        # The cache remembers a file the hub said is absent (a value that is not a path).
        known_absent = try_to_load_from_cache(repo_id, filename)
        if known_absent is None or isinstance(known_absent, str):
            raise
        return cast("dict[str, Any]", _infer_gemma_3_raw_cfg_dict(repo_id, folder_name))
    raw: dict[str, Any] = json.loads(Path(path).read_text())
    return raw


def gemma_3_params_file(repo_id: str, folder_name: str, force_download: bool) -> str:
    """The local path of a Gemma Scope 2 SAE's weights (a cross-layer transcoder's are a file
    named after its folder, beside it)."""
    from huggingface_hub import hf_hub_download

    if "clt" in folder_name:
        parent, name = folder_name.rsplit("/", 1)
        return hf_hub_download(
            repo_id, f"{name}.safetensors", subfolder=parent, force_download=force_download
        )
    return hf_hub_download(
        repo_id, "params.safetensors", subfolder=folder_name, force_download=force_download
    )


def gemma_3_config(
    repo_id: str,
    folder_name: str,
    shapes: dict[str, list[int]],
    device: str,
    force_download: bool,
    cfg_overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    """sae-lens's gemma_3 config (`get_gemma_3_config_from_hf`, sae-lens 6.54.12), with d_in,
    d_sae and d_out taken from `shapes` (the cached weights file's header)."""
    raw = gemma_3_raw_config(repo_id, folder_name, force_download)
    if raw.get("architecture") != "jump_relu":
        raise ValueError(f"unexpected architecture in Gemma 3 config: {raw.get('architecture')}")
    layer_match = re.search(r"layer_(\d+)", folder_name)
    if layer_match is None:
        raise ValueError(f"no layer number in folder name {folder_name}")
    layer = int(layer_match.group(1))
    transcoder = "transcoder" in folder_name or "clt" in folder_name
    hook_out = None
    if "resid_post" in folder_name:
        hook = f"blocks.{layer}.hook_resid_post"
    elif "attn_out" in folder_name:
        hook = f"blocks.{layer}.attn.hook_z"
    elif "mlp_out" in folder_name:
        hook = f"blocks.{layer}.hook_mlp_out"
    elif transcoder:
        hook, hook_out = f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out"
    else:
        raise ValueError(f"no hook in folder name {folder_name}")
    d_in, d_sae = shapes["w_enc"]
    model_name = str(raw["model_name"])
    if "google" not in model_name:
        model_name = "google/" + model_name
    model_name = model_name.replace("-v3", "-3")
    if "270m" in model_name:  # the 270m model's hub id has no -pt suffix
        model_name = model_name.replace("-pt", "")
    cfg: dict[str, Any] = {
        "architecture": "jumprelu",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "model_name": model_name,
        "hook_name": hook,
        "hook_head_index": None,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
        "prepend_bos": True,
        "dataset_path": "monology/pile-uncopyrighted",
        "context_size": 1024,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "hf_hook_name": raw.get("hf_hook_point_in"),
        "device": device,
    }
    if transcoder:  # kept as sae-lens builds it, so the import refuses it by name
        cfg["architecture"] = (
            "jumprelu_skip_transcoder" if raw.get("affine_connection") else "jumprelu_transcoder"
        )
        cfg.update(
            hook_name_out=hook_out,
            hf_hook_name_out=raw.get("hf_hook_point_out"),
            d_out=shapes["w_dec"][-1],
        )
    cfg.update(cfg_overrides or {})
    return cfg


def gemma_3_converter(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """sae-lens's `gemma_3_sae_huggingface_loader` (a `PretrainedSaeHuggingfaceLoader`) without
    its network call: the weights file is fetched first (from the cache when there) and its
    header gives the shapes. Returns (config, state dict, no sparsity)."""
    from sae_lens.loading.pretrained_sae_loaders import load_safetensors_weights

    params = gemma_3_params_file(repo_id, folder_name, force_download)
    cfg = gemma_3_config(
        repo_id, folder_name, tensor_shapes(params), device, force_download, cfg_overrides
    )
    raw = load_safetensors_weights(params, device=device, dtype=cfg.get("dtype"))
    w_dec = raw["w_dec"]
    if "clt" in folder_name:  # a cross-layer transcoder writes to every later layer: summed
        w_dec = w_dec.sum(dim=1).contiguous()
    state = {
        "W_enc": raw["w_enc"],
        "W_dec": w_dec,
        "b_enc": raw["b_enc"],
        "b_dec": raw["b_dec"],
        "threshold": raw["threshold"],
    }
    if "affine_skip_connection" in raw:  # stored (d_in, d_out); sae-lens's W_skip is (d_out, d_in)
        state["W_skip"] = raw["affine_skip_connection"].T.contiguous()
    return cfg, state, None


def pretrained_metadata(
    release: str | None,
    sae_id: str | None,
    sae: SAE,
) -> dict[str, str | None]:
    """What shoggoth.json records of where an SAE came from: the sae-lens release, the SAE's
    id in it (`sae_lens_id`: shoggoth's own `sae_id` is a database's name for the SAE) and its
    Neuronpedia id (`https://neuronpedia.org/{neuronpedia_id}/{feature}`), None when unknown."""
    neuronpedia = sae.cfg.metadata.neuronpedia_id
    return {
        "release": release,
        "sae_lens_id": sae_id,
        "neuronpedia_id": str(neuronpedia) if neuronpedia else None,
    }
