"""Which int8 format onnxruntime's CPU provider runs fast: fp32 against static int8 in QDQ
and QOperator form, int8 or uint8 activations, per-channel or per-tensor weights,
reduce_range; fresh weights (speed does not depend on them), random calibration.

    python benchmarks/int8_formats.py SPEC [--batch 64] [--images 128] [--rounds 5]

Images/s over `--images` random inputs, best of interleaved rounds; the size of each file;
the share of top-1 answers equal to fp32's on one batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

import cnndsl

S8, U8 = QuantType.QInt8, QuantType.QUInt8
VARIANTS = {
    "qdq_s8s8_pc": dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=S8),
    "qdq_u8s8_pc": dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=U8),
    "qop_u8s8_pc": dict(quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=U8),
    "qop_u8s8": dict(quant_format=QuantFormat.QOperator, per_channel=False,
                     activation_type=U8),
    "qdq_u8s8_pc_rr": dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                           activation_type=U8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = cnndsl.load(args.spec)
    fp32 = model.to_onnx(seed=0)
    shape = tuple(model.inputs[0].shape)
    name = fp32.graph.input[0].name
    rng = np.random.default_rng(0)
    calibration = [rng.random((16, *shape), dtype=np.float32) for _ in range(4)]
    x = rng.random((args.images, *shape), dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.pending = iter(calibration)

        def get_next(self):
            batch = next(self.pending, None)
            return None if batch is None else {name: batch}

    with tempfile.TemporaryDirectory(prefix="cnndsl-int8-formats-") as folder:
        root = Path(folder)
        onnx.save(fp32, root / "fp32.onnx")
        quant_pre_process(str(root / "fp32.onnx"), str(root / "pre.onnx"),
                          skip_symbolic_shape=True)
        files = {"fp32": root / "pre.onnx"}
        for key, options in VARIANTS.items():
            quantize_static(root / "pre.onnx", root / f"{key}.onnx", Reader(),
                            weight_type=S8, **options)
            files[key] = root / f"{key}.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions = {k: ort.InferenceSession(str(f), options,
                                            providers=["CPUExecutionProvider"])
                    for k, f in files.items()}
        best = dict.fromkeys(files, float("inf"))
        for _ in range(args.rounds):
            for key, session in sessions.items():
                start = time.perf_counter()
                for i in range(0, args.images, args.batch):
                    session.run(None, {name: x[i:i + args.batch]})
                best[key] = min(best[key], time.perf_counter() - start)
        reference = sessions["fp32"].run(None, {name: x[:args.batch]})[0].argmax(1)
        print(f"{args.spec}: {model.params:,} parameters, {os.cpu_count()} cores, load "
              f"average {os.getloadavg()[0]:.1f}, batch {args.batch}, best of {args.rounds}")
        for key, session in sessions.items():
            same = (session.run(None, {name: x[:args.batch]})[0].argmax(1) == reference).mean()
            print(f"{key:<16} {args.images / best[key]:10.3g} images/s "
                  f"{best['fp32'] / best[key]:6.2f}x  {files[key].stat().st_size:>12,} bytes  "
                  f"same top-1 {same:.2f}")


if __name__ == "__main__":
    main()
