"""fp32 against int8 and fp16 on a network trained here: images/s, file size, accuracy.

    python benchmarks/deploy.py [--spec examples/train_digits.cnn] [--epochs 12]
                                [--rounds 7] [--batch 64] [--threads N] [--json]

Trains the spec on scikit-learn's bundled digits (its `train` definition, seed 0), exports
fp32 ONNX, quantises it to int8 (onnxruntime static QDQ, per-channel, minmax calibration
on 200 training images, seed 0) and converts it to fp16, then runs the three models over
the validation split on onnxruntime's CPU provider, interleaved: each round runs every
model once, and a model's figure is its best round. Accuracy is over the whole split (359
images for digits), to 4 decimals; images/s to 3 significant figures; sizes in bytes.
OpenVINO is not measured here (not installed in this environment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cnndsl
from cnndsl.deploy import quantize as q
from cnndsl.deploy.describe import annotate, exported_info
from cnndsl.runtime import create_session
from cnndsl.training.data import eval_transform
from cnndsl.training.run import load_dataset, train_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "train_digits.cnn"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = cnndsl.load(args.spec)
    with tempfile.TemporaryDirectory(prefix="cnndsl-deploy-bench-") as folder:
        summary = model.fit("digits", epochs=args.epochs, out=folder, progress=False)
        fp32 = model.to_onnx(weights=str(Path(folder) / "best.safetensors"))
    info = exported_info(model)
    if info is not None:
        annotate(fp32, info)
    config = train_config(model)
    data = load_dataset(model, config, "digits")
    prepare = eval_transform(info.normalize_ops() if info else [])
    batches = q.calibration_batches(data.train.images, 200, 0, prepare)
    models = {"fp32": fp32.SerializeToString(),
              "int8": q.quantize_int8(fp32, batches, "minmax").SerializeToString(),
              "fp16": q.to_fp16(fp32).SerializeToString()}
    sessions = {k: create_session(v, "cpu", args.threads) for k, v in models.items()}
    best = dict.fromkeys(models, float("inf"))
    logits = {}
    for _ in range(args.rounds):
        for key, session in sessions.items():
            start = time.perf_counter()
            logits[key] = q.logits_of(session, data.val.images, prepare, args.batch)
            best[key] = min(best[key], time.perf_counter() - start)
    labels = data.val.labels.numpy()
    rows = {}
    for key in models:
        rows[key] = {"accuracy": float((logits[key].argmax(1) == labels).mean()),
                     "bytes": len(models[key]),
                     "images_per_s": len(labels) / best[key]}
    for key in models:
        rows[key]["speed_vs_fp32"] = rows[key]["images_per_s"] / rows["fp32"]["images_per_s"]
        rows[key]["size_vs_fp32"] = rows["fp32"]["bytes"] / rows[key]["bytes"]
        rows[key]["accuracy_delta_points"] = 100 * (rows[key]["accuracy"]
                                                    - rows["fp32"]["accuracy"])
    report = {"spec": args.spec, "params": model.params, "epochs": args.epochs,
              "trained_val_accuracy": summary["val_accuracy"], "val_images": len(labels),
              "batch": args.batch, "rounds": args.rounds,
              "threads": args.threads or "onnxruntime default", "cpu": platform.processor()
              or platform.machine(), "cores": os.cpu_count(), "models": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{Path(args.spec).name}: {model.params:,} parameters, {args.epochs} epochs on "
          f"digits, {len(labels)} validation images, onnxruntime CPU ({os.cpu_count()} "
          f"cores), batch {args.batch}, best of {args.rounds} interleaved rounds")
    print(f"{'model':<6} {'accuracy':>9} {'delta pts':>9} {'bytes':>10} {'smaller':>8} "
          f"{'images/s':>10} {'speed':>7}")
    for key, r in rows.items():
        print(f"{key:<6} {r['accuracy']:9.4f} {r['accuracy_delta_points']:+9.2f} "
              f"{r['bytes']:10,} {r['size_vs_fp32']:7.2f}x {r['images_per_s']:10.3g} "
              f"{r['speed_vs_fp32']:6.2f}x")


if __name__ == "__main__":
    main()
