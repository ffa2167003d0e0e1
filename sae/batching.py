"""Which rows run together: rows of different lengths padded to the longest cost the padding's
forward passes, and every pass costs a fixed price of its own (the model's hooks and Python,
about 50-70 ms on 2 CPU cores, as much as 60 tokens). The rows run shortest first, cut where a
cut saves more padding than a pass costs."""

from __future__ import annotations

import torch

PASS_TOKENS = {"cpu": 64, "cuda": 4096}
"""A forward pass's fixed cost in padded tokens, by device type: on a CPU (2 cores, SmolLM2)
about 60 ms of hooks and Python against about 1 ms a token (measured; 64 beat 256 and 1,024 on
the demo's harvest); on a GPU a batch's tokens run in parallel, so cuts should pay only for
much padding (4,096 is a guess, not yet measured on a GPU)."""


def pass_tokens(device: torch.device | str) -> int:
    """PASS_TOKENS for `device` (an accelerator other than CUDA counts as one)."""
    kind = torch.device(device).type
    return PASS_TOKENS.get(kind, PASS_TOKENS["cuda"])


def length_batches(lengths: list[int], pass_cost: int, max_rows: int) -> list[list[int]]:
    """Row indices in batches: sorted by length (ties by index), cut into consecutive runs of
    at most `max_rows` that minimise Σ rows × longest + `pass_cost` × batches (an exact
    dynamic programme over the cut points; n ≤ a few hundred rows)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: the cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]  # sorted: the batch's last row is its longest
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + (j - i) * longest + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j] : j])
        j = cut[j]
    return batches[::-1]
