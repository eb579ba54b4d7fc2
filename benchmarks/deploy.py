"""fp32 against int8, fp16 (onnxruntime) and f32, bf16 (OpenVINO) on networks trained here.

    python benchmarks/deploy.py [--networks digits,resnet18] [--rounds 5] [--batch 64]
                                [--digits-epochs 12] [--resnet-epochs 3] [--threads N]
                                [--json]

Two networks are trained in the benchmark itself on scikit-learn's bundled digits (seed 0):
examples/train_digits.cnn (10k parameters, 1 x 16 x 16) and RESNET18 below, ResNet-18's
layers and widths (11.2M parameters) on the digits upscaled to 1 x 32 x 32. Each is exported
to fp32 ONNX, quantised to int8 (cnndsl's `compile --quantize int8`: onnxruntime static QDQ,
per-channel int8 weights, uint8 activations, minmax calibration on 200 training images,
seed 0) and converted to fp16. Then, over the validation split (359 images), interleaved
(each round runs every model once; a model's figure is its best round):
onnxruntime's CPU provider on fp32, int8 and fp16; OpenVINO's CPU plugin on the fp32 file
with INFERENCE_PRECISION_HINT f32 and bf16, and on the int8 file. Accuracy over the whole
split, to 4 decimals; images/s to 3 significant figures; sizes in bytes. The load average
before and after is printed: the figures are only as good as the machine was quiet.
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
from cnndsl.runtime import open_session
from cnndsl.training.data import eval_transform
from cnndsl.training.run import load_dataset, train_config

ROOT = Path(__file__).resolve().parent.parent

RESNET18 = """
# ResNet-18's stages and widths (11.2M parameters) on the digits upscaled to 32 x 32:
# a stride-2 stem and max pooling leave 8 x 8 maps for layer1, as 224 leaves 56 x 56
network resnet18_digits(classes: int = 10) {
    input image: 1 x 32 x 32
    conv(64, 3, stride=2, padding=1, bias=false) -> batchnorm -> relu   # 64 x 16 x 16
    maxpool(2)                                                          # 64 x 8 x 8
    layer1: basic_stage(64, 2)
    layer2: basic_stage(128, 2, stride=2)                               # 128 x 4 x 4
    layer3: basic_stage(256, 2, stride=2)                               # 256 x 2 x 2
    layer4: basic_stage(512, 2, stride=2)                               # 512 x 1 x 1
    global_avgpool -> flatten
    fc: linear(classes)
}

train resnet18_digits() {
    data: digits
    optimizer: adamw(lr=0.002, weight_decay=0.0001)
    schedule: cosine(warmup=1)
    loss: cross_entropy(label_smoothing=0.05)
    batch: 64
    augment: random_crop(padding=2)
    seed: 0
}
"""

# (name, runtime, which file, OpenVINO precision)
RUNS = [("fp32", "onnxruntime", "fp32", None), ("int8", "onnxruntime", "int8", None),
        ("fp16", "onnxruntime", "fp16", None), ("ov-f32", "openvino", "fp32", "f32"),
        ("ov-bf16", "openvino", "fp32", "bf16"), ("ov-int8", "openvino", "int8", "f32")]


def measure(spec: Path, epochs: int, args) -> dict:
    model = cnndsl.load(spec)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnndsl-deploy-bench-") as folder:
        summary = model.fit("digits", epochs=epochs, out=folder, progress=False)
        fp32 = model.to_onnx(weights=str(Path(folder) / "best.safetensors"))
    trained_s = time.perf_counter() - start
    info = exported_info(model)
    annotate(fp32, info)
    data = load_dataset(model, train_config(model), "digits")
    prepare = eval_transform(info.normalize_ops())
    batches = q.calibration_batches(data.train.images, 200, 0, prepare)
    files = {"fp32": fp32.SerializeToString(),
             "int8": q.quantize_int8(fp32, batches, "minmax").SerializeToString(),
             "fp16": q.to_fp16(fp32).SerializeToString()}
    sessions = {name: open_session(files[file], runtime, "cpu", args.threads, precision)
                for name, runtime, file, precision in RUNS}
    best = dict.fromkeys(sessions, float("inf"))
    logits = {}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            logits[name] = q.logits_of(session, data.val.images, prepare, args.batch)
            best[name] = min(best[name], time.perf_counter() - start)
    labels = data.val.labels.numpy()
    rows = {}
    for name, _, file, _ in RUNS:
        ran = sessions[name]
        rows[name] = {"runtime": ran.runtime, "file": file, "bytes": len(files[file]),
                      "accuracy": float((logits[name].argmax(1) == labels).mean()),
                      "images_per_s": len(labels) / best[name]}
    for row in rows.values():
        row["speed_vs_fp32"] = row["images_per_s"] / rows["fp32"]["images_per_s"]
        row["size_vs_fp32"] = rows["fp32"]["bytes"] / row["bytes"]
        row["accuracy_delta_points"] = 100 * (row["accuracy"] - rows["fp32"]["accuracy"])
    return {"spec": spec.name, "network": model.name, "params": model.params,
            "epochs": epochs, "train_s": round(trained_s, 1),
            "trained_val_accuracy": summary["val_accuracy"], "val_images": len(labels),
            "models": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default="digits,resnet18")
    parser.add_argument("--digits-epochs", type=int, default=12)
    parser.add_argument("--resnet-epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="cnndsl-deploy-spec-") as folder:
        resnet = Path(folder) / "resnet18_digits.cnn"
        resnet.write_text(RESNET18)
        for name in args.networks.split(","):
            if name == "digits":
                results.append(measure(ROOT / "examples" / "train_digits.cnn",
                                       args.digits_epochs, args))
            elif name == "resnet18":
                results.append(measure(resnet, args.resnet_epochs, args))
            else:
                parser.error(f"unknown network {name}: digits or resnet18")
    report = {"batch": args.batch, "rounds": args.rounds,
              "threads": args.threads or "each runtime's default",
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_before": [round(v, 2) for v in load_before],
              "load_after": [round(v, 2) for v in os.getloadavg()], "networks": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{os.cpu_count()} cores, load average {report['load_before']} before, "
          f"{report['load_after']} after; batch {args.batch}, best of {args.rounds} "
          "interleaved rounds")
    for r in results:
        print(f"\n{r['spec']}: {r['params']:,} parameters, {r['epochs']} epochs on digits "
              f"({r['train_s']:.0f} s), {r['val_images']} validation images")
        print(f"{'model':<8} {'accuracy':>9} {'delta pts':>9} {'bytes':>11} {'smaller':>8} "
              f"{'images/s':>10} {'speed':>7}  runtime")
        for key, m in r["models"].items():
            print(f"{key:<8} {m['accuracy']:9.4f} {m['accuracy_delta_points']:+9.2f} "
                  f"{m['bytes']:11,} {m['size_vs_fp32']:7.2f}x {m['images_per_s']:10.3g} "
                  f"{m['speed_vs_fp32']:6.2f}x  {m['runtime']}")


if __name__ == "__main__":
    main()
