"""Query latency on a feature database of >= 50M activation rows (benchmarks/synthetic_db.py).

Times, on one read-only connection as the explorer and `shoggoth search` hold it, over --queries
random features (medians and 95th percentiles):
- top contexts of one feature from the dictionary (`example_contexts`, what `shoggoth index`
  precomputes) — goal p50 <= 50 ms, p95 <= 200 ms;
- the same top 20 contexts straight from `activations` (no index: a scan), for comparison;
- persona x label counts (docs/queries.sql `persona_label_counts`).

    python -m benchmarks.query_latency [--features 16384] [--per-token 96] [--queries 100]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.synthetic_db import SAE_ID, activation_rows, build
from shoggoth.index.catalog.build import IndexConfig
from shoggoth.pipeline.catalog.run import index_harvest

RAW_TOP = """
WITH top AS (SELECT * FROM activations WHERE sae_id = $sae AND feature = $f
             ORDER BY value DESC LIMIT 20)
SELECT top.value, top.persona, top.item_id,
       string_agg(CASE WHEN t.pos = top.pos THEN '[[' || t.token || ']]' ELSE t.token END, ' '
                  ORDER BY t.pos) AS context
FROM top JOIN tokens t ON t.sae_id = top.sae_id AND t.item_id = top.item_id
     AND t.pos BETWEEN top.pos - 8 AND top.pos + 8
GROUP BY ALL ORDER BY top.value DESC"""


def named(name: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "queries.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))[name].strip().rstrip(";")


def percentiles(ms: list[float]) -> str:
    return (
        f"p50 {statistics.median(ms):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms   (n={len(ms)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=16_384)
    ap.add_argument("--per-token", type=int, default=96)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/shoggoth-bench"))
    args = ap.parse_args()
    plain = build(args.cache, args.features, args.per_token)
    db = plain.with_name(plain.stem + "-indexed.duckdb")
    if not db.is_file():
        print("indexing a copy (shoggoth index) ...")
        tmp = db.with_name(db.name + ".copy")
        shutil.copyfile(plain, tmp)
        index_harvest(IndexConfig(db=tmp, device="cpu"), log=lambda m: None)
        shutil.rmtree(tmp.with_name(tmp.name + ".faiss"), ignore_errors=True)
        tmp.rename(db)
    rows = activation_rows(db)
    print(
        f"database: {db} ({db.stat().st_size / 1e9:.2f} GB), {rows:,} activation rows, "
        f"{args.features:,} features"
    )
    rng = np.random.default_rng(0)
    features = rng.choice(args.features, args.queries, replace=False).tolist()
    con = duckdb.connect(str(db), read_only=True)
    t0 = time.perf_counter()
    con.execute(
        "SELECT * FROM example_contexts($sae, $f) WHERE kind = 'top'",
        {"sae": SAE_ID, "f": features[0]},
    ).fetchall()
    print(f"first query on a fresh connection: {(time.perf_counter() - t0) * 1000:.1f} ms")

    def timed(sql: str, params: dict) -> float:
        t = time.perf_counter()
        out = con.execute(sql, params).fetchall()
        assert out, sql
        return (time.perf_counter() - t) * 1000

    dictionary = [
        timed(
            "SELECT * FROM example_contexts($sae, $f) WHERE kind = 'top'", {"sae": SAE_ID, "f": f}
        )
        for f in features
    ]
    raw = [timed(RAW_TOP, {"sae": SAE_ID, "f": f}) for f in features[: max(10, len(features) // 5)]]
    counts = [timed(named("persona_label_counts"), {}) for _ in range(max(10, len(features) // 5))]
    met = statistics.median(dictionary) <= 50 and np.percentile(dictionary, 95) <= 200
    print(
        f"top contexts of one feature (dictionary):   {percentiles(dictionary)}"
        f"   goal p50 <= 50, p95 <= 200: {'met' if met else 'MISSED'}"
    )
    print(f"top contexts of one feature (raw scan):     {percentiles(raw)}")
    print(f"persona x label counts:                     {percentiles(counts)}")
    ratio = statistics.median(raw) / statistics.median(dictionary)
    print(f"ratio raw scan / dictionary (p50): {ratio:.1f}x")
    con.close()


if __name__ == "__main__":
    main()
