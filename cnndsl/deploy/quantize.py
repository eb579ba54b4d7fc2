"""Reduced precision ONNX models: int8 by onnxruntime's static quantisation (QDQ,
per-channel int8 weights, uint8 activations calibrated on training images drawn with a
seed) and fp16 by onnxruntime's float16 converter (the code of onnxconverter-common, shipped inside
onnxruntime, so no further package); then both models on the validation split."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from .describe import ModelInfo

METHODS = ("minmax", "entropy", "percentile")


def calibration_batches(images, count: int, seed: int, prepare, batch: int = 16) -> list:
    """`count` training images (all, if fewer), drawn with `seed`, prepared as the model
    takes them, in batches."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)[:count]
    chosen = prepare(images[order])
    return [chosen[i:i + batch].numpy().astype(np.float32)
            for i in range(0, len(chosen), batch)]


def quantize_int8(fp32: onnx.ModelProto, batches: list[np.ndarray],
                  method: str = "minmax") -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    name = fp32.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.pending = iter(batches)

        def get_next(self):
            x = next(self.pending, None)
            return None if x is None else {name: x}

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory(prefix="cnndsl-int8-") as folder, _quiet_root_log():
        # files, not ModelProtos: quantize_static moves a proto's weights to external data
        source, prepared = Path(folder) / "fp32.onnx", Path(folder) / "pre.onnx"
        onnx.save(fp32, str(source))
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        out = Path(folder) / "int8.onnx"
        # uint8 activations x int8 weights: what x86's VNNI/AMX int8 kernels (MLAS) take
        # directly; int8 x int8 ran at 0.64x fp32's images/s on a ResNet-18, u8 x s8 2.7x
        quantize_static(prepared, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate,
                        extra_options={"CalibTensorRangeSymmetric": False})
        return onnx.load(str(out))


@contextmanager
def _quiet_root_log():
    """onnxruntime's quantiser logs advice on the root logger; the report says what ran."""
    import logging
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and arithmetic; float32 inputs and outputs, as the fp32 model's."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    copy = onnx.ModelProto()
    copy.CopyFrom(fp32)
    return convert_float_to_float16(copy, keep_io_types=True)


def reduce(fp32: onnx.ModelProto, precision: str, batches: list | None = None,
           method: str = "minmax") -> onnx.ModelProto:
    if precision == "int8":
        return quantize_int8(fp32, batches or [], method)
    if precision == "fp16":
        return to_fp16(fp32)
    raise ValueError(f"unknown precision {precision}")


def keep_description(reduced: onnx.ModelProto, info: ModelInfo | None, precision: str) -> None:
    from dataclasses import replace

    from .describe import annotate
    if info is not None:
        annotate(reduced, replace(info, precision=precision))


def logits_of(session, images, prepare, batch: int = 256) -> np.ndarray:
    outs = [session.run(prepare(images[i:i + batch]).numpy())[0]
            for i in range(0, len(images), batch)]
    return np.concatenate(outs).astype(np.float32)


def compare(fp32: bytes, reduced: bytes, val, prepare, rounds: int = 3,
            threads: int | None = None) -> dict:
    """Accuracy of both models on `val`, their sizes, and images/s over the whole split,
    timed in interleaved rounds (the best round of each counts)."""
    import torch

    from ..runtime import create_session
    from ..training.metrics import classification_report
    sessions = {"fp32": create_session(fp32, "cpu", threads),
                "reduced": create_session(reduced, "cpu", threads)}
    best = {k: float("inf") for k in sessions}
    logits = {}
    for _ in range(rounds):
        for key, session in sessions.items():
            start = time.perf_counter()
            logits[key] = logits_of(session, val.images, prepare)
            best[key] = min(best[key], time.perf_counter() - start)
    result = {}
    for key in sessions:
        report = classification_report(torch.from_numpy(logits[key]), val.labels, val.classes)
        result[key] = {"accuracy": report["accuracy"], "bytes": len(fp32 if key == "fp32"
                                                                   else reduced),
                       "images_per_s": len(val.labels) / best[key]}
    result["agreement"] = float((logits["fp32"].argmax(1) == logits["reduced"].argmax(1))
                                .mean())
    result["speed_ratio"] = result["reduced"]["images_per_s"] / result["fp32"]["images_per_s"]
    result["size_ratio"] = result["fp32"]["bytes"] / result["reduced"]["bytes"]
    result["samples"] = len(val.labels)
    return result


def format_comparison(c: dict, precision: str) -> str:
    f, r = c["fp32"], c["reduced"]
    return (f"validation split, {c['samples']} images, onnxruntime CPU:\n"
            f"  fp32: accuracy {f['accuracy']:.4f}, {f['bytes']:,} bytes\n"
            f"  {precision}: accuracy {r['accuracy']:.4f}, {r['bytes']:,} bytes\n"
            f"  speed: fp32 {f['images_per_s']:.0f} images/s, {precision} "
            f"{r['images_per_s']:.0f} images/s\n"
            f"  {precision} vs fp32: {c['size_ratio']:.2f}x smaller, "
            f"{c['speed_ratio']:.2f}x the images/s, accuracy "
            f"{(r['accuracy'] - f['accuracy']) * 100:+.2f} points, "
            f"{c['agreement'] * 100:.1f}% same predictions")
