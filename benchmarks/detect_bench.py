"""Detection against Ultralytics: the same data, image size, epochs, batch and threads.

    python benchmarks/detect_bench.py [--epochs 10] [--spec specs/yolov8n.cnn] [--threads 1]
                                      [--one-at-a-time]

The bundled shapes set (cnndsl's generator: 800 train / 200 val images at 64 x 64, three
classes) is written once as a YOLO folder with an Ultralytics data YAML, and both train on
it from scratch, each in a process of its own, fp32 on the CPU:

- Ultralytics: `YOLO("yolov8n.yaml").train(data=..., imgsz=64, epochs=E, batch=16,
  device="cpu")` with its defaults otherwise (optimizer `auto`: AdamW, warm-up, EMA of the
  weights, mosaic and its colour, scale and translate augmentation, mosaic closed for the
  last 10 epochs);
- cnndsl: the spec (default specs/yolov8n.cnn: the same network at 3 classes) with
  specs/yolo_small.cnn's `train` settings, on the same data YAML.

Both final models (after the last epoch, with their weight averages) are scored by the
same code, cnndsl's (confidence 0.001, class-aware NMS at IoU 0.7, COCO mAP through
torchmetrics), on the same validation images; Ultralytics' own figures (its validator) are
printed beside them. Training images/s: the training images times the epochs over the
seconds spent in training epochs (validation left out for both). Ultralytics sets torch's
threads to min(8, cores - 1) on a CPU: both are given `--threads`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64
BATCH = 16


# ---- the data, written once --------------------------------------------------------------


def write_shapes(folder: Path) -> Path:
    """cnndsl's shapes set (its train / val split) as PNG files, YOLO label files and a
    data YAML; returns the YAML."""
    import numpy as np
    from PIL import Image

    from cnndsl.training.detdata import load_detection_data
    data = load_detection_data("shapes", (3, SIZE, SIZE), val_fraction=0.2, seed=0)
    for split, part in (("train", data.train), ("val", data.val)):
        images, labels = folder / "images" / split, folder / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for image, target, name in zip(part.images, part.labels, part.names):
            pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(images / f"{name}.png")
            rows = [f"{int(c)} {(x1 + x2) / 2 / SIZE:.6f} {(y1 + y2) / 2 / SIZE:.6f} "
                    f"{(x2 - x1) / SIZE:.6f} {(y2 - y1) / SIZE:.6f}"
                    for c, x1, y1, x2, y2 in target.tolist() if c >= 0]
            (labels / f"{name}.txt").write_text("\n".join(rows) + "\n")
    yaml = folder / "data.yaml"
    yaml.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\n"
                    f"names: {json.dumps(list(data.train.classes))}\n")
    return yaml


def validation(yaml: Path):
    """The validation images and targets as cnndsl reads them from the YAML."""
    from cnndsl.training.detdata import load_detection_data
    return load_detection_data(str(yaml), (3, SIZE, SIZE)).val


def score(module, val, output=lambda y: y) -> dict:
    """mAP of a module's decoded detections, (b, 4 + classes, anchors), by cnndsl's code."""
    import torch

    from cnndsl.training.detmetrics import DetectionEvaluator
    from cnndsl.training.tasks.detect import EVAL_CONF, postprocess
    module.eval()
    evaluator = DetectionEvaluator(val.classes)
    with torch.no_grad():
        for start in range(0, len(val), 50):
            x, y = val.images[start:start + 50], val.labels[start:start + 50]
            evaluator.update(postprocess(output(module(x)).float(), conf=EVAL_CONF), y)
    report = evaluator.compute()
    return {"map50": report["map50"], "map": report["map"]}


# ---- the two runs, each in its own process ------------------------------------------------


def run_ultralytics(yaml: Path, epochs: int, threads: int, out: Path) -> dict:
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils
    torch_utils.NUM_THREADS = threads  # what select_device sets torch's threads to
    seconds: list[float] = []
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", lambda t: seconds.append(-time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda t: seconds.__setitem__(
        -1, seconds[-1] + time.perf_counter()))
    model.train(data=str(yaml), imgsz=SIZE, epochs=epochs, batch=BATCH, device="cpu",
                workers=0, amp=False, plots=False, project=str(out), name="ultralytics",
                exist_ok=True, seed=0, verbose=False)
    trainer = model.trainer
    own = trainer.metrics or {}
    ema = trainer.ema.ema.float()
    return {"name": "Ultralytics yolov8n.yaml", "params": sum(p.numel() for p in
                                                               ema.parameters()),
            "seconds": sum(seconds), "images": len(trainer.train_loader.dataset) * epochs,
            **score(ema, validation(yaml), output=lambda y: y[0]),
            "own_map50": own.get("metrics/mAP50(B)"), "own_map": own.get("metrics/mAP50-95(B)")}


def cnndsl_spec(spec: Path, out: Path) -> Path:
    """`spec`'s network at 3 classes and 64 x 64, trained as specs/yolo_small.cnn is."""
    small = (ROOT / "specs" / "yolo_small.cnn").read_text()
    body = re.search(r"^train yolo_small\(\) \{\n(.*?)^\}", small, re.M | re.S).group(1)
    text = (ROOT / "specs" / spec.name).read_text() if not spec.exists() else spec.read_text()
    network = re.search(r"^network (\w+)\(", text, re.M).group(1)
    path = out / "bench.cnn"
    path.write_text(f'import "{spec.resolve()}"\n\n'
                    f"train {network}(classes=3, size={SIZE}) {{\n{body}}}\n")
    return path


def run_cnndsl(yaml: Path, spec: Path, epochs: int, threads: int, out: Path) -> dict:
    import torch

    import cnndsl
    torch.set_num_threads(threads)
    model = cnndsl.load(cnndsl_spec(spec, out), classes=3, size=SIZE)
    result = model.fit(str(yaml), epochs=epochs, batch=BATCH, progress=False)
    history = result["history"]
    return {"name": f"cnndsl {spec.name}", "params": model.params,
            "seconds": sum(h["seconds"] for h in history),
            "images": sum(h["train_samples"] for h in history),
            **score(result["module"], validation(yaml)),
            "own_map50": history[-1]["val_map50"], "own_map": history[-1]["val_map"]}


def child(kind: str, args) -> None:
    started = time.perf_counter()
    if kind == "ultralytics":
        result = run_ultralytics(Path(args.yaml), args.epochs, args.threads, Path(args.out))
    else:
        result = run_cnndsl(Path(args.yaml), Path(args.spec), args.epochs, args.threads,
                            Path(args.out))
    result["wall"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result), flush=True)


def spawn(kind: str, yaml: Path, args, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "YOLO_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(out / "ultralytics-settings")}
    command = [sys.executable, __file__, "--child", kind, "--yaml", str(yaml), "--out",
               str(out), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--spec", str(args.spec)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=out)
    process.kind = kind
    return process


def collect(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        sys.exit(f"{process.kind} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--spec", default=str(ROOT / "specs" / "yolov8n.cnn"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run one after the other (default: both at once, each with "
                        "--threads, so that both see the same load)")
    parser.add_argument("--child", choices=["ultralytics", "cnndsl"])
    parser.add_argument("--yaml")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        yaml = write_shapes(out / "shapes")
        kinds = ("ultralytics", "cnndsl")
        if args.one_at_a_time:
            results = [collect(spawn(kind, yaml, args, out)) for kind in kinds]
        else:  # side by side: both under the same load
            results = [collect(p) for p in [spawn(kind, yaml, args, out) for kind in kinds]]
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    ours, theirs = results[1], results[0]
    print(f"shapes: 800 train / 200 val images, {SIZE} x {SIZE}, {args.epochs} epochs, batch "
          f"{BATCH}, fp32, CPU, {args.threads} thread(s) each, "
          f"{'one after the other' if args.one_at_a_time else 'both at once'}; load "
          f"average (1/5/15 min, the higher of start and end) "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"{'':28} {'params':>10} {'mAP50':>7} {'mAP50-95':>9} {'train img/s':>12}"
          f"   (own figures: mAP50, mAP50-95; training s, process s)")
    for r in results:
        r["rate"] = r["images"] / r["seconds"]
        print(f"{r['name']:28} {r['params']:>10,} {r['map50']:7.4f} {r['map']:9.4f} "
              f"{r['rate']:12.2f}   ({r['own_map50']:.4f}, {r['own_map']:.4f}; "
              f"{r['seconds']:.0f} s, {r['wall']:.0f} s)")
    print(f"{'cnndsl / Ultralytics':28} {'':>10} {ours['map50'] / max(theirs['map50'], 1e-9):6.2f}x"
          f" {ours['map'] / max(theirs['map'], 1e-9):8.2f}x "
          f"{ours['rate'] / theirs['rate']:11.2f}x")


if __name__ == "__main__":
    main()
