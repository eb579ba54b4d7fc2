"""Training data, held in memory as float tensors in [0, 1] at the spec's input shape.

Sources: `digits` (scikit-learn's bundled handwritten digits: 1,797 8x8 images, no
download), a folder with one subfolder of images per class (with `train/` and `val/`
inside, or split here), or an `.npz` file with arrays `x` and `y`. Images are decoded with
Pillow and resized with torchvision; augmentation uses torchvision.transforms.v2, one random
draw per sample, seeded by (seed, epoch, sample) in training/pipeline.py.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..diagnostics import printable_text
from .images import UnreadableImageError, read_pixels, verify

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm"}


class DataError(Exception):
    """Data that cannot be used; the caller turns it into a diagnostic."""

    def __init__(self, message: str, help: str = ""):
        super().__init__(message)
        self.message, self.help = message, help


@dataclass
class Dataset:
    """Samples held in memory: what the loop indexes a batch at a time."""

    images: torch.Tensor  # N x C x H x W, float32 in [0, 1]
    labels: torch.Tensor  # N labels (int64), or N x H x W masks (uint8 or int64)
    classes: list[str]
    names: list[str] | None = None  # where each sample came from (predictions' names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def batch(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor(index, dtype=torch.long)
        return self.images[rows], self.labels[rows]


@dataclass
class ImageFiles:
    """Image files with their labels, decoded at the spec's size when a sample is asked
    for (in a DataLoader worker): a folder too large to hold in memory, or `cache: none`."""

    files: list[tuple[Path, int]]
    classes: list[str]
    shape: tuple[int, int, int]
    max_pixels: int | None = None  # images.MAX_PIXELS when None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.files[i]
        return decode_image(path, self.shape, self.max_pixels), torch.tensor(label)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.files], dtype=torch.int64)

    @property
    def names(self) -> list[str]:
        return [path.stem for path, _ in self.files]

    def select(self, rows) -> ImageFiles:
        return ImageFiles([self.files[i] for i in rows], self.classes, self.shape,
                          self.max_pixels)


def image_tensor(path: Path, channels: int, max_pixels: int | None = None) -> torch.Tensor:
    """One image file as C x h x w float32 in [0, 1] at its own size: grey for one
    channel, RGB for three."""
    pixels = torch.from_numpy(read_pixels(path, "L" if channels == 1 else "RGB", max_pixels))
    return pixels.reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1) \
        .float() / 255.0


def decode_image(path: Path, shape, max_pixels: int | None = None) -> torch.Tensor:
    """One image file as C x H x W float32 in [0, 1], at the spec's size."""
    return _fit(image_tensor(path, shape[0], max_pixels)[None], shape)[0]


CACHE_BYTES = 256 * 2**20  # `cache: auto` holds a folder decoded in memory below this
DATA_BYTES = 4 * 2**30  # data held in memory, without --memory-limit


@dataclass
class Data:
    train: Dataset
    val: Dataset
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    presplit: bool = False  # a folder with train/ and val/: its validation part is its own
    warnings: list[str] = field(default_factory=list)  # what the data holds that may be wrong

    def part(self, split: str):
        """`train`, `val`, or `all` (both together)."""
        if split != "all":
            return self.train if split == "train" else self.val
        if isinstance(self.train, Dataset) and isinstance(self.val, Dataset):
            names = self.train.names + self.val.names \
                if self.train.names and self.val.names else None
            return Dataset(torch.cat([self.train.images, self.val.images]),
                           torch.cat([self.train.labels, self.val.labels]), self.val.classes,
                           names)
        return Joined(self.train, self.val)


class Joined:
    """Two sample sets read as one, in order (`eval --split all` of streamed data)."""

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.classes = second.classes

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i: int):
        n = len(self.first)
        return self.first[i] if i < n else self.second[i - n]

    @property
    def names(self) -> list[str] | None:
        first, second = getattr(self.first, "names", None), getattr(self.second, "names", None)
        return list(first) + list(second) if first and second else None


def load_data(data: str | Path, shape: tuple[int, int, int], *, val_fraction: float = 0.2,
              seed: int = 0, max_bytes: float = DATA_BYTES,
              classes: tuple[str, ...] | None = None, cache: str = "auto",
              max_pixels: int | None = None) -> Data:
    """The data at the spec's input shape; `classes`: only these, relabelled 0, 1, ... in
    that order (digits 5-9 as five classes). A folder is decoded into memory (`cache:
    memory`, or `auto` under CACHE_BYTES), else read lazily (`ImageFiles`); an image
    over `max_pixels` (images.MAX_PIXELS by default) is skipped, never decoded."""
    loaded = _load(data, shape, val_fraction, seed, max_bytes, cache, max_pixels)
    return loaded if classes is None else only_classes(loaded, classes)


def only_classes(data: Data, classes: tuple[str, ...]) -> Data:
    known = data.train.classes
    missing = [c for c in classes if c not in known]
    if missing:
        raise DataError(f"{data.source} has no class {', '.join(map(repr, missing))}",
                        help=f"its classes: {', '.join(known)}")
    new_label = torch.full((len(known),), -1, dtype=torch.int64)
    for i, name in enumerate(classes):
        new_label[known.index(name)] = i

    def select(part: Dataset | ImageFiles) -> Dataset | ImageFiles:
        labels = new_label[part.labels]
        keep = labels >= 0
        if isinstance(part, ImageFiles):
            return ImageFiles([(path, int(labels[i])) for i, (path, _) in
                               enumerate(part.files) if keep[i]], list(classes), part.shape,
                              part.max_pixels)
        return Dataset(part.images[keep], labels[keep], list(classes))
    return Data(select(data.train), select(data.val),
                f"{data.source} (classes {', '.join(classes)})", data.skipped, data.presplit,
                data.warnings)


def _load(data: str | Path, shape: tuple[int, int, int], val_fraction: float, seed: int,
          max_bytes: int, cache: str = "auto", max_pixels: int | None = None) -> Data:
    channels = shape[0]
    if channels not in (1, 3):
        raise DataError(f"images have 1 or 3 channels; the network takes {channels}",
                        help="make the input 1 x H x W (grey) or 3 x H x W (colour)")
    if str(data) == "digits":
        return _digits(shape, val_fraction, seed)
    path = Path(data)
    if path.suffix == ".npz" and os.path.lexists(path) and not path.is_dir():
        return _npz(path, shape, val_fraction, seed, max_bytes)
    if not path.exists():
        raise DataError(f"no data at {path}", help="give `digits`, an image folder (one "
                        "subfolder per class) or an .npz file")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder", help="give a folder with one subfolder of "
                        "images per class, or an .npz file")
    return _folder(path, shape, val_fraction, seed, max_bytes, cache, max_pixels)


# ---- sources ---------------------------------------------------------------------------


def _digits(shape, val_fraction: float, seed: int) -> Data:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    images = _fit(images, shape)
    classes = [str(i) for i in range(10)]
    train, val = _split(labels, val_fraction, seed)
    return Data(Dataset(images[train], labels[train], classes),
                Dataset(images[val], labels[val], classes), "digits")


def _folder(root: Path, shape, val_fraction: float, seed: int, max_bytes: int,
            cache: str = "auto", max_pixels: int | None = None) -> Data:
    skipped: list[tuple[str, str]] = []
    reader = _decode
    count = sum(1 for _ in _count_files(root))
    if not in_memory(cache, count * math.prod(shape) * 4, max_bytes):
        reader, max_bytes = _lazy, math.inf  # streamed: memory does not grow with the set

    def decode(files, classes, shape, skipped):
        return reader(files, classes, shape, skipped, max_pixels)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_files, classes = _class_files(root / "train")
        val_files, val_classes = _class_files(root / "val")
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise DataError(f"train/ and val/ in {root} have different classes: "
                            f"only in train/: {', '.join(only_train) or '-'}; only in val/: "
                            f"{', '.join(only_val) or '-'}")
        _check_size(len(train_files) + len(val_files), shape, max_bytes, root, True)
        train = decode(train_files, classes, shape, skipped)
        val = decode(val_files, classes, shape, skipped)
        _check_nonempty(train, classes, root / "train")
        _check_nonempty(val, classes, root / "val")
        return Data(train, val, str(root), skipped, presplit=True)
    files, classes = _class_files(root)
    _check_size(len(files), shape, max_bytes, root, True)
    every = decode(files, classes, shape, skipped)
    _check_nonempty(every, classes, root)
    train, val = _split(every.labels, val_fraction, seed)
    if isinstance(every, ImageFiles):
        return Data(every.select(train.tolist()), every.select(val.tolist()), str(root),
                    skipped)
    return Data(Dataset(every.images[train], every.labels[train], classes),
                Dataset(every.images[val], every.labels[val], classes), str(root), skipped)


def _class_files(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    from .npzfile import class_names
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class folders",
                        help="put each class's images in a subfolder: images/cat/1.png, ...")
    names = class_names([f.name for f in folders], root)
    files = []
    for label, folder in enumerate(folders):
        found = walk_files(folder)
        if not found:
            raise DataError(f"the class folder {folder} is empty",
                            help="add its images, or remove the folder")
        files += [(p, label) for p in found]
    return files, names


MAX_DEPTH = 32  # folders below a class folder (or predict's folder) that are searched


def walk_files(folder: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """The regular files under `folder`, sorted, hidden ones (and those in hidden folders)
    left out, symbolic links to folders not followed; a folder nested deeper than
    `max_depth` is an error (a walk as deep as the tree would exhaust the stack)."""
    found, stack = [], [(folder, 0)]
    while stack:
        here, depth = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError as exc:
            raise DataError(f"cannot read the folder {here}: {exc.strerror or exc}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if depth + 1 > max_depth:
                    raise DataError(f"{folder} holds folders nested more than {max_depth} "
                                    f"deep ({here})", help="keep each class's images at most "
                                    f"{max_depth} folders down")
                stack.append((path, depth + 1))
            elif path.is_file():
                found.append(path)
    return sorted(found)


def in_memory(cache: str, need: float, max_bytes: float) -> bool:
    """Whether a folder is decoded into memory: `cache: memory` always (refused over the
    limit), `auto` when it is small and within the limit, else it is read as needed."""
    return cache == "memory" or cache == "auto" and need <= min(CACHE_BYTES, max_bytes)


def hold_in_memory(parts: tuple, cache: str, need: float, max_bytes: float, where,
                   what: str) -> tuple:
    """File-backed parts (train, val) decoded into memory where `cache` says so (refused
    over the limit), else as they are, read as needed."""
    if not in_memory(cache, need, max_bytes):
        return parts
    if need > max_bytes:
        raise over_limit(where, what, need, max_bytes, True)
    return tuple(p.in_memory() for p in parts)


def over_limit(where, what: str, need: float, max_bytes: float, streams: bool = False):
    """The one-line refusal of data that would need more memory than allowed."""
    from ..report import human_bytes
    fix = "use fewer or smaller images, "
    if streams:
        fix += "`cache: none` to read them from disk as needed, "
    setting = ("raise --memory-limit" if max_bytes != DATA_BYTES else
               f"--memory-limit (default {human_bytes(DATA_BYTES)}) to raise the limit")
    return DataError(f"{where}: {what} need {human_bytes(need)} in memory, over "
                     f"{human_bytes(max_bytes)}", help=f"{fix}or {setting}")


def untrained_classes(train: set[int], val: set[int], classes: list[str],
                      what: str) -> list[str]:
    """Segmentation and detection: a warning naming the classes found only in the
    validation part (the network never learns them; the other classes still train, and a
    rare class is common in real sets, so this is said, not refused)."""
    missing = [printable_text(classes[v]) for v in sorted(val - train)
               if 0 <= v < len(classes)]
    if not missing:
        return []
    many = len(missing) > 1
    return [f"class{'es' if many else ''} {', '.join(f'`{n}`' for n in missing)} "
            f"appear{'' if many else 's'} only in the validation part: no training {what} "
            f"holds {'them' if many else 'it'}, so the network cannot learn "
            f"{'them' if many else 'it'} (add such {what}s, or change `val_split`)"]


def _check_size(count: int, shape, max_bytes: float, where: Path,
                streams: bool = False) -> None:
    need = count * math.prod(shape) * 4
    if need > max_bytes:
        raise over_limit(where, f"{count:,} images at {' x '.join(map(str, shape))}", need,
                         max_bytes, streams)


def check_image_input(shape) -> None:
    """Images decode to grey or RGB: only a 1 x H x W or 3 x H x W input can take them."""
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"images cannot feed an input of {' x '.join(map(str, shape))}: "
                        "they decode to 1 x H x W (grey) or 3 x H x W (RGB)",
                        help="give an .npy array of the input's shape instead")


def _decode(files, classes: list[str], shape, skipped: list,
            max_pixels: int | None = None) -> Dataset:
    check_image_input(shape)
    images, labels = [], []
    for path, label in files:
        try:
            images.append(decode_image(path, shape, max_pixels))
        except UnreadableImageError as why:
            skipped.append((str(path), str(why)))
            continue
        labels.append(label)
    if not images:
        return Dataset(torch.zeros(0, *shape), torch.zeros(0, dtype=torch.int64), classes)
    return Dataset(torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes)


def _count_files(root: Path):
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.is_dir() and not folder.name.startswith("."):
            yield from walk_files(folder)


def _lazy(files, classes: list[str], shape, skipped: list,
          max_pixels: int | None = None) -> ImageFiles:
    """Files whose header Pillow reads (the rest skipped, as `_decode` does), decoded
    later, one at a time."""
    kept = []
    for path, label in files:
        try:
            verify(path, max_pixels)
        except UnreadableImageError as why:
            skipped.append((str(path), str(why)))
            continue
        kept.append((path, label))
    return ImageFiles(kept, classes, shape, max_pixels)


def read_images(path: Path, shape, max_bytes: float = DATA_BYTES, max_pixels: int | None = None
                ) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """An image, or a folder's images (sorted, subfolders too), as training reads them:
    decoded with Pillow, resized and converted to the input's C x H x W, in 0..1. Returns
    the images, their files and the files skipped (why)."""
    if path.is_dir():
        files = [p for p in walk_files(path) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"no file or folder {path}")
    _check_size(len(files), shape, max_bytes, path)
    skipped: list[tuple[str, str]] = []
    data = _decode([(f, 0) for f in files], ["0"], shape, skipped, max_pixels)
    if not len(data.labels):
        raise DataError(f"cannot read {path}: {skipped[0][1]}" if len(files) == 1 else
                        f"no readable image in {path}")
    unread = {name for name, _ in skipped}
    return data.images, [str(f) for f in files if str(f) not in unread], skipped


def _check_nonempty(data: Dataset, classes: list[str], where: Path) -> None:
    counts = torch.bincount(data.labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts.tolist()) if n == 0]
    if empty:
        raise DataError(f"no readable image for class{'es' if len(empty) > 1 else ''} "
                        f"{', '.join(empty)} in {where}", help="add images the class can "
                        "learn from, or remove its folder")


def _npz(path: Path, shape, val_fraction: float, seed: int, max_bytes: int) -> Data:
    """`x` (images) and `y` (labels), and optionally `classes` (their names): every
    header checked before any array is read."""
    from . import npzfile
    warnings: list[str] = []
    with npzfile.NpzFile(path) as npz:
        npz.need(("x", "y"), "arrays `x` (images) and `y` (labels)")
        x = npzfile.read_images_header(npz)
        y = npz.header("y", npzfile.LABEL_KINDS, "labels")
        if len(y.shape) != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"{path}: y must hold one label per image ({x.shape[0]:,}); found "
                            f"{npzfile._shape(y.shape)}")
        npzfile.check_memory(path, x.nbytes + x.size * 4 + x.shape[0] * math.prod(shape) * 4
                             + y.size * 8, max_bytes, f"{x.shape[0]:,} images of "
                             f"{npzfile._shape(x.shape[1:])} {x.dtype}")
        names = npzfile.read_class_names(npz)
        labels = npz.load("y")
        classes = npzfile.check_labels(labels, names, path)
        pixels = npz.load("x").reshape(x.shape)
    images = torch.from_numpy(npzfile.unit_floats(pixels, path, warnings))
    del pixels
    images = _fit(images, shape)
    labels = torch.from_numpy(labels.astype(np.int64))
    train, val = _split(labels, val_fraction, seed)
    return Data(Dataset(images[train], labels[train], classes),
                Dataset(images[val], labels[val], classes), str(path), warnings=warnings)


# ---- shared steps ------------------------------------------------------------------------


def _fit(images: torch.Tensor, shape) -> torch.Tensor:
    """N x c x h x w in [0, 1] -> N x C x H x W: resized (antialiased), channels matched."""
    from torchvision.transforms.v2 import functional as TF
    channels, height, width = shape
    if images.shape[-2:] != (height, width):
        images = TF.resize(images, [height, width], antialias=True).clamp(0, 1)
    if images.shape[1] == 1 and channels == 3:
        images = images.repeat(1, 3, 1, 1)
    elif images.shape[1] == 3 and channels == 1:
        images = TF.rgb_to_grayscale(images)
    return images.contiguous()


def _split(labels: torch.Tensor, val_fraction: float, seed: int):
    """A stratified split, the same for a seed: each class gives round(fraction x n)
    (at least one, where it has two or more) of its samples to validation."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        k = round(val_fraction * len(members))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        val.append(members[:k])
        train.append(members[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


# ---- augmentation ------------------------------------------------------------------------


def sample_augmenter(ops: list[tuple[str, dict]], size: tuple[int, int]):
    """One image's random augmentation (its label untouched), or None without any."""
    from .ops import v2_transforms
    steps = v2_transforms(ops, size)
    if not steps:
        return None
    from torchvision.transforms import v2
    pipeline = v2.Compose(steps)

    def apply(image: torch.Tensor, label: torch.Tensor):
        return pipeline(image), label
    return apply


def eval_transform(ops: list[tuple[str, dict]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """What evaluation applies too: normalisation, if the spec asks for it."""
    for name, args in ops:
        if name == "normalize":  # one value, or one per channel (the checker saw to it)
            mean = torch.tensor(args["mean"], dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(args["std"], dtype=torch.float32).view(-1, 1, 1)

            def apply(batch: torch.Tensor, mean=mean, std=std) -> torch.Tensor:
                return (batch - mean.to(batch.device, batch.dtype)) / \
                    std.to(batch.device, batch.dtype)
            return apply
    return lambda batch: batch
