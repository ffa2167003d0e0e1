"""SAE evaluation on held-out activations: explained variance, L0, dead features, CE recovered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from shoggoth.sae.models import Model

if TYPE_CHECKING:
    from sae_lens import SAE


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖², over all tokens and dimensions ([n, d] inputs)."""
    x, x_hat = x.double(), x_hat.double()
    sse = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum()
    return float(1 - sse / total)


@torch.no_grad()
def evaluate_sae(sae: SAE, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Reconstruction and sparsity of `sae` on activations `acts` [n_tokens, d_in].

    Returns explained_variance, mse (mean over tokens of the squared error summed over dims),
    l0 (mean number of active features per token), dead_fraction (features that never fire on
    these tokens) and n_tokens.
    """
    acts = acts.to(sae.device, sae.dtype)
    recon, fired, l0_sum = [], torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=sae.device), 0.0
    for start in range(0, len(acts), batch_size):
        feats = sae.encode(acts[start : start + batch_size])
        recon.append(sae.decode(feats))
        active = feats != 0
        fired |= active.any(dim=0)
        l0_sum += float(active.sum())
    x_hat = torch.cat(recon)
    return {
        "explained_variance": explained_variance(acts, x_hat),
        "mse": float((acts.double() - x_hat.double()).pow(2).sum(-1).mean()),
        "l0": l0_sum / len(acts),
        "dead_fraction": float(1 - fired.float().mean()),
        "n_tokens": len(acts),
    }


@torch.no_grad()
def ce_loss_recovered(
    model: Model, sae: SAE, hook: str, contexts: torch.Tensor, keep: torch.Tensor, batch: int = 8
) -> dict[str, float]:
    """Next-token cross-entropy with the SAE's reconstruction spliced in at `hook`.

    `keep` [n, seq] marks the positions that are spliced (special tokens keep their activation,
    as in training). recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean): 1 is perfect, 0 is
    no better than zeroing the activation.
    """
    bridge = model.bridge

    def splice(replace: str, positions: torch.Tensor) -> Any:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            mask = positions.to(act.device).unsqueeze(-1)
            if replace == "zero":
                new = torch.zeros_like(act)
            else:
                new = sae.decode(sae.encode(act.to(sae.device, sae.dtype))).to(
                    act.device, act.dtype
                )
            return torch.where(mask, new, act)

        return fn

    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    for start in range(0, len(contexts), batch):
        tokens = contexts[start : start + batch].to(model.device)
        positions = keep[start : start + batch]
        totals["clean"] += float(bridge(tokens, return_type="loss")) * len(tokens)
        for name in ("sae", "zero"):
            loss = bridge.run_with_hooks(
                tokens, return_type="loss", fwd_hooks=[(hook, splice(name, positions))]
            )
            totals[name] += float(loss) * len(tokens)
    ce = {k: v / len(contexts) for k, v in totals.items()}
    denom = ce["zero"] - ce["clean"]
    return {
        "ce_clean": ce["clean"],
        "ce_with_sae": ce["sae"],
        "ce_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / denom if denom else float("nan"),
    }
