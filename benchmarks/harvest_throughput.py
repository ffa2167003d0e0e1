"""Harvest throughput: continuation tokens/s of `shoggoth harvest` against the bare model.

For each model, on the same personas and items, in one run:
  floor    the bare model forward (to the hook layer) over only the answer tokens, batched the
           same way: the least any harvest could pay if nothing else had to run;
  forward  exactly the forward passes the harvest runs (its batches and prefix caches: every
           token after a persona prompt's shared prefix, which a causal LM cannot share across
           personas), with no SAE and no writes: the work no harvest can skip;
  documents the bare forward over the whole documents, batched the same way without a prefix
           cache: what running the model over the battery costs a user's own loop (causal LMs;
           for an encoder it is the line above);
  harvest  `shoggoth harvest` with the prefix KV cache: its batch loop (prompts, persona
           prefixes, SAE encoding, DuckDB writes), and end to end after model load (adds the
           set-up checks, the database creation and the final merge into --db);
  no-cache the same harvest recomputing every persona prefix (causal LMs only).
Prints the median of --repeats runs and the ratios to the floor, to the harvest's own forward
passes and to the bare forward of the whole documents, plus the storage figures of the
harvested database.

Models: the built-in MiniLM (an encoder: no cache is possible, every prompt token is run), a
causal LM with GPT-2-small's shape (12 layers, d_model 768, random weights and a BPE tokenizer
trained on the battery text; throughput depends on shapes, not weights), and the built-in chat
model SmolLM2-135M-Instruct (real weights, Llama, 30 layers; hooked at the demo's layer).

    python -m benchmarks.harvest_throughput [--items 96] [--personas 4] [--repeats 3]
                                            [--models minilm,gpt2,smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from shoggoth.battery.personas import BATTERY_DIR, Item, Persona, load_items, load_personas
from shoggoth.battery.units import grid_units
from shoggoth.pipeline.harvest.run import HarvestConfig, harvest
from shoggoth.sae.activations import activations
from shoggoth.sae.encode import Harvester
from shoggoth.sae.models import Model, load_model
from shoggoth.sae.prompts import Prompt, collate, pad_id

SMOL_LAYER = 15
"""The demo's SmolLM2 hook (shoggoth/pipeline/demo.py)."""
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def gpt2_small(directory: Path) -> Path:
    """A random GPT-2-small-shaped causal LM with a chat template, saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    texts = [json.dumps(i.__dict__) for i in load_items()]
    texts += [p for persona in load_personas() for p in persona.prompts]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    roles = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok.train_from_iterator(
        texts * 5,
        trainers.BpeTrainer(
            vocab_size=8000,
            special_tokens=["<|endoftext|>", *roles],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        additional_special_tokens=roles,
    )
    fast.chat_template = CHAT
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def random_sae(directory: Path, model: str, d_in: int, hook: str) -> Path:
    """A random TopK SAE (expansion 8, k 32) for throughput only."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d_in, d_sae=8 * d_in, k=32, metadata=SAEMetadata(hook_name=hook, model_name=model)
        )
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.05)
    sae.save_model(str(directory))
    (directory / "shoggoth.json").write_text(json.dumps({"model": model}))
    return directory


def slice_battery(work: Path, personas: int, paraphrases: int, items: int) -> list[Path]:
    """A slice of the built-in battery written to `work`: the first personas (all their
    families' style of prompt) with their first prompts, and items spread over every topic."""
    import yaml

    raw = yaml.safe_load((BATTERY_DIR / "personas.yaml").read_text())["personas"]
    chosen = [p for p in raw if not p.get("is_control")][:personas]
    for p in chosen:
        p["prompts"] = p["prompts"][:paraphrases]
    (work / "personas.yaml").write_text(yaml.safe_dump({"personas": chosen}))
    lines = (BATTERY_DIR / "items.jsonl").read_text().splitlines()
    step = max(1, len(lines) // items)
    (work / "items.jsonl").write_text("\n".join(lines[::step][:items]) + "\n")
    return [work / "personas.yaml", work / "items.jsonl"]


def floor(model: Model, hook: str, answers: list[list[int]], n_docs: int, batch: int) -> float:
    """Seconds for the bare forward over only the answer tokens of n_docs documents."""
    prompts = [Prompt(ids, [True] * len(ids), "plain") for ids in answers]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    t0 = time.perf_counter()
    done = 0
    while done < n_docs:
        for s in range(0, len(order), batch):
            chunk = [prompts[i] for i in order[s : s + batch]][: n_docs - done]
            activations(model, collate(chunk, pad_id(model.tokenizer), "right"), hook)
            done += len(chunk)
            if done >= n_docs:
                break
    return time.perf_counter() - t0


def forward_of_the_harvest(
    model: Model, hook: str, personas: list[Persona], items: list[Item], batch: int, cached: bool
) -> float:
    """Seconds for exactly the forward passes a harvest runs (its batches, its prefix caches,
    every token after each shared prefix, up to the hook), with no SAE and no writes: the floor
    of the work that cannot be skipped."""
    harvester = Harvester(model, [], [hook], personas, items, "auto", cached)
    lengths = [len(p.input_ids) for p in harvester.group(0, 0)]
    t0 = time.perf_counter()
    for unit in grid_units(personas, lengths, batch):
        harvester.hook_activations(unit, cached)
    return time.perf_counter() - t0


def bench(
    name: str,
    model_id: str,
    sae_dir: Path,
    battery: list[Path],
    work: Path,
    batch: int,
    repeats: int,
) -> dict[str, object]:
    model = load_model(model_id, "auto")
    personas, items = load_personas(battery[0]), load_items(battery[1])
    n_docs = sum(len(p.prompts) for p in personas) * len(items)
    tok = model.tokenizer
    answers = [tok(i.answer, add_special_tokens=False)["input_ids"] for i in items]
    tokens = sum(len(a) for a in answers) * sum(len(p.prompts) for p in personas)
    hook = json.loads((sae_dir / "cfg.json").read_text())["metadata"]["hook_name"]
    variants = {"harvest": True, "no-cache": False} if model.is_causal else {"harvest": False}
    times: dict[str, list[float]] = {"floor": []}
    summary = None
    t_load = time.perf_counter()
    load_model(model_id, "auto")
    load_seconds = time.perf_counter() - t_load
    for r in range(repeats):
        times["floor"].append(floor(model, hook, answers, n_docs, batch))
        times.setdefault("same forward", []).append(
            forward_of_the_harvest(model, hook, personas, items, batch, cached=model.is_causal)
        )
        if model.is_causal:
            times.setdefault("documents", []).append(
                forward_of_the_harvest(model, hook, personas, items, batch, cached=False)
            )
        for variant, cache in variants.items():
            db = work / f"{name}-{variant}-{r}.duckdb"
            t0 = time.perf_counter()
            summary = harvest(
                HarvestConfig(
                    db=db,
                    sae_dir=[sae_dir],
                    model=model_id,
                    personas=battery[0],
                    items=battery[1],
                    batch=batch,
                    prefix_cache=cache,
                ),
                log=lambda _: None,
            ).first
            # The harvest loads its own model; that one-off cost is not throughput.
            times.setdefault(f"{variant} end to end", []).append(
                time.perf_counter() - t0 - load_seconds
            )
            times.setdefault(f"{variant} batch loop", []).append(summary.batch_seconds)
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "docs": n_docs,
        "answer_tokens": tokens,
        "rates": rate,
        "summary": summary,
        "times": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--personas", type=int, default=4, help="non-control personas to use")
    ap.add_argument("--paraphrases", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--models",
        default="minilm,gpt2,smollm2",
        help="comma-separated: minilm, gpt2 (GPT-2-small-shaped), smollm2",
    )
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        battery = slice_battery(work, args.personas, args.paraphrases, args.items)

        results = []
        for name in args.models.split(","):
            if name == "minilm":
                results.append(
                    bench(
                        "minilm (encoder)",
                        "minilm",
                        random_sae(work / "sae-minilm", "minilm", 384, "blocks.3.hook_resid_post"),
                        battery,
                        work,
                        args.batch,
                        args.repeats,
                    )
                )
            elif name == "gpt2":
                gpt2 = gpt2_small(work / "gpt2-small-random")
                results.append(
                    bench(
                        "gpt2-small-shaped (causal, chat template)",
                        str(gpt2),
                        random_sae(work / "sae-gpt2", str(gpt2), 768, "blocks.5.hook_resid_post"),
                        battery,
                        work,
                        args.batch,
                        args.repeats,
                    )
                )
            elif name == "smollm2":
                results.append(
                    bench(
                        f"smollm2 (SmolLM2-135M-Instruct, real weights, hook block {SMOL_LAYER})",
                        "smollm2",
                        random_sae(
                            work / "sae-smollm2",
                            "smollm2",
                            576,
                            f"blocks.{SMOL_LAYER}.hook_resid_post",
                        ),
                        battery,
                        work,
                        args.batch,
                        args.repeats,
                    )
                )
            else:
                raise SystemExit(f"--models: unknown model {name!r}")
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}; medians of {args.repeats} runs; answer tokens per second")
    for r in results:
        rates = r["rates"]
        s = r["summary"]
        print(f"\n{r['model']}: {r['docs']} documents, {r['answer_tokens']:,} answer tokens")
        print(f"  floor (bare forward, answer tokens only): {rates['floor']:10,.0f} tok/s")
        print(
            f"  the harvest's own forward passes        : {rates['same forward']:10,.0f} tok/s"
            f"   ratio {rates['same forward'] / rates['floor']:.2f}"
        )
        documents = rates.get("documents", rates["same forward"])
        if "documents" in rates:
            print(
                f"  bare forward of the whole documents     : {documents:10,.0f} tok/s"
                f"   ratio {documents / rates['floor']:.2f}"
            )
        for variant in [k for k in rates if k not in ("floor", "same forward", "documents")]:
            print(
                f"  {variant:40s}: {rates[variant]:10,.0f} tok/s   ratio "
                f"{rates[variant] / rates['floor']:.2f}   to its own forward "
                f"{rates[variant] / rates['same forward']:.2f}   to the documents' "
                f"{rates[variant] / documents:.2f}"
            )
        print(
            f"  storage: {s.bytes_per_activation} bytes/activation (activations table), "
            f"{s.file_bytes_per_token} file bytes/token, {s.activations:,} activations"
        )


if __name__ == "__main__":
    main()
