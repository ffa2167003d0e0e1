"""How long the CLI takes to start: `shoggoth --help`, `shoggoth sql --db F "SELECT 1"` and
`shoggoth status --db F`, medians over repeats, beside what every command paid before the CLI
loaded lazily (importing torch, transformers and sae-lens), measured in the same run.

    OMP_NUM_THREADS=2 python -m benchmarks.cli_startup --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

EXE = Path(sys.executable).with_name("shoggoth")


def seconds(argv: list[str], repeats: int) -> float:
    """Median wall time of running `argv` (a fresh process each time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "f.duckdb"
        con = duckdb.connect(str(db))
        con.execute("CREATE TABLE saes (sae_id VARCHAR)")  # enough for sql
        con.close()
        rows = {
            "shoggoth --help": seconds([str(EXE), "--help"], args.repeats),
            'shoggoth sql --db F "SELECT 1"': seconds(
                [str(EXE), "sql", "--db", str(db), "SELECT 1"], args.repeats
            ),
            "shoggoth sql --help": seconds([str(EXE), "sql", "--help"], args.repeats),
            "import torch, transformers, sae_lens (what each command paid before)": seconds(
                [sys.executable, "-c", "import torch, transformers, sae_lens"], args.repeats
            ),
        }
    before = rows["import torch, transformers, sae_lens (what each command paid before)"]
    print(f"median of {args.repeats} runs each")
    for name, value in rows.items():
        print(f"  {name:70s} {value:6.2f} s  ({before / value:4.1f}× faster than the imports)")


if __name__ == "__main__":
    main()
