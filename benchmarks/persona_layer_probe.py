"""Where does the persona live? A linear probe per layer, on held-out items and held-out prompts.

For every block L of the model, the residual stream after the block (resid_post), averaged over
the answer tokens of each document, is given to a multinomial logistic regression that must
name the persona (the battery's non-control personas). It is trained on some paraphrases and
items and scored on the others: the prompts and the answers it is scored on were never seen in
training, so it decodes the persona, not a wording or an item. Chance is 1 / personas. Prints
accuracy per layer, on the raw residuals and with each item's documents centered (the answer's
content dominates the raw residual; centering per item, which uses no label, leaves the shift
each persona adds), and the layer the demo should use: the shallowest block of the model's
second half whose centered accuracy is at least 90% of the best (the forward pass stops after
the hooked block, so harvest and training cost grow with depth; 90% trades a few points of
decodability for that; and the first blocks are left out because there the prompt's own words
are still readable from the answer tokens, which is the persona's wording, not its
representation: Gemma 3 270M decodes at 0.88 from block 0).

    python -m benchmarks.persona_layer_probe [--model smollm2] [--items-per-topic 2]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shoggoth.battery.personas import load_items, load_personas, subset_items
from shoggoth.sae.models import load_model
from shoggoth.sae.prompts import build_prompt, collate, pad_id


def pooled_residuals(model: Any, prompts: list[Any], batch: int = 16) -> np.ndarray:
    """[documents, layers, d_model]: each block's output averaged over the answer tokens."""
    # The base model without its language-model head: the hidden states are the same, and
    # Gemma's 262k-token unembedding would cost more than all its blocks.
    hf = model.bridge.original_model.base_model
    out = []
    for start in range(0, len(prompts), batch):
        b = collate(prompts[start : start + batch], pad_id(model.tokenizer))
        with torch.inference_mode():
            hidden = hf(
                input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True
            ).hidden_states[1:]
        mask = b.continuation_mask.unsqueeze(-1).float()
        out.append(torch.stack([(h.float() * mask).sum(1) / mask.sum(1) for h in hidden], 1))
    return torch.cat(out).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--items-per-topic", type=int, default=2)
    ap.add_argument("--train-paraphrases", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    started = time.time()
    model = load_model(args.model, "cpu")
    personas = [p for p in load_personas() if not p.is_control]
    items = subset_items(load_items(), args.items_per_topic)
    train_items = {i.item_id for n, i in enumerate(items) if n % 3 != 2}
    rows, prompts = [], []
    for k, persona in enumerate(personas):
        for j, system in enumerate(persona.prompts):
            for item in items:
                prompts.append(
                    build_prompt(
                        model.tokenizer,
                        system,
                        item.question,
                        item.answer,
                        prepend_bos=model.prepend_bos,
                    )
                )
                rows.append((k, j < args.train_paraphrases, item.item_id in train_items))
    x = pooled_residuals(model, prompts)
    y = np.array([r[0] for r in rows])
    train = np.array([r[1] and r[2] for r in rows])
    test = np.array([not r[1] and not r[2] for r in rows])
    # The answer's own content dominates its residuals; the persona is what differs between
    # documents of one item. Centering each item's documents (over every persona and prompt,
    # never using a label) removes the item and leaves the persona's shift.
    item_of = np.array([n % len(items) for n in range(len(rows))])
    centered = x.copy()
    for i in range(len(items)):
        centered[item_of == i] -= x[item_of == i].mean(0)
    results = {}
    for name, data in (("raw", x), ("item-centered", centered)):
        accuracy = []
        for layer in range(x.shape[1]):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            probe.fit(data[train, layer], y[train])
            accuracy.append(round(float((probe.predict(data[test, layer]) == y[test]).mean()), 3))
        results[name] = accuracy
    print("layer   raw   item-centered")
    for layer in range(x.shape[1]):
        print(f"{layer:5d} {results['raw'][layer]:6.3f} {results['item-centered'][layer]:8.3f}")
    accuracy = results["item-centered"]
    best = max(accuracy)
    chosen = next(
        layer for layer, a in enumerate(accuracy) if a >= 0.9 * best and layer >= len(accuracy) // 2
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "personas": len(personas),
                "items": len(items),
                "train_documents": int(train.sum()),
                "test_documents": int(test.sum()),
                "chance": round(1 / len(personas), 3),
                **results,
                "best_layer": int(np.argmax(accuracy)),
                "best": best,
                "chosen_layer": chosen,
                "seconds": round(time.time() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
