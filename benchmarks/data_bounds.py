"""Time and peak memory of reading training data at and past its bounds.

    python benchmarks/data_bounds.py

Each case runs `load_data` in a fresh process (wall time, peak resident memory from
wait4's ru_maxrss): two 8192 x 8192 PNGs (the largest image read by default), a PNG whose
header declares 12000 x 12000 (140 KB of zeros: skipped from its header), an `.npz` whose
header declares 10^10 values (refused from its header), a zip bomb (400 MB of zeros in
390 KB) and MNIST's size of `.npz` (70,000 images of 28 x 28 uint8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

READ = """
import sys
from cnndsl.training.data import DataError, load_data
try:
    data = load_data(sys.argv[1], tuple(map(int, sys.argv[2].split("x"))))
    print(f"read {len(data.train) + len(data.val)} images, skipped {len(data.skipped)}"
          + (f" ({data.skipped[0][1][:40]}...)" if data.skipped else ""))
except DataError as exc:
    print("refused:", exc.message.split(": ", 1)[-1][:70])
"""


def big_png(path: Path, width: int, height: int) -> None:
    """A grey PNG of zeros, written row by row (never held decoded here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    compress = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))


def cases(root: Path):
    import numpy as np
    for label in ("a", "b"):
        (root / "big" / label).mkdir(parents=True)
        big_png(root / "big" / label / "0.png", 8192, 8192)
    yield "two 8192 x 8192 PNGs (the default limit)", root / "big", "1x64x64"
    (root / "bomb" / "a").mkdir(parents=True)
    (root / "bomb" / "b").mkdir(parents=True)
    big_png(root / "bomb" / "a" / "0.png", 12000, 12000)
    for label in ("a", "b"):
        big_png(root / "bomb" / label / "1.png", 8, 8)
    size = (root / "bomb" / "a" / "0.png").stat().st_size // 1000
    yield f"a PNG declaring 12000 x 12000 ({size} KB)", root / "bomb", "1x64x64"
    declared = root / "declared.npz"
    import io
    import zipfile
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (100_000, 1, 100, 1000)})
    labels = io.BytesIO()
    np.save(labels, np.zeros(100_000, np.int64))
    with zipfile.ZipFile(declared, "w") as archive:
        archive.writestr("x.npy", header.getvalue())
        archive.writestr("y.npy", labels.getvalue())
    yield ".npz header declaring 10^10 float32 values", declared, "1x28x28"
    bomb = root / "bomb.npz"
    np.savez_compressed(bomb, x=np.zeros((1000, 1, 100, 1000), np.float32),
                        y=np.zeros(1000, np.int64))
    yield (f".npz zip bomb: 400 MB of zeros in {bomb.stat().st_size // 1000} KB", bomb,
           "1x100x1000")
    mnist = root / "mnist.npz"
    rng = np.random.default_rng(0)
    np.savez(mnist, x=rng.integers(0, 256, (70_000, 28, 28), np.uint8),
             y=rng.integers(0, 10, 70_000))
    yield ".npz of 70,000 28 x 28 uint8 images", mnist, "1x28x28"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for what, path, shape in cases(Path(tmp)):
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-c", READ, str(path), shape],
                                       stdout=subprocess.PIPE, text=True)
            out = process.stdout.read().strip()
            _, _, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            print(f"| {what} | {out} | {seconds:.1f} s | {usage.ru_maxrss / 1024:.0f} MB |")


if __name__ == "__main__":
    main()
