"""A synthetic feature database at research scale, shared by the query and index benchmarks.

The schema is the real one (`index.schema`); only the numbers are made up: 24 personas (20 + 4
controls) × 5 paraphrases × 240 items, 15–36 answer tokens per item, `per_token` distinct
features firing per token out of `d_sae` (popularity skewed: a few features fire far more often
than most, as in real SAEs), values > 0. Default: 54M activation rows. `features` gets a random
label per feature, `feature_personas` a random profile, `residual_sums` random sums, and the
`saes` row points at a random TopK SAE of matching shape, so `shoggoth index` runs on it.

Built once per shape and kept in the cache folder (seconds to reuse, minutes to build).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch

from shoggoth.battery.personas import Item, Persona
from shoggoth.index.labels.rules import LABELS
from shoggoth.index.store.database import connect, insert_frame
from shoggoth.index.store.schema import create_label_tables, create_schema

SAE_ID = "synthetic"
D_IN = 384


def battery() -> tuple[list[Persona], list[Item]]:
    personas = [
        Persona(
            f"persona{i:02d}", f"family{i // 4}", "", tuple(f"prompt {i}.{j}" for j in range(5))
        )
        for i in range(20)
    ]
    personas += [
        Persona(f"control{i}", "control", "", tuple(f"control {i}.{j}" for j in range(5)), True)
        for i in range(4)
    ]
    items = [
        Item(f"item{i:03d}", f"topic{i % 12}", f"question {i}", f"answer {i}") for i in range(240)
    ]
    return personas, items


def random_sae(directory: Path, d_sae: int) -> Path:
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    if (directory / "cfg.json").is_file():
        return directory
    torch.manual_seed(0)
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=D_IN,
            d_sae=d_sae,
            k=32,
            metadata=SAEMetadata(hook_name="blocks.3.hook_resid_post", model_name="minilm"),
        )
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.1)
    directory.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(directory))
    (directory / "shoggoth.json").write_text(
        json.dumps({"model": "minilm", "hook": "blocks.3.hook_resid_post"})
    )
    return directory


def build(
    cache: Path, d_sae: int = 16_384, per_token: int = 96, log: Callable[[str], None] = print
) -> Path:
    """The database file (built unless the cache holds it already)."""
    cache.mkdir(parents=True, exist_ok=True)
    db = cache / f"synthetic-{d_sae}x{per_token}.duckdb"
    if db.is_file():
        return db
    started = time.time()
    sae_dir = random_sae(cache / f"sae-{d_sae}", d_sae)
    personas, items = battery()
    tmp = db.with_name(db.name + ".building")
    tmp.unlink(missing_ok=True)
    con = connect(tmp)
    create_schema(con, personas, items)
    create_label_tables(con)
    con.execute(
        "INSERT INTO saes (sae_id, model, hook, architecture, d_in, d_sae, path, "
        "template, value_decimals) VALUES (?, 'minilm', 'blocks.3.hook_resid_post', "
        "'topk', ?, ?, ?, 'plain', 3)",
        [SAE_ID, D_IN, d_sae, str(sae_dir)],
    )
    con.execute(
        """INSERT INTO tokens SELECT $sae, item_id, pos, pos, 'tok' || pos
                   FROM (SELECT item_id,
                                unnest(range((15 + hash(item_id::VARCHAR) % 22)::BIGINT)) AS pos
                         FROM items) ORDER BY item_id, pos""",
        {"sae": SAE_ID},
    )
    con.execute(
        """INSERT INTO documents SELECT $sae, p.persona, j.j::SMALLINT, t.item_id, t.n
                   FROM personas p, range(5) j(j),
                        (SELECT item_id, count(*)::INTEGER AS n FROM tokens GROUP BY item_id) t
                   ORDER BY p.persona, j.j, t.item_id""",
        {"sae": SAE_ID},
    )
    n_tokens = int(con.execute("SELECT sum(n_tokens) FROM documents").fetchone()[0])
    log(f"  generating {n_tokens * per_token:,} activation rows")
    # Distinct features per token: a skewed start (pow(u, 3) favours low ids) plus evenly spaced
    # offsets, so a few features are common and most are rare.
    con.execute("SET preserve_insertion_order = true")
    con.execute(
        """
        INSERT INTO activations
        SELECT $sae, persona, paraphrase, item_id, pos,
               ((floor(pow(hash(doc, pos) / 18446744073709551615.0, 3) * $d)::BIGINT
                 + slot * ($d // $k)) % $d)::INTEGER AS feature,
               greatest(0.001, round(-ln(1 - (hash(doc, pos, slot) % 1000000) / 1000000.0)
                                     * 0.5, 3))::FLOAT AS value
        FROM (SELECT d.*, unnest(range(d.n_tokens)) AS pos
              FROM (SELECT *, row_number() OVER (ORDER BY persona, paraphrase, item_id) AS doc
                    FROM documents) d),
             range($k) s(slot)
        ORDER BY persona, paraphrase, item_id, pos, feature""",
        {"sae": SAE_ID, "d": d_sae, "k": per_token},
    )
    con.execute("""INSERT INTO doc_features
                   SELECT sae_id, persona, paraphrase, a.item_id, feature,
                          sum(value) / any_value(d.n_tokens), max(value), count(*)
                   FROM activations a JOIN documents d USING (sae_id, persona, paraphrase, item_id)
                   GROUP BY ALL ORDER BY ALL""")
    rng = np.random.default_rng(0)
    names = [p.name for p in personas]
    features = pd.DataFrame(
        {
            "sae_id": SAE_ID,
            "feature": np.arange(d_sae, dtype=np.int32),
            "label": rng.choice(LABELS, d_sae),
            "top_persona": rng.choice(names, d_sae),
            "family_set": None,
            "argmax_persona": rng.choice(names[:20], d_sae),
            "n_docs_firing": rng.integers(0, 28_800, d_sae).astype(np.int32),
        }
    )
    features["battery_family"] = None
    for col in (
        "fire_frac_personas",
        "top_share",
        "k_eff",
        "norm_entropy",
        "f_stat",
        "p_value",
        "q_value",
        "top_ratio",
        "paraphrase_margin",
        "set_size",
        "set_ratio",
        "set_margin",
        "control_ratio",
        "control_margin",
        "no_mask_ratio",
        "max_min_ratio",
        "ratio_ci_high",
        "shared_power",
    ):
        features[col] = rng.random(d_sae)
    features["ranked_personas"] = ",".join(names[:20])
    for col in ("density", "mean_act", "max_act"):
        features[col] = rng.random(d_sae)
    con.register("_features", features)
    con.execute("INSERT INTO features BY NAME SELECT * FROM _features")
    con.unregister("_features")
    profiles = pd.DataFrame(
        {
            "sae_id": SAE_ID,
            "feature": np.repeat(np.arange(d_sae, dtype=np.int32), len(names)),
            "persona": np.tile(names, d_sae),
            "mean_act": rng.gamma(2, 0.1, d_sae * len(names)),
            "fire_rate": rng.random(d_sae * len(names)),
            "delta_vs_rest": rng.normal(0, 0.1, d_sae * len(names)),
        }
    )
    insert_frame(con, "feature_personas", profiles)
    sums = [
        (SAE_ID, p, j, f"item{b * 32:03d}", 32 * 26, list(rng.normal(0, 1, D_IN) * 800))
        for p in names
        for j in range(5)
        for b in range(8)
    ]
    con.executemany("INSERT INTO residual_sums VALUES (?, ?, ?, ?, ?, ?)", sums)
    con.execute("CHECKPOINT")
    con.close()
    tmp.rename(db)
    log(f"  built {db} in {time.time() - started:.0f} s")
    return db


def activation_rows(db: Path) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM activations").fetchone()[0]
    finally:
        con.close()
