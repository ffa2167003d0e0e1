"""How long the test suite takes, tracked rather than guessed: runs pytest as `make test` (or
`make fast` with --fast) does, and prints the wall time, the time per test file (setup, call and
teardown summed, so a shared fixture is charged to the file that built it first) and the
slowest tests, from one run.

    python -m benchmarks.suite_time            # the whole suite, as make test runs it
    python -m benchmarks.suite_time --fast     # the fast tier, as make fast runs it
    python -m benchmarks.suite_time --serial   # one process, for the per-test figures alone
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")
SUMMARY = re.compile(r"(\d+) passed|(\d+) failed|(\d+) skipped|(\d+) error")


def workers(fast: bool) -> int:
    """The Makefile's worker counts: `make test` one per core and one more (many tests wait on
    a process they started), `make fast` two."""
    return 2 if fast else (os.cpu_count() or 1) + 1


def run(fast: bool, serial: bool, extra: list[str]) -> tuple[float, str]:
    """The suite's wall time and its output (every test's durations included)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0"]
    argv += ["--durations-min=0.5"]
    if fast:
        argv += ["-m", "not slow"]
    if not serial:
        argv += ["-n", str(workers(fast)), "--dist", "worksteal"]
    started = time.perf_counter()
    proc = subprocess.run(
        [*argv, *extra],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="the fast tier only")
    parser.add_argument("--serial", action="store_true", help="one process (no pytest-xdist)")
    parser.add_argument("--top", type=int, default=15, help="files and tests to list")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args()
    wall, out = run(args.fast, args.serial, args.pytest_args)
    per_file: collections.Counter[str] = collections.Counter()
    per_test: collections.Counter[str] = collections.Counter()
    for line in out.splitlines():
        m = DURATION.match(line)
        if m:
            seconds, test = float(m.group(1)), m.group(3)
            per_file[test.split("::")[0]] += seconds
            per_test[test] += seconds
    summary = [line for line in out.splitlines() if SUMMARY.search(line) and " in " in line]
    mode = "fast tier" if args.fast else "whole suite"
    layout = "serial" if args.serial else f"-n {workers(args.fast)} --dist worksteal"
    print(f"{mode}, {layout}: {wall / 60:.0f} min {wall % 60:.0f} s wall")
    print(summary[-1] if summary else out[-2000:])
    total = sum(per_test.values())
    print(f"test time summed over tests (>= 0.5 s each): {total:.0f} s")
    print(f"\nslowest files (of {len(per_file)}):")
    for path, seconds in per_file.most_common(args.top):
        print(f"  {seconds:7.1f} s  {path}")
    print("\nslowest tests:")
    for test, seconds in per_test.most_common(args.top):
        print(f"  {seconds:7.1f} s  {test}")


if __name__ == "__main__":
    main()
