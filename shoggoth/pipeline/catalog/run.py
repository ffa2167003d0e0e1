"""`shoggoth index`, the steps that need the model: the SAE's decoder directions and, for causal
LMs, their logit effects through the unembedding; `index.catalog` does the rest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from shoggoth.core.placement import placement_of
from shoggoth.core.progress import Log
from shoggoth.index.catalog.build import IndexConfig, IndexResult, build_catalog, read_harvest
from shoggoth.sae.models import Model, load_model
from shoggoth.sae.sae_dir import load_harvest_sae

ENCODER_NOTE = (
    "skipped: the model is not a causal LM (an encoder's LM head is not part of its checkpoint)"
)


def logit_effects(model: Model, w_dec: np.ndarray, top: int, batch: int = 1024) -> pd.DataFrame:
    """Top promoted/suppressed tokens of each decoder direction through the unembedding."""
    w_u = model.bridge.original_model.get_output_embeddings().weight  # [vocab, d]
    w_u = w_u.detach().float().cpu()
    dec = torch.from_numpy(w_dec).float()
    tokens = model.tokenizer.convert_ids_to_tokens(list(range(w_u.shape[0])))
    rows = []
    for s in range(0, len(dec), batch):
        logits = dec[s : s + batch] @ w_u.T
        for sign, largest in (("promoted", True), ("suppressed", False)):
            vals, ids = torch.topk(logits, top, dim=1, largest=largest)
            for r in range(len(ids)):
                for rank, (tid, val) in enumerate(
                    zip(ids[r].tolist(), vals[r].tolist(), strict=True), 1
                ):
                    rows.append((s + r, sign, rank, tid, str(tokens[tid]), val))
    return pd.DataFrame(rows, columns=["feature", "sign", "rank", "token_id", "token", "value"])


def model_logit_effects(
    model_name: str, w_dec: np.ndarray, cfg: IndexConfig, log: Log
) -> tuple[pd.DataFrame | None, str]:
    """(logit effects or None, how they were made): the model is loaded once, and encoders
    (whose LM head is not in their checkpoint) are skipped."""
    model = load_model(
        model_name, cfg.device, placement=placement_of(cfg.device_map, cfg.max_memory)
    )
    if not model.is_causal or model.bridge.original_model.get_output_embeddings() is None:
        return None, ENCODER_NOTE
    log("logit effects")
    return (
        logit_effects(model, w_dec, cfg.logit_top),
        "computed: decoder direction · unembedding (no final norm)",
    )


def index_harvest(cfg: IndexConfig, log: Log = print) -> IndexResult:
    """Build one SAE's feature catalog; returns what `build_catalog` built."""
    harvest = read_harvest(cfg)
    sae = load_harvest_sae(cfg.db, harvest.record, cfg.device)
    w_dec = sae.W_dec.detach().float().cpu().numpy()
    effects, note = model_logit_effects(harvest.record.model, w_dec, cfg, log)
    return build_catalog(cfg, harvest, w_dec, effects, note, log)
