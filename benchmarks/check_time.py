"""Wall time of `cnndsl check SPEC` against `python -c "import torch"`, side by side.

    python benchmarks/check_time.py [SPEC ...] [--runs N]

Each command runs in a fresh process (what a user pays); medians over N runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("specs", nargs="*", default=["specs/vgg16.cnn"])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    baseline = wall([sys.executable, "-c", "import torch"], args.runs)
    empty = wall([sys.executable, "-c", "pass"], args.runs)
    print(f"{'command':44} {'median s':>9} {'vs import torch':>16}")
    print(f"{'python -c pass':44} {empty:9.3f} {empty / baseline:15.2f}x")
    torch_label = 'python -c "import torch"'
    print(f"{torch_label:44} {baseline:9.3f} {1:15.2f}x")
    for spec in args.specs:
        t = wall([sys.executable, "-m", "cnndsl", "check", spec], args.runs)
        print(f"{'cnndsl check ' + spec:44} {t:9.3f} {t / baseline:15.2f}x")


if __name__ == "__main__":
    main()
