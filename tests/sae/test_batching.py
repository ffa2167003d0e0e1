"""Rows grouped by length: the cut points are the cheapest, and the grouped passes give each row
the activations it gets alone."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from shoggoth.sae.activations import activations_at
from shoggoth.sae.batching import length_batches
from shoggoth.sae.encode import prompts_activations
from shoggoth.sae.prompts import build_prompt, collate, pad_id


def cost(lengths: list[int], batches: list[list[int]], pass_cost: int) -> int:
    return sum(len(b) * max(lengths[i] for i in b) + pass_cost for b in batches)


def cheapest(lengths: list[int], pass_cost: int, max_rows: int) -> int:
    """Every way to cut the sorted rows, tried."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n, best = len(order), None
    for cuts in itertools.product([False, True], repeat=n - 1):
        batches, start = [], 0
        for j, c in enumerate(cuts, 1):
            if c:
                batches.append(order[start:j])
                start = j
        batches.append(order[start:])
        if all(len(b) <= max_rows for b in batches):
            c = cost(lengths, batches, pass_cost)
            best = c if best is None else min(best, c)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_cuts_are_the_cheapest(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 11)
    lengths = [rng.randint(1, 120) for _ in range(n)]
    pass_cost, max_rows = rng.choice([0, 5, 64, 500]), rng.randint(1, 6)
    batches = length_batches(lengths, pass_cost, max_rows)
    assert sorted(i for b in batches for i in b) == list(range(n))  # each row once
    assert all(1 <= len(b) <= max_rows for b in batches)
    assert cost(lengths, batches, pass_cost) == cheapest(lengths, pass_cost, max_rows)


def test_free_passes_never_pad_and_costly_ones_fill_the_batch():
    lengths = [30, 10, 20, 10, 30, 20]
    free = length_batches(lengths, 0, 6)
    assert all(len({lengths[i] for i in b}) == 1 for b in free)  # no padding at all
    costly = length_batches(lengths, 10_000, 4)
    assert len(costly) == 2  # as few passes as four rows a pass allow
    assert cost(lengths, costly, 0) == 140  # and of those, the least padding (4 × 20 + 2 × 30)


def test_grouped_passes_give_each_prompt_its_own_activations(tiny_gpt2):
    model = tiny_gpt2
    questions = ["Hi?", "What is the capital of a country far away from here?", "Why?"]
    answers = ["Yes.", "A long answer, with many more words than the others.", "No idea."]
    # Nine lengths (three systems × three questions) in passes of at most four rows: the passes
    # must pad.
    systems = ["You are terse.", "You are a pirate captain.", "You are a calm, careful tutor."]
    prompts = [
        build_prompt(model.tokenizer, system, q, a, prepend_bos=model.prepend_bos)
        for system in systems
        for q, a in zip(questions, answers, strict=True)
    ]
    hook = "blocks.1.hook_resid_post"
    acts, doc = prompts_activations(model, prompts, [hook], None, max_rows=4)
    assert doc.tolist() == [i for i, p in enumerate(prompts) for _ in range(sum(p.mask))]
    for i, p in enumerate(prompts):
        batch = collate([p], pad_id(model.tokenizer), "right")
        alone = activations_at(model, batch, [hook])[hook][batch.continuation_mask]
        torch.testing.assert_close(acts[hook][doc == i], alone, atol=1e-5, rtol=1e-5)
