"""Continuation masks: exact positions, both models, with and without chat template, padding."""

from __future__ import annotations

import pytest
import torch
from helpers import NO_SYSTEM_TEMPLATE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoggoth.core.errors import BadInput
from shoggoth.sae.activations import activations
from shoggoth.sae.prompts import build_batch, build_prompt, collate, pad_id, special_ids

SYSTEM, USER, ANSWER = "You are a pirate.", "What is rain?", "Rain is water."
PERSONAS = ["You are a pirate.", "You are a helpful assistant.", "", "You are not a villain."]


def own_tokens(tokenizer, text):
    """The continuation tokenized on its own, no special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def masked_run(prompt):
    """(first, last) index of the mask, asserting it is one contiguous run."""
    idx = [i for i, m in enumerate(prompt.mask) if m]
    assert idx == list(range(idx[0], idx[-1] + 1)), "mask is not contiguous"
    return idx[0], idx[-1]


def test_minilm_plain_prompt_exact_positions(minilm):
    """BERT splits on spaces and punctuation, so the positions can be read off the text:
    [CLS] you are a pirate . what is rain ? | rain is water . | [SEP]"""
    tok = minilm.tokenizer
    p = build_prompt(tok, SYSTEM, USER, ANSWER)
    assert p.template == "plain"
    assert tok.convert_ids_to_tokens(p.input_ids) == [
        "[CLS]",
        "you",
        "are",
        "a",
        "pirate",
        ".",
        "what",
        "is",
        "rain",
        "?",
        "rain",
        "is",
        "water",
        ".",
        "[SEP]",
    ]
    assert [i for i, m in enumerate(p.mask) if m] == [10, 11, 12, 13]


def test_tiny_gpt2_chat_prompt_positions(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    p = build_prompt(tok, SYSTEM, USER, ANSWER)
    assert p.template == "chat"
    first, last = masked_run(p)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    header = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    # Everything before the mask is exactly the rendered conversation up to the assistant header.
    assert tok.decode(p.input_ids[:first]) == header
    assert p.input_ids[first : last + 1] == own_tokens(tok, ANSWER)
    assert tok.decode(p.input_ids[last + 1 :]) == "<|end|>\n"
    assert p.input_ids[0] == tok.bos_token_id


def test_tiny_gpt2_plain_prompt_positions(tiny_gpt2, tiny_gpt2_base):
    for model, template in ((tiny_gpt2, "plain"), (tiny_gpt2_base, "auto")):
        tok = model.tokenizer
        p = build_prompt(tok, SYSTEM, USER, ANSWER, template=template, prepend_bos=True)
        assert p.template == "plain"
        first, last = masked_run(p)
        assert p.input_ids[0] == tok.bos_token_id and not p.mask[0]
        assert tok.decode(p.input_ids[1:first]) == f"{SYSTEM}\n\n{USER}\n\n"
        assert p.input_ids[first:] == own_tokens(tok, ANSWER)
        assert last == len(p.input_ids) - 1


def test_no_system_prompt_and_no_user_turn(tiny_gpt2_base, minilm):
    tok = tiny_gpt2_base.tokenizer
    p = build_prompt(tok, None, "", ANSWER, prepend_bos=True)
    assert p.input_ids == [tok.bos_token_id, *own_tokens(tok, ANSWER)]
    assert p.mask == [False] + [True] * (len(p.input_ids) - 1)
    q = build_prompt(minilm.tokenizer, "", USER, ANSWER)
    assert minilm.tokenizer.decode(q.input_ids) == "[CLS] what is rain? rain is water. [SEP]"


def test_template_without_system_role_folds_persona_into_user_turn(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    original = tok.chat_template
    tok.chat_template = NO_SYSTEM_TEMPLATE
    try:
        p = build_prompt(tok, SYSTEM, USER, ANSWER)
        first, _ = masked_run(p)
        assert tok.decode(p.input_ids[:first]) == (
            f"<|endoftext|><|user|>\n{SYSTEM}\n\n{USER}<|end|>\n<|assistant|>\n"
        )
        assert p.continuation_ids == own_tokens(tok, ANSWER)
    finally:
        tok.chat_template = original


@pytest.mark.parametrize("which", ["minilm", "tiny_gpt2", "tiny_gpt2_base"])
@pytest.mark.parametrize("template", ["auto", "plain"])
def test_same_continuation_tokens_under_every_persona(which, template, request):
    model = request.getfixturevalue(which)
    seen = {
        tuple(
            build_prompt(
                model.tokenizer, s, USER, ANSWER, template=template, prepend_bos=model.prepend_bos
            ).continuation_ids
        )
        for s in PERSONAS
    }
    assert len(seen) == 1


@pytest.mark.parametrize("which", ["minilm", "tiny_gpt2", "tiny_gpt2_base"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_puts_masks_and_tokens_in_the_right_place(which, side, request):
    model = request.getfixturevalue(which)
    rows = [(s, USER, ANSWER + " More." * i) for i, s in enumerate(PERSONAS)]
    prompts = [build_prompt(model.tokenizer, *r, prepend_bos=model.prepend_bos) for r in rows]
    batch = collate(prompts, pad_id(model.tokenizer), side)
    width = batch.input_ids.shape[1]
    assert width == max(len(p.input_ids) for p in prompts)
    for row, p in enumerate(prompts):
        n = len(p.input_ids)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        assert batch.input_ids[row, cols].tolist() == p.input_ids
        assert batch.continuation_mask[row, cols].tolist() == p.mask
        assert int(batch.attention_mask[row].sum()) == n
        assert batch.attention_mask[row, cols].all()
        # Nothing outside the real tokens is measured.
        assert int(batch.continuation_mask[row].sum()) == sum(p.mask)


@pytest.mark.parametrize("which", ["minilm", "tiny_gpt2", "tiny_gpt2_base"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_give_the_same_activations_as_alone(which, side, request):
    """Padding must not change what is measured: position ids and attention follow the mask."""
    model = request.getfixturevalue(which)
    hook = f"blocks.{model.n_layers - 1}.hook_resid_post"
    rows = [(s, USER, ANSWER + " More words here." * i) for i, s in enumerate(PERSONAS)]
    batch = build_batch(model.tokenizer, rows, prepend_bos=model.prepend_bos, padding_side=side)
    padded = activations(model, batch, hook)
    for row, r in enumerate(rows):
        alone = build_batch(model.tokenizer, [r], prepend_bos=model.prepend_bos)
        expected = activations(model, alone, hook)[0][alone.continuation_mask[0]]
        got = padded[row][batch.continuation_mask[row]]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_padding_side_defaults_to_the_tokenizers(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    rows = [(SYSTEM, USER, ANSWER), ("", "", "Hi.")]
    original = tok.padding_side
    try:
        tok.padding_side = "left"
        assert build_batch(tok, rows).attention_mask[1, 0] == 0
        tok.padding_side = "right"
        assert build_batch(tok, rows).attention_mask[1, -1] == 0
    finally:
        tok.padding_side = original


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_empty_continuation_is_refused(minilm, text):
    with pytest.raises(BadInput, match="continuation: is empty"):
        build_prompt(minilm.tokenizer, SYSTEM, USER, text)


def test_chat_template_requested_but_missing(minilm):
    with pytest.raises(BadInput, match="no chat template"):
        build_prompt(minilm.tokenizer, SYSTEM, USER, ANSWER, template="chat")


pieces = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
    | st.sampled_from([" ", "\n"]),
    max_size=12,
) | st.sampled_from(["<|end|>", "[SEP]", "[CLS]", "<|endoftext|>", "<|user|>", " ", "\n\n"])
texts = st.lists(pieces, max_size=5).map("".join)


@pytest.mark.parametrize("which", ["minilm", "tiny_gpt2", "tiny_gpt2_base"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(system=texts, user=texts, answer=texts.filter(lambda t: t.strip()))
def test_mask_is_exactly_the_continuation_and_never_special(which, request, system, user, answer):
    model = request.getfixturevalue(which)
    tok = model.tokenizer
    specials = special_ids(tok)
    try:
        p = build_prompt(tok, system, user, answer, prepend_bos=model.prepend_bos)
    except BadInput as e:
        # Only a continuation made entirely of special tokens may be refused.
        assert "produces no tokens" in str(e)
        assert all(i in specials for i in own_tokens(tok, answer))
        return
    assert not any(m for i, m in zip(p.input_ids, p.mask, strict=True) if i in specials)
    assert p.continuation_ids == [i for i in own_tokens(tok, answer) if i not in specials]
    if not any(i in specials for i in own_tokens(tok, answer)):
        first, last = masked_run(p)
        assert p.input_ids[first : last + 1] == own_tokens(tok, answer)
