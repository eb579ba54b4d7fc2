"""Time and peak memory of `cnndsl check` on hostile inputs near the limits.

    python benchmarks/input_bounds.py [--sizes 0.25 1 4]   # sizes in MiB, or "max"

Each input runs in a fresh process; the figures are its wall time and peak resident
memory (wait4's ru_maxrss). The kinds: `relu` lines just under the token limit, a `+`
chain, an `and` chain, a wide tuple, and a long comment (cheap: not tokens).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD = "network n() {\n    input image: 3 x 8 x 8\n"


def spec(kind: str, size: int) -> str:
    """About `size` bytes of one kind of input."""
    if kind == "relu":
        return HEAD + "    relu\n" * (size // 9) + "}\n"
    if kind == "plus":
        return HEAD + "    conv(" + "1 + " * (size // 4) + "1, 3)\n}\n"
    if kind == "and":
        return HEAD + "    conv(4, 3) if " + "true and " * (size // 9) + "true\n}\n"
    if kind == "tuple":
        return HEAD + "    conv(4, (" + ", ".join(["1"] * (size // 3)) + "))\n}\n"
    if kind == "comment":
        return HEAD + "    # " + "x" * size + "\n    relu\n}\n"
    raise ValueError(kind)


def measure(path: Path) -> tuple[float, float, int]:
    """(seconds, peak MB, exit status) of one `cnndsl check`."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cnndsl", "check", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(
        status)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["0.25", "1", "max"],
                        help="MiB each, or `max`: just under the token limit (relu) or "
                        "the 4 MiB file limit")
    parser.add_argument("--kinds", nargs="+", default=["relu", "plus", "and", "tuple",
                                                      "comment"])
    args = parser.parse_args()
    print("| input | size | exit | wall | peak memory |\n|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.kinds:
            for size in args.sizes:
                if size == "max":  # 195,000 `relu` lines: under 400,000 tokens
                    nbytes = 195_000 * 9 if kind == "relu" else 4 * 2**20 - 200
                else:
                    nbytes = int(float(size) * 2**20)
                path = Path(scratch) / f"{kind}.cnn"
                path.write_text(spec(kind, nbytes))
                seconds, peak, status = measure(path)
                print(f"| {kind} | {path.stat().st_size / 2**20:.2f} MiB | {status} | "
                      f"{seconds:.2f} s | {peak:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
