"""`shoggoth index` time per 10k features, on the synthetic database of
benchmarks/synthetic_db.py (default 16,384 features, 54M activation rows: examples, histograms,
decoder and persona-profile FAISS neighbours, persona vectors). Median of --repeats runs, each on
a fresh copy, with the time of each step.

    python -m benchmarks.index_throughput [--features 16384] [--per-token 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.synthetic_db import activation_rows, build
from shoggoth.index.catalog.build import IndexConfig, faiss_dir
from shoggoth.pipeline.catalog.run import index_harvest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=16_384)
    ap.add_argument("--per-token", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/shoggoth-bench"))
    args = ap.parse_args()
    plain = build(args.cache, args.features, args.per_token)
    rows = activation_rows(plain)
    print(f"{plain.name}: {rows:,} activation rows, {args.features:,} features")
    totals = []
    for r in range(args.repeats):
        db = args.cache / "index-run.duckdb"
        shutil.copyfile(plain, db)
        marks: list[tuple[str, float]] = [("load SAE and read", time.perf_counter())]
        index_harvest(
            IndexConfig(db=db, device="cpu"),
            log=lambda msg, m=marks: m.append((msg, time.perf_counter())),
        )
        marks.append(("end", time.perf_counter()))
        totals.append(marks[-1][1] - marks[0][1])
        shown = ", ".join(
            f"{name} {b[1] - a[1]:.1f} s"
            for (name, _), a, b in zip(marks, marks, marks[1:], strict=False)
        )
        print(f"run {r + 1}: {totals[-1]:.1f} s  ({shown})")
        db.unlink()
        shutil.rmtree(faiss_dir(db), ignore_errors=True)
    median = statistics.median(totals)
    print(
        f"shoggoth index: median {median:.1f} s for {args.features:,} features = "
        f"{median / args.features * 10_000:.1f} s per 10k features "
        f"({rows / median / 1e6:.1f}M activation rows/s)"
    )


if __name__ == "__main__":
    main()
