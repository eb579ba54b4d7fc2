"""Images/s side by side: PyTorch eager, onnxruntime on cnndsl's ONNX, and onnxruntime on
torch.onnx.export of the same module (same weights), plus the machine's large-matmul
GFLOP/s measured in the same run.

    python benchmarks/onnx_bench.py [--models resnet18 resnet50 mobilenet_v2]
                                    [--batches 1 8] [--rounds 7] [--threads 2]

Settings: every variant uses --threads intra-op threads. Eager runs under
torch.inference_mode(), NCHW ("eager") and channels_last ("eager CL"). onnxruntime runs
at ORT_ENABLE_ALL. Variants are timed in interleaved rounds (each round runs each variant
once after warm-up); figures are medians. GFLOP/s counts 2 FLOPs per MAC of the spec's
static count (conv and linear only).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import cnndsl

ROOT = Path(__file__).resolve().parent.parent


def matmul_gflops(threads: int, n: int = 4096, runs: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def ort_session(data: bytes, threads: int) -> tuple[ort.InferenceSession, float]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    start = time.perf_counter()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - start


def torch_export(module: torch.nn.Module, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(1, *shape),), buffer, dynamo=False, opset_version=18,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    return buffer.getvalue()


def bench(spec: str, batches: list[int], rounds: int, threads: int, peak: float) -> list[str]:
    model = cnndsl.load(ROOT / "specs" / f"{spec}.cnn")
    module = model.to_torch().eval()
    shape = model.inputs[0].shape
    start = time.perf_counter()
    ours_bytes = model.to_onnx(weights=module.state_dict()).SerializeToString()
    ours_compile = time.perf_counter() - start
    start = time.perf_counter()
    theirs_bytes = torch_export(module, shape)
    theirs_compile = time.perf_counter() - start
    ours, ours_session = ort_session(ours_bytes, threads)
    theirs, theirs_session = ort_session(theirs_bytes, threads)
    channels_last = model.to_torch().eval().to(memory_format=torch.channels_last)
    channels_last.load_state_dict(module.state_dict())
    rows = [f"{spec}: compile {ours_compile:.2f} s (cnndsl) vs {theirs_compile:.2f} s "
            f"(torch.onnx.export); session {ours_session:.2f} s vs {theirs_session:.2f} s; "
            f"ONNX nodes {_nodes(ours_bytes)} vs {_nodes(theirs_bytes)}"]
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        xt = torch.from_numpy(x)
        xcl = xt.contiguous(memory_format=torch.channels_last)
        variants = {
            "eager": lambda xt=xt: module(xt),
            "eager CL": lambda xcl=xcl: channels_last(xcl),
            "ORT ours": lambda x=x: ours.run(None, {"image": x}),
            "ORT torch.onnx": lambda x=x: theirs.run(None, {"x": x}),
        }
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for fn in variants.values():  # warm-up
                fn(), fn()
            for _ in range(rounds):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        ips = {k: batch / v for k, v in med.items()}
        gflops = 2 * model.macs * batch / med["ORT ours"] / 1e9
        rows.append(
            f"  batch {batch}: " + ", ".join(f"{k} {v:7.1f}" for k, v in ips.items())
            + f" images/s | ours/eager {ips['ORT ours'] / ips['eager']:.2f}x, "
            f"ours/eager CL {ips['ORT ours'] / ips['eager CL']:.2f}x, "
            f"ours/torch.onnx {ips['ORT ours'] / ips['ORT torch.onnx']:.2f}x | "
            f"{gflops:.0f} GFLOP/s = {gflops / peak:.2f}x matmul")
    return rows


def _nodes(data: bytes) -> int:
    import onnx
    return len(onnx.load_from_string(data).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_gflops(args.threads)
    print(f"torch.mm 4096x4096 fp32, {args.threads} threads: {peak:.0f} GFLOP/s")
    for spec in args.models:
        for row in bench(spec, args.batches, args.rounds, args.threads, peak):
            print(row, flush=True)
    print(f"again: torch.mm: {matmul_gflops(args.threads):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
