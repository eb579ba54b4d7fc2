"""How the time of every stage grows with spec length (each should grow linearly).

    python benchmarks/check_scaling.py [--runs N] [--no-backends]

Generates a plain spec as long as ResNet-152 is in layers (~same node count), then 10x
and 100x longer, and times in-process (best of N): parsing, checking, and each back end
(generated PyTorch source, the in-memory module, ONNX with fresh weights, the DOT diagram,
the summary table), side by side with `cnndsl check specs/resnet152.cnn` in a fresh
process. Channels are 8, so the 100x network (51,567 layers) stays small in memory.
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
            body.append("    basic(8)")  # a residual block call: 7 nodes
        else:
            body.append("    conv(8, 3, padding=1, bias=false) -> batchnorm -> relu")
    return ("network long(classes: int = 10) {\n    input image: 8 x 16 x 16\n"
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
    return parse_s, check_s, ir, program


BACKENDS = {
    "source": lambda model: model.to_torch_source(),
    "module": lambda model: model.to_torch(),
    "onnx": lambda model: model.to_onnx(),
    "dot": lambda model: model.to_dot(depth=99),
    "summary": lambda model: model.summary(),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-backends", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnndsl", "check", "specs/resnet152.cnn"],
                   cwd=ROOT, check=True, capture_output=True)
    cli = time.perf_counter() - start
    resnet = cnndsl.load(ROOT / "specs" / "resnet152.cnn")
    print(f"cnndsl check specs/resnet152.cnn (fresh process): {cli:.3f} s, "
          f"{len(resnet.layers)} layers")
    base_lines = round(len(resnet.layers) / (2 * 3 + 7) * 3)  # same node count as resnet152
    stages = ["parse", "check"] + ([] if args.no_backends else list(BACKENDS))
    print("us per node (seconds in all), best of N; 'vs 1x' compares per-node times")
    print(f"{'spec':>5} {'nodes':>7} " + " ".join(f"{s:>22}" for s in stages))
    first: dict[str, float] = {}
    for factor in (1, 10, 100):
        text = generated_spec(base_lines * factor)
        runs = args.runs if factor < 100 else 1
        parse_s, check_s, ir, program = measure(text, runs)
        seconds = {"parse": parse_s, "check": check_s}
        if not args.no_backends:
            model = cnndsl.Model(ir, program)
            for name, stage in BACKENDS.items():
                seconds[name], _ = best(lambda stage=stage, model=model: stage(model), runs)
        cells = []
        for stage in stages:
            per_node = seconds[stage] / len(ir.nodes) * 1e6
            first.setdefault(stage, per_node)
            ratio = f"{per_node / first[stage]:4.1f}x" if factor > 1 else ""
            cells.append(f"{per_node:6.1f} ({seconds[stage]:6.2f}) {ratio:>5}")
        print(f"{factor:>4}x {len(ir.nodes):>7} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
