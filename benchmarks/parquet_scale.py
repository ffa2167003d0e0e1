"""The database at research scale: a synthetic harvest of >= 500M activation rows
(benchmarks/synthetic_db.py), exported with `shoggoth export`, and two queries timed on the
native DuckDB file and on the export's Parquet views, in one run:

- top contexts of one feature: its 20 strongest activations with 8 tokens either side, straight
  from `activations` (no dictionary), over --queries random features;
- persona × label counts (docs/queries.sql `persona_label_counts`).

    python -m benchmarks.parquet_scale [--features 65536] [--per-token 690] [--queries 30]

Prints the export's time and size, p50/p95 of each query on each, and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.query_latency import RAW_TOP, named
from benchmarks.synthetic_db import SAE_ID, activation_rows, build
from shoggoth.index.store.export import ExportConfig, export


def timed(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> float:
    t = time.perf_counter()
    out = con.execute(sql, params).fetchall()
    assert out, sql
    return (time.perf_counter() - t) * 1000


def stats(ms: list[float]) -> tuple[float, float]:
    return statistics.median(ms), float(np.percentile(ms, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=65_536)
    ap.add_argument("--per-token", type=int, default=690)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/shoggoth-bench"))
    args = ap.parse_args()
    db = build(args.cache, args.features, args.per_token)
    rows = activation_rows(db)
    print(f"native: {db} ({db.stat().st_size / 1e9:.2f} GB), {rows:,} activation rows")
    out = db.with_name(db.stem + "-parquet")
    if not (out / "shoggoth.duckdb").is_file():
        t = time.perf_counter()
        result = export(ExportConfig(db=db, parquet=out, overwrite=True))
        print(f"shoggoth export: {time.perf_counter() - t:.0f} s, {result['bytes'] / 1e9:.2f} GB")
    else:
        print(f"export: {out} (kept from an earlier run)")
    features = np.random.default_rng(0).choice(args.features, args.queries, replace=False).tolist()
    results = {}
    for name, path in (("native", db), ("parquet", out / "shoggoth.duckdb")):
        con = duckdb.connect(str(path), read_only=True)
        timed(con, RAW_TOP, {"sae": SAE_ID, "f": features[0]})  # first touch, not counted
        top = [timed(con, RAW_TOP, {"sae": SAE_ID, "f": f}) for f in features]
        counts = [timed(con, named("persona_label_counts"), {}) for _ in range(10)]
        con.close()
        results[name] = (stats(top), stats(counts))
        print(
            f"{name:>8}: top contexts of one feature p50 {results[name][0][0]:8.1f} ms  "
            f"p95 {results[name][0][1]:8.1f} ms · persona × label counts p50 "
            f"{results[name][1][0]:6.1f} ms  p95 {results[name][1][1]:6.1f} ms"
        )
    for i, what in enumerate(("top contexts", "persona × label counts")):
        ratio = results["parquet"][i][0] / results["native"][i][0]
        print(f"ratio parquet / native, {what} (p50): {ratio:.2f}x")


if __name__ == "__main__":
    main()
