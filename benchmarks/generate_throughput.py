"""Generation throughput: `shoggoth generate`'s batched, prefix-cached loop against transformers'
own `generate` (left-padded batches, greedy) on the same prompts, same batches, same token
budget; also whether the two write the same answers.

    python -m benchmarks.generate_throughput [--model smollm2] [--personas pirate,poet]
        [--items-per-topic 1] [--max-tokens 40] [--repeats 3]

Prints tokens/s of each (median over repeats; tokens counted up to each row's stop token, the
same way for both), their ratio (goal ≥ 0.9), and the share of identical answers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from shoggoth.battery.personas import load_items, load_personas, subset_items
from shoggoth.sae.generation import Generator, generate_batch, load_generator, prefix_kv, prompt_ids
from shoggoth.sae.generation import shared_length as shared


def ours(gen: Generator, groups: list[list[list[int]]], max_tokens: int) -> list[list[int]]:
    out = []
    for rows in groups:  # one persona paraphrase: its prefix runs once
        n = shared(rows)
        cache = prefix_kv(gen, rows[0][:n])
        out += [
            ids
            for ids, _ in generate_batch(gen, rows[0][:n], cache, [r[n:] for r in rows], max_tokens)
        ]
    return out


def reference(gen: Generator, groups: list[list[list[int]]], max_tokens: int) -> list[list[int]]:
    pad = gen.tokenizer.pad_token_id or 0
    stops = gen.stop_ids
    out = []
    for rows in groups:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad)
        attn = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            attn[r, width - len(row) :] = 1
        with torch.inference_mode():
            new = gen.hf.generate(
                input_ids=ids,
                attention_mask=attn,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=sorted(stops),
                pad_token_id=pad,
            )[:, width:]
        for row in new.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--personas", default="pirate,poet,helpful_assistant")
    ap.add_argument("--items-per-topic", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    gen = load_generator(args.model, "auto")
    chosen = {p.name: p for p in load_personas()}
    items = subset_items(load_items(), args.items_per_topic)
    groups = [
        [
            prompt_ids(gen.tokenizer, chosen[name].prompts[0], it.question, "auto", True)
            for it in items
        ]
        for name in args.personas.split(",")
    ]
    print(
        f"{args.model} on {gen.device}: {len(groups)} persona prompts × {len(items)} items, "
        f"batches of {len(items)}, up to {args.max_tokens} tokens, {torch.get_num_threads()} "
        "threads"
    )
    times: dict[str, list[float]] = {"shoggoth": [], "transformers": []}
    answers = {}
    for _ in range(args.repeats):
        for name, fn in (("shoggoth", ours), ("transformers", reference)):
            t = time.perf_counter()
            answers[name] = fn(gen, groups, args.max_tokens)
            times[name].append(time.perf_counter() - t)
    tokens = {k: sum(map(len, v)) for k, v in answers.items()}
    rate = {k: tokens[k] / statistics.median(times[k]) for k in times}
    same = sum(a == b for a, b in zip(answers["shoggoth"], answers["transformers"], strict=True))
    for k in times:
        print(
            f"{k:>13}: {statistics.median(times[k]):.2f} s median of {args.repeats} · "
            f"{tokens[k]:,} tokens · {rate[k]:,.1f} tokens/s"
        )
    print(
        f"ratio shoggoth / transformers: {rate['shoggoth'] / rate['transformers']:.2f}× "
        "(goal ≥ 0.9)"
    )
    print(f"identical answers: {same}/{len(answers['shoggoth'])}")


if __name__ == "__main__":
    main()
