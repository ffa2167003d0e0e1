"""The evaluation function: explained variance, L0, dead features, CE loss recovered."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig

from shoggoth.sae.train.evaluate import ce_loss_recovered, evaluate_sae, explained_variance


def test_explained_variance_matches_torch_var():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g) * 3 + 5  # a large mean, as in residual streams
    x_hat = x + 0.5 * torch.randn(500, 16, generator=g)
    total = x.var(dim=0, unbiased=False).sum() * len(x)
    expected = 1 - ((x - x_hat) ** 2).sum() / total
    assert explained_variance(x, x_hat) == pytest.approx(float(expected), rel=1e-6)
    assert explained_variance(x, x) == pytest.approx(1.0)
    # Predicting the mean explains nothing, even though the raw second moment is large.
    assert explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-9)


def mirror_sae(d_in: int) -> SAE:
    """A ReLU SAE with features +e_i and -e_i: it reconstructs any input exactly."""
    sae = SAE.from_dict(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in).to_dict())
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_evaluate_sae_on_a_known_sae():
    d = 6
    sae = mirror_sae(d)
    x = torch.randn(300, d, generator=torch.Generator().manual_seed(1))
    x[:, 0] = x[:, 0].abs() + 0.1  # dimension 0 is always positive: feature -e_0 never fires
    m = evaluate_sae(sae, x, batch_size=64)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert m["mse"] == pytest.approx(0.0, abs=1e-9)
    assert m["l0"] == pytest.approx(float((x != 0).sum(-1).float().mean()))
    assert m["dead_fraction"] == pytest.approx(1 / (2 * d))
    assert m["n_tokens"] == 300
    # Halving the decoder halves every reconstruction: EV drops by a computable amount.
    with torch.no_grad():
        sae.W_dec.mul_(0.5)
    m2 = evaluate_sae(sae, x)
    assert m2["explained_variance"] == pytest.approx(explained_variance(x, 0.5 * x), abs=1e-6)


def test_ce_loss_recovered_is_one_for_a_perfect_sae(tiny_gpt2):
    sae = mirror_sae(tiny_gpt2.d_model)
    contexts = torch.randint(
        5, len(tiny_gpt2.tokenizer), (4, 24), generator=torch.Generator().manual_seed(2)
    )
    contexts[:, 0] = tiny_gpt2.tokenizer.bos_token_id
    keep = torch.ones_like(contexts, dtype=torch.bool)
    keep[:, 0] = False
    m = ce_loss_recovered(tiny_gpt2, sae, "blocks.1.hook_resid_post", contexts, keep, batch=3)
    assert m["ce_with_sae"] == pytest.approx(m["ce_clean"], abs=1e-4)
    assert m["ce_zero_ablation"] != pytest.approx(m["ce_clean"], abs=1e-3)
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    # A useless SAE (all features off) recovers nothing: it is the zero ablation.
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)
    m0 = ce_loss_recovered(tiny_gpt2, sae, "blocks.1.hook_resid_post", contexts, keep)
    assert m0["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
