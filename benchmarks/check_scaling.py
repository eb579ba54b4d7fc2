"""How parse and check time grow with spec length (they should grow linearly).

    python benchmarks/check_scaling.py [--runs N]

Generates a plain spec as long as ResNet-152 is in layers (~same node count), then 10x
and 100x longer, and times parsing and checking in-process (best of N), side by side
with `cnndsl check specs/resnet152.cnn` in a fresh process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cnndsl
from cnndsl.api import _gc_paused
from cnndsl.checker import Checker
from cnndsl.program import Program

ROOT = Path(__file__).resolve().parent.parent


def generated_spec(lines: int) -> str:
    body = []
    for i in range(lines):
        if i % 3 == 2:
            body.append("    basic(64)")  # a residual block call: 7 nodes
        else:
            body.append("    conv(64, 3, padding=1, bias=false) -> batchnorm -> relu")
    return ("network long(classes: int = 10) {\n    input image: 64 x 16 x 16\n"
            + "\n".join(body) + "\n    global_avgpool -> flatten -> linear(classes)\n}\n")


def best(fn, runs: int):
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def measure(text: str, runs: int):
    """In-process timings, with the GC paused as `cnndsl.load` does."""
    def parse():
        program = Program()
        program.load_stdlib()
        program.main = program.load_text(text, "<generated>", None)
        return program

    with _gc_paused():
        parse_s, program = best(parse, runs)
        defn = program.network(None)
        check_s, ir = best(lambda: Checker(program.definitions).network(defn, {}), runs)
    return parse_s, check_s, len(ir.nodes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnndsl", "check", "specs/resnet152.cnn"],
                   cwd=ROOT, check=True, capture_output=True)
    cli = time.perf_counter() - start
    resnet = cnndsl.load(ROOT / "specs" / "resnet152.cnn")
    print(f"cnndsl check specs/resnet152.cnn (fresh process): {cli:.3f} s, "
          f"{len(resnet.layers)} layers")
    base_lines = round(len(resnet.layers) / (2 * 3 + 7) * 3)  # same node count as resnet152
    print(f"{'spec':>10} {'lines':>7} {'nodes':>7} {'parse s':>9} {'check s':>9} "
          f"{'us/node':>8} {'vs 1x':>6}")
    per_node_1x = None
    for factor in (1, 10, 100):
        text = generated_spec(base_lines * factor)
        parse_s, check_s, nodes = measure(text, args.runs if factor < 100 else 1)
        per_node = (parse_s + check_s) / nodes * 1e6
        per_node_1x = per_node_1x or per_node
        print(f"{factor:>9}x {text.count(chr(10)):>7} {nodes:>7} {parse_s:>9.3f} "
              f"{check_s:>9.3f} {per_node:>8.1f} {per_node / per_node_1x:>5.2f}x")


if __name__ == "__main__":
    main()
