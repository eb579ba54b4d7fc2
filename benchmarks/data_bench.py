"""The streaming data pipeline: peak memory against the dataset's size, and images/s with
and without DataLoader workers.

    python benchmarks/data_bench.py [--sizes 1000 20000] [--workers 0 2]

Writes generated shapes (images/ and masks/ PNGs, 32 x 32) to a temporary folder at each
size, then trains one epoch of the same small segmentation spec on it with `cnndsl train`
in a fresh process, streaming (`cache: none`) and, for contrast, held in memory
(`cache: memory`); on the first size also with each number of `--workers`. Peak RSS is
the largest of the training process and its workers (each its own process, bounded by
its prefetch); images/s is the epoch's training samples over its seconds (metrics.json),
validation left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
network tiny_seg(classes: int = 4) {
    input image: 3 x 32 x 32
    e = image -> conv(8, 3, padding=same) -> relu
    scores = e -> conv(8, 3, padding=same) -> relu -> conv(classes, 1)
    output scores
}
train tiny_seg() {
    optimizer: adam(lr=0.01)
    epochs: 1
    batch: 64
    augment: flip -> random_crop(padding=2)
    val_split: 0.05
}
"""


def write_folder(root: Path, count: int) -> None:
    """`count` generated images and masks, made and written in chunks (flat memory)."""
    import numpy as np
    from PIL import Image

    from cnndsl.training.segdata import SHAPES_CLASSES, generate_shapes
    for part in ("images", "masks"):
        (root / part).mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(SHAPES_CLASSES) + "\n")
    for start in range(0, count, 500):
        n = min(500, count - start)
        images, masks = generate_shapes(n, 32, 32, seed=start)
        for i in range(n):
            name = f"{start + i:06d}.png"
            Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0))).save(
                root / "images" / name)
            Image.fromarray(masks[i]).save(root / "masks" / name)


def train_once(spec: Path, data: Path, workers: int, cache: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "cnndsl", "train", str(spec), "--data", str(data),
                   "--out", out, "--json", "--set", f"workers={workers}", f"cache={cache}"]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        stdout, stderr = process.communicate()
        wall = time.perf_counter() - started
        if process.returncode:
            raise SystemExit(f"cnndsl train failed:\n{stderr.decode()}")
        record = json.loads(stdout)["history"][0]
    return {"images_per_s": record["train_samples"] / record["seconds"], "wall_s": wall,
            "train": record["train_samples"]}


def peak_rss_mib(spec: Path, data: Path, workers: int, cache: str) -> tuple[float, dict]:
    """Run in a child whose only child is the training process: RUSAGE_CHILDREN there is
    the training process's peak RSS."""
    code = (f"import resource, sys; sys.path[:0] = {sys.path!r}; "
            f"from benchmarks.data_bench import train_once; from pathlib import Path; "
            f"import json; r = train_once(Path({str(spec)!r}), Path({str(data)!r}), "
            f"{workers}, {cache!r}); "
            f"r['rss'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
            f"print(json.dumps(r))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    if result.returncode:
        raise SystemExit(result.stderr)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["rss"] / 1024, report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "tiny_seg.cnn"
        spec.write_text(SPEC)
        for size in args.sizes:
            data = Path(tmp) / f"shapes_{size}"
            started = time.perf_counter()
            write_folder(data, size)
            print(f"{size:,} images (32 x 32 PNG with masks), written in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            runs = [("none", 0), ("memory", 0)]
            if size == args.sizes[0]:  # workers: images/s on the smaller set
                runs += [("none", w) for w in args.workers if w]
            for cache, workers in runs:
                rss, report = peak_rss_mib(spec, data, workers, cache)
                print(f"  cache {cache:<6} workers {workers}: peak RSS {rss:7.1f} MiB, "
                      f"{report['images_per_s']:7.1f} images/s over "
                      f"{report['train']:,} images (run {report['wall_s']:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    main()
