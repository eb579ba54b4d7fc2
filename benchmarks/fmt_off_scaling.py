"""`cnndsl fmt` time against the number of `# fmt: off` / `# fmt: on` pairs.

    python benchmarks/fmt_off_scaling.py [--pairs 8000 32000] [--runs N]

Each pair keeps one statement as written; `format_text` in-process, median of N runs, and
the ratio of the largest to the smallest count's time against the ratio of the counts
(linear: the two ratios alike; the regions were once found in quadratic time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnndsl.fmt import format_text  # noqa: E402

PAIR = "    # fmt: off\n    relu  ->  relu\n    # fmt: on\n"


def spec(pairs: int) -> str:
    return "network n() {\n    input x: 3 x 8 x 8\n" + PAIR * pairs + "}\n"


def seconds(text: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        assert format_text(text) == text
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times = {pairs: seconds(spec(pairs), args.runs) for pairs in args.pairs}
    for pairs, t in times.items():
        print(f"{pairs:>7,} pairs: {t:6.2f} s")
    low, high = min(times), max(times)
    print(f"time ratio {times[high] / times[low]:.1f} for {high / low:.0f}x the pairs")


if __name__ == "__main__":
    main()
