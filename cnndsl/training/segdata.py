"""Segmentation data: images with masks of class indices, one per pixel.

Sources: `shapes` (generated here, no download: circles, squares and triangles on textured
backgrounds), a folder with `images/` and `masks/` (the same stem; masks single-channel
PNGs of class indices, or palette PNGs as Pascal VOC's), with `train/` and `val/` inside
or split by `val_split`, class names from `classes.txt` or a `data.yaml`'s `names:`; or an
`.npz` file with `x` and `masks`. Pixels at the ignore index (255, as VOC's borders) count
in no loss or metric.

Every mask is checked when the data is loaded (its size against its image's, its values
against the classes), so a bad file stops the run before it starts, named. A folder's
images are then read lazily, one sample at a time (in DataLoader workers), unless the
set is small enough to hold decoded in memory (`cache`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import (
    DATA_BYTES,
    IMAGE_SUFFIXES,
    Data,
    DataError,
    Dataset,
    _fit,
    decode_image,
    hold_in_memory,
    untrained_classes,
)
from .datafiles import class_file
from .images import UnreadableImageError, read_header, read_pixels

SHAPES_CLASSES = ["background", "circle", "square", "triangle"]
SHAPES_COUNT = 1000
MASK_MODES = {"P", "L", "1", "I", "I;16"}  # one channel of indices


# ---- the bundled, generated set ---------------------------------------------------------


def generate_shapes(count: int, height: int, width: int, seed: int = 0):
    """`count` RGB images (uint8, N x 3 x H x W) and their masks (uint8, N x H x W): one to
    three shapes of random colour and size on a striped, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((count, 3, height, width), np.uint8)
    masks = np.zeros((count, height, width), np.uint8)
    side = min(height, width)
    for n in range(count):
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.1, 0.6)
        stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        base = rng.uniform(0.15, 0.85, 3)
        image = (base[:, None, None] + 0.12 * stripes
                 + rng.normal(0, 0.05, (3, height, width)))
        mask = masks[n]
        for _ in range(rng.integers(1, 4)):
            kind = int(rng.integers(1, 4))
            r = rng.uniform(0.12, 0.24) * side
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            if kind == 1:
                region = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            elif kind == 2:
                region = (np.abs(xx - cx) <= 0.85 * r) & (np.abs(yy - cy) <= 0.85 * r)
            else:  # pointing up: the base at cy + r/2, the apex at cy - r
                region = (yy <= cy + 0.5 * r) & (np.abs(xx - cx) <= (yy - cy + r) / math.sqrt(3))
            colour = (base + rng.choice([-1, 1], 3) * rng.uniform(0.3, 0.5, 3)) % 1.0
            image[:, region] = (colour[:, None]
                                + rng.normal(0, 0.04, (3, int(region.sum()))))
            mask[region] = kind
        images[n] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return images, masks


def _shapes(shape, val_fraction: float, seed: int) -> Data:
    images, masks = generate_shapes(SHAPES_COUNT, shape[1], shape[2])
    x = _fit(torch.from_numpy(images).float() / 255.0, shape)
    y = torch.from_numpy(masks)
    train, val = _random_split(len(y), val_fraction, seed)
    names = [f"shapes_{i:04d}" for i in range(len(y))]
    return Data(Dataset(x[train], y[train], list(SHAPES_CLASSES), [names[i] for i in train]),
                Dataset(x[val], y[val], list(SHAPES_CLASSES), [names[i] for i in val]),
                "shapes")


# ---- a folder of images and masks ---------------------------------------------------------


@dataclass
class MaskFiles:
    """Image and mask files, decoded at the spec's size when a sample is asked for."""

    pairs: list[tuple[Path, Path]]
    classes: list[str]
    shape: tuple[int, int, int]
    max_pixels: int | None = None  # images.MAX_PIXELS when None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[i]
        return (decode_image(image_path, self.shape, self.max_pixels),
                decode_mask(mask_path, self.shape[1:], self.max_pixels))

    @property
    def names(self) -> list[str]:
        return [image.stem for image, _ in self.pairs]

    def in_memory(self) -> Dataset:
        samples = [self[i] for i in range(len(self))]
        return Dataset(torch.stack([s[0] for s in samples]),
                       torch.stack([s[1] for s in samples]), self.classes, self.names)


def decode_mask(path: Path, size, max_pixels: int | None = None) -> torch.Tensor:
    """One mask file as H x W uint8 class indices, resized (nearest) to the spec's size."""
    tensor = torch.from_numpy(read_pixels(path, None, max_pixels).astype(np.uint8))
    if tuple(tensor.shape) != tuple(size):
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF
        tensor = TF.resize(tensor[None], list(size), InterpolationMode.NEAREST)[0]
    return tensor


def _folder(root: Path, shape, val_fraction: float, seed: int, ignore: int,
            cache: str, max_pixels: int | None = None, max_bytes: float = DATA_BYTES) -> Data:
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    if presplit:
        train, val = _pairs(root / "train"), _pairs(root / "val")
    else:
        every = _pairs(root)
        train_rows, val_rows = _random_split(len(every), val_fraction, seed)
        train, val = [every[i] for i in train_rows], [every[i] for i in val_rows]
    named = class_file(root)
    trained = _check_masks(train, named, ignore, max_pixels)
    held = _check_masks(val, named, ignore, max_pixels)
    top = max(trained | held, default=0)
    classes = named or [str(i) for i in range(top + 1)]
    if len(classes) < 2:
        raise DataError(f"the masks in {root} hold one class only",
                        help="segmentation needs two classes or more (background too); "
                        "name them in classes.txt")
    parts = (MaskFiles(train, classes, shape, max_pixels),
             MaskFiles(val, classes, shape, max_pixels))
    need = (math.prod(shape) * 4 + shape[1] * shape[2]) * (len(train) + len(val))
    count = len(train) + len(val)
    parts = hold_in_memory(parts, cache, need, max_bytes, root, f"{count:,} images at "
                           f"{' x '.join(map(str, shape))} with masks")
    return Data(parts[0], parts[1], str(root), presplit=presplit,
                warnings=untrained_classes(trained, held, classes, "mask"))


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) by stem from `folder/images` and `folder/masks`."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise DataError(f"{folder} has no {needed.name}/ folder",
                            help="segmentation data: images/NAME.png with masks/NAME.png")
    masks = {p.stem: p for p in _files(masks_dir)}
    pairs = []
    for image in _files(images_dir):
        if image.stem not in masks:
            raise DataError(f"{image}: no mask {masks_dir / image.stem}.png",
                            help="every image needs a mask with the same name in masks/")
        pairs.append((image, masks[image.stem]))
    if not pairs:
        raise DataError(f"{images_dir} has no images")
    return pairs


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_masks(pairs, classes: list[str] | None, ignore: int,
                 max_pixels: int | None = None) -> set[int]:
    """Every mask: one channel (or a palette), its image's size, values that are classes
    or the ignore index. Returns the values found (the ignore index left out)."""
    found: set[int] = set()
    for image_path, mask_path in pairs:
        try:
            size, _ = read_header(image_path, max_pixels)
        except UnreadableImageError as why:
            raise DataError(f"{image_path}: {why}") from None
        try:
            mask_size, mode = read_header(mask_path, max_pixels)
            if mode not in MASK_MODES:
                raise DataError(f"{mask_path}: a {mode} mask without a palette",
                                help="save masks as single-channel PNGs of class indices "
                                "(0, 1, ...) or palette PNGs (as Pascal VOC's)")
            if mask_size != size:
                raise DataError(f"{mask_path}: the mask is {mask_size[0]} x {mask_size[1]}"
                                f" but its image is {size[0]} x {size[1]}",
                                help="a mask has its image's size")
            values = np.unique(read_pixels(mask_path, mode, max_pixels))
        except UnreadableImageError as why:
            raise DataError(f"{mask_path}: not a readable mask ({why})") from None
        values = {int(v) for v in values} - {ignore}
        if classes is not None:
            bad = sorted(v for v in values if v >= len(classes) or v < 0)
            if bad:
                raise DataError(f"{mask_path}: value {bad[0]} is not a class (0..."
                                f"{len(classes) - 1}) nor the ignore index {ignore}",
                                help="classes.txt names one class a line, from 0")
        elif values and (max(values) > 254 or min(values) < 0):
            raise DataError(f"{mask_path}: value {max(values)} is not a class index",
                            help="class indices run 0, 1, ...; name them in classes.txt")
        found |= values
    return found


# ---- .npz ---------------------------------------------------------------------------------


def _npz(path: Path, shape, val_fraction: float, seed: int, ignore: int,
         max_bytes: float = DATA_BYTES) -> Data:
    """`x` (images) and `masks`, and optionally `classes`: every header checked before any
    array is read."""
    from . import npzfile
    warnings: list[str] = []
    with npzfile.NpzFile(path) as npz:
        npz.need(("x", "masks"), "arrays `x` (images) and `masks`")
        x = npzfile.read_images_header(npz)
        masks = npz.header("masks", npzfile.LABEL_KINDS, "masks")
        if len(masks.shape) != 3 or masks.shape[0] != x.shape[0] or \
                masks.shape[1:] != x.shape[2:]:
            raise DataError(f"{path}: x must be N x C x H x W and masks N x H x W of the same "
                            f"size; found x {npzfile._shape(x.shape)}, masks "
                            f"{npzfile._shape(masks.shape)}")
        npzfile.check_memory(path, x.nbytes + x.size * 4 + masks.nbytes + masks.size
                             + x.shape[0] * (math.prod(shape) * 4 + shape[1] * shape[2]),
                             max_bytes, f"{x.shape[0]:,} images of "
                             f"{npzfile._shape(x.shape[1:])} {x.dtype} with masks")
        names = npzfile.read_class_names(npz)
        y = npz.load("masks")
        values = set(np.unique(y).tolist()) - {ignore}
        limit = len(names) if names is not None else 255
        bad = sorted(v for v in values if v < 0 or v >= limit)
        if bad:
            raise DataError(f"{path}: mask value {bad[0]} is not a class (0..{limit - 1}) "
                            f"nor the ignore index {ignore}")
        classes = names or [str(i) for i in range(max(values, default=0) + 1)]
        pixels = npz.load("x").reshape(x.shape)
    images = torch.from_numpy(npzfile.unit_floats(pixels, path, warnings))
    del pixels
    images = _fit(images, shape)
    y = torch.from_numpy(y.astype(np.uint8))
    if tuple(y.shape[1:]) != tuple(shape[1:]):
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF
        y = TF.resize(y[:, None], list(shape[1:]), InterpolationMode.NEAREST)[:, 0]
    train, val = _random_split(len(y), val_fraction, seed)
    warnings += untrained_classes(set(torch.unique(y[train]).tolist()) - {ignore},
                                  set(torch.unique(y[val]).tolist()) - {ignore}, classes,
                                  "mask")
    return Data(Dataset(images[train], y[train], classes), Dataset(images[val], y[val], classes),
                str(path), warnings=warnings)


# ---- shared -------------------------------------------------------------------------------


def load_masks(data: str | Path, shape, *, val_fraction: float = 0.2, seed: int = 0,
               ignore_index: int = 255, cache: str = "auto",
               max_pixels: int | None = None, max_bytes: float = DATA_BYTES) -> Data:
    if shape[0] not in (1, 3):
        raise DataError(f"images have 1 or 3 channels; the network takes {shape[0]}")
    if ignore_index > 255:
        raise DataError(f"the ignore index {ignore_index} is over 255", help="masks hold "
                        "bytes: use 255 (as Pascal VOC) or a value the classes do not use")
    if str(data) == "shapes":
        return _shapes(shape, val_fraction, seed)
    if str(data) == "digits":
        raise DataError("`digits` is classification data (a label per image)",
                        help="segmentation needs masks: `--data shapes`, a folder with "
                        "images/ and masks/, or an .npz with x and masks")
    path = Path(data)
    if path.suffix == ".npz" and os.path.lexists(path) and not path.is_dir():
        return _npz(path, shape, val_fraction, seed, ignore_index, max_bytes)
    if not path.is_dir():
        raise DataError(f"no data folder at {path}", help="give `shapes`, a folder with "
                        "images/ and masks/ (or train/ and val/ with both), or an .npz file")
    return _folder(path, shape, val_fraction, seed, ignore_index, cache, max_pixels,
                   max_bytes)


def _random_split(count: int, val_fraction: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    k = min(max(round(val_fraction * count), 1), count - 1) if count >= 2 else 0
    return order[k:].sort().values.tolist(), order[:k].sort().values.tolist()
