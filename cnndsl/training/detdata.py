"""Object detection data: images with boxes, each box a class and its corners.

Sources: `shapes` (generated here, no download: squares, discs and triangles on textured
backgrounds, two to four an image, their boxes known exactly; 1,000 images, fewer where
they would pass 2 GiB: 436 at 640 x 640); a folder in YOLO's layout
(`images/` and `labels/`, one `class cx cy w h` line per object, normalised to 0..1, with
`train/` and `val/` inside, or `images/train` and `labels/train`, or split by `val_split`;
class names from `classes.txt`); an Ultralytics data YAML (`path`, `train`, `val`,
`names`), so an Ultralytics user's dataset works unchanged; or a COCO JSON file
(`images`, `annotations` with `bbox` as x, y, w, h in pixels, `categories`).

Images are letterboxed to the spec's input size as Ultralytics does: scaled to fit with
their aspect kept, centred, the border filled with grey 114. A sample is `(image, target)`:
the image C x H x W float32 in 0..1, the target `max_boxes` x 5 float32 rows `[class, x1,
y1, x2, y2]` in input pixels after the letterbox, rows past the image's objects at class
-1, so that the default collation stacks a batch (and a process's shard of a batch holds
its images' boxes).

Every label is checked when the data is loaded, so a bad line stops the run before it
starts, named by file, line and column (`LabelError`). Images are read through
training/images.py, lazily (one sample at a time, in DataLoader workers) unless the set is
small enough to hold decoded in memory (`cache`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import load_json
from .data import (
    DATA_BYTES,
    IMAGE_SUFFIXES,
    Data,
    DataError,
    Dataset,
    _check_size,
    _fit,
    hold_in_memory,
    image_tensor,
    untrained_classes,
)
from .datafiles import class_file, read_bounded, read_data_yaml, yaml_class_names
from .images import UnreadableImageError, read_header
from .npzfile import MAX_CLASSES
from .ops import v2_transforms

SHAPES_CLASSES = ["square", "disc", "triangle"]
SHAPES_COUNT = 1000
SHAPES_BYTES = 2 * 2**30  # the generated set's images in memory: fewer past this
SHAPES_MIN = 64
MAX_OBJECTS = 1000  # per image: a target is max_boxes x 5 for every image of the set
LETTERBOX_FILL = 114 / 255  # Ultralytics' grey border
MAX_JSON_BYTES = 1 << 30  # a COCO annotation file
EDGE_SLACK = 0.01  # a normalised box edge this far past the image is rounding: clipped


class LabelError(DataError):
    """A bad label, located: `path:line:column: problem` (column 0 where none applies)."""

    def __init__(self, path, line: int, column: int, problem: str, text: str = "",
                 help: str = ""):
        place = f"{path}:{line}" + (f":{column}" if column else "")
        super().__init__(f"{place}: {problem}", help)
        self.path, self.line, self.column, self.problem, self.text = \
            str(path), line, column, problem, text


# ---- the bundled, generated set ---------------------------------------------------------


def generate_shapes(count: int, height: int, width: int, seed: int = 0):
    """`count` RGB images (uint8, N x 3 x H x W) and their boxes (one float32 array of
    rows `[class, x1, y1, x2, y2]` in pixels per image): two to four shapes that do not
    overlap, of random colour and size, on a striped, noisy background. A box is the
    extent of its shape's pixels (pixel i spans i..i+1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((count, 3, height, width), np.uint8)
    boxes = []
    side = min(height, width)
    for n in range(count):
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.1, 0.6)
        stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        base = rng.uniform(0.15, 0.85, 3).astype(np.float32)
        image = (base[:, None, None] + 0.12 * stripes
                 + 0.05 * rng.standard_normal((3, height, width), np.float32))
        taken: list[tuple[float, float, float]] = []
        rows = []
        for _ in range(int(rng.integers(2, 5))):
            kind = int(rng.integers(0, 3))
            for _try in range(20):  # a place clear of the shapes already drawn
                r = rng.uniform(0.1, 0.2) * side
                cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
                if all(math.hypot(cx - x, cy - y) > r + s + 1 for x, y, s in taken):
                    break
            else:
                continue
            taken.append((cx, cy, r))
            # the shape's window (every shape lies within r of its centre)
            top, left = max(int(cy - r) - 1, 0), max(int(cx - r) - 1, 0)
            window = np.s_[top:int(cy + r) + 2, left:int(cx + r) + 2]
            region = _shape_region(kind, xx[window], yy[window], cx, cy, r)
            if not region.any():
                continue
            colour = (base + rng.choice([-1, 1], 3) * rng.uniform(0.3, 0.5, 3)) % 1.0
            patch = image[(slice(None), *window)]
            patch[:, region] = (colour[:, None] + 0.04 * rng.standard_normal(
                (3, int(region.sum())), np.float32))
            ys, xs = np.nonzero(region)
            rows.append([kind, left + xs.min(), top + ys.min(), left + xs.max() + 1,
                         top + ys.max() + 1])
        images[n] = np.clip(image * 255, 0, 255).astype(np.uint8)
        boxes.append(np.asarray(rows, np.float32).reshape(-1, 5))
    return images, boxes


def _shape_region(kind: int, xx, yy, cx: float, cy: float, r: float):
    if kind == 0:  # square
        return (np.abs(xx - cx) <= 0.8 * r) & (np.abs(yy - cy) <= 0.8 * r)
    if kind == 1:  # disc
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    # triangle pointing up: the base at cy + r/2, the apex at cy - r
    return (yy <= cy + 0.5 * r) & (np.abs(xx - cx) <= (yy - cy + r) / math.sqrt(3))


def _shapes(shape, val_fraction: float, seed: int, max_boxes: int | None,
            count: int = SHAPES_COUNT) -> Data:
    # held in memory as float32: fewer images where a thousand would pass 2 GiB
    count = min(count, max(SHAPES_MIN, SHAPES_BYTES // (math.prod(shape) * 4)))
    _check_size(count, shape, 2 * SHAPES_BYTES, Path("shapes"))
    images, boxes = generate_shapes(count, shape[1], shape[2])
    x = _fit(torch.from_numpy(images).float() / 255.0, shape)
    size = _max_boxes(boxes, max_boxes, "shapes")
    y = torch.stack([pad_boxes(torch.from_numpy(b), size) for b in boxes])
    train, val = _random_split(count, val_fraction, seed)
    names = [f"shapes_{i:04d}" for i in range(count)]
    return Data(Dataset(x[train], y[train], list(SHAPES_CLASSES), [names[i] for i in train]),
                Dataset(x[val], y[val], list(SHAPES_CLASSES), [names[i] for i in val]),
                "shapes")


# ---- targets and letterbox ----------------------------------------------------------------


def pad_boxes(rows: torch.Tensor, size: int) -> torch.Tensor:
    """n x 5 rows `[class, x1, y1, x2, y2]` as `size` x 5, padded with class -1 rows."""
    target = torch.zeros(size, 5, dtype=torch.float32)
    target[:, 0] = -1
    target[:len(rows)] = rows.float()
    return target


def _max_boxes(boxes: list, given: int | None, where: str) -> int:
    most = max((len(b) for b in boxes), default=0)
    if given is not None:
        if most > given:
            raise DataError(f"{where}: an image has {most} objects, over max_boxes={given}")
        return given
    if most > MAX_OBJECTS:
        raise DataError(f"{where}: an image has {most} objects, over {MAX_OBJECTS}",
                        help="detection takes at most 1000 objects per image")
    return max(most, 1)


def letterbox(image: torch.Tensor, size) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """C x h x w in 0..1 scaled to fit `size` (H, W) with its aspect kept and centred on
    grey 114, as Ultralytics' LetterBox. Returns the image, the scale and the (left, top)
    padding: a point (x, y) of the original lands at (x * scale + left, y * scale + top)."""
    from torchvision.transforms.v2 import functional as TF
    height, width = size
    h, w = image.shape[-2:]
    scale = min(height / h, width / w)
    new_h, new_w = round(h * scale), round(w * scale)
    if (new_h, new_w) != (h, w):
        image = TF.resize(image[None], [new_h, new_w], antialias=True)[0].clamp(0, 1)
    top = round((height - new_h) / 2 - 0.1)
    left = round((width - new_w) / 2 - 0.1)
    out = torch.full((image.shape[0], height, width), LETTERBOX_FILL, dtype=torch.float32)
    out[:, top:top + new_h, left:left + new_w] = image
    return out, scale, (left, top)


def letterboxed_file(path: Path, shape, max_pixels: int | None = None):
    """An image file letterboxed to the spec's shape, as training and predict read it:
    (the image, the scale, the (left, top) padding, the file's (width, height)); an image
    over `max_pixels` (images.MAX_PIXELS by default) is refused, never decoded."""
    image = image_tensor(path, shape[0], max_pixels)
    h, w = image.shape[-2:]
    boxed, scale, corner = letterbox(image, shape[1:])
    return boxed, scale, corner, (w, h)


def read_letterboxed(path: Path, shape, normalised: np.ndarray, max_boxes: int,
                     max_pixels: int | None = None):
    """An image file letterboxed to the spec's shape and its boxes (n x 5 `[class, cx, cy,
    w, h]` normalised to the original image) in input pixels, padded to `max_boxes`."""
    image, scale, (left, top), (w, h) = letterboxed_file(path, shape, max_pixels)
    rows = torch.from_numpy(np.asarray(normalised, np.float32).reshape(-1, 5))
    boxes = torch.empty_like(rows)
    boxes[:, 0] = rows[:, 0]
    boxes[:, 1] = (rows[:, 1] - rows[:, 3] / 2) * w * scale + left
    boxes[:, 2] = (rows[:, 2] - rows[:, 4] / 2) * h * scale + top
    boxes[:, 3] = (rows[:, 1] + rows[:, 3] / 2) * w * scale + left
    boxes[:, 4] = (rows[:, 2] + rows[:, 4] / 2) * h * scale + top
    return image, pad_boxes(boxes, max_boxes)


@dataclass
class BoxFiles:
    """Image files with their boxes (normalised `[class, cx, cy, w, h]` rows), decoded
    and letterboxed at the spec's size when a sample is asked for."""

    items: list[tuple[Path, np.ndarray]]
    classes: list[str]
    shape: tuple[int, int, int]
    max_boxes: int
    max_pixels: int | None = None  # images.MAX_PIXELS when None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, rows = self.items[i]
        try:
            image, target = read_letterboxed(path, self.shape, rows, self.max_boxes,
                                             self.max_pixels)
        except UnreadableImageError as why:  # checked at load; changed since
            raise DataError(f"{path}: {why}") from None
        return _fit(image[None], self.shape)[0], target

    @property
    def names(self) -> list[str]:
        return [path.stem for path, _ in self.items]

    def in_memory(self) -> Dataset:
        samples = [self[i] for i in range(len(self))]
        if not samples:
            return Dataset(torch.zeros(0, *self.shape), torch.zeros(0, self.max_boxes, 5),
                           self.classes, [])
        return Dataset(torch.stack([s[0] for s in samples]),
                       torch.stack([s[1] for s in samples]), self.classes, self.names)


# ---- YOLO label files ---------------------------------------------------------------------


def parse_label_file(path: Path, classes: int | None) -> np.ndarray:
    """A YOLO label file's rows `[class, cx, cy, w, h]` (normalised), every line checked:
    five numbers, a whole class in 0..classes-1, a box inside the image and not empty.
    Box edges up to EDGE_SLACK past the border (annotation rounding) are clipped."""
    raw = read_bounded(path, what="a label file")
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark, as Windows editors write
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise LabelError(path, line, 0, "not UTF-8 text") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rows.append(_parse_line(path, number, line, classes))
        if len(rows) > MAX_OBJECTS:
            raise LabelError(path, number, 0, f"over {MAX_OBJECTS} objects in one image")
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _fields(line: str) -> list[tuple[int, str]]:
    """(1-based column, text) of each whitespace-separated field."""
    out, i = [], 0
    while i < len(line):
        if line[i].isspace():
            i += 1
            continue
        j = i
        while j < len(line) and not line[j].isspace():
            j += 1
        out.append((i + 1, line[i:j]))
        i = j
    return out


def _parse_line(path: Path, number: int, line: str, classes: int | None) -> list[float]:
    fields = _fields(line)
    help_text = "a label line is `class cx cy w h`: a class index and the box's centre and " \
                "size as fractions of the image (0..1)"

    def fail(column: int, problem: str):
        return LabelError(path, number, column, problem, line, help_text)
    if len(fields) != 5:
        raise fail(fields[min(5, len(fields) - 1)][0] if len(fields) > 5 else 0,
                   f"{len(fields)} columns, 5 expected" +
                   (" (polygons are segmentation labels)" if len(fields) > 5 else ""))
    values = []
    for column, field in fields:
        try:
            value = float(field)
        except ValueError:
            raise fail(column, f"`{field[:20]}` is not a number") from None
        if not math.isfinite(value):
            raise fail(column, f"`{field[:20]}` is not a finite number")
        values.append(value)
    label, cx, cy, w, h = values
    # without class names the largest index makes the classes: bounded as for .npz labels
    limit = classes if classes is not None else MAX_CLASSES
    if label != int(label) or label < 0 or label >= limit:
        known = f"0..{classes - 1}" if classes is not None else \
            f"at most {MAX_CLASSES:,} classes, from 0"
        raise fail(fields[0][0], f"class {fields[0][1]} is not a class ({known})")
    for (column, field), value in zip(fields[1:], values[1:]):
        if not 0 <= value <= 1:
            raise fail(column, f"{field} is outside 0..1 (boxes are fractions of the image)")
    if w == 0 or h == 0:
        raise fail(fields[3 if w == 0 else 4][0], "the box has zero size")
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if min(x1, y1) < -EDGE_SLACK or max(x2, y2) > 1 + EDGE_SLACK:
        raise fail(fields[1][0], "the box reaches outside the image")
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
    return [label, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def _image_files(folder: Path) -> list[Path]:
    """The images under `folder`, subfolders too (as Ultralytics finds them), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in
                  IMAGE_SUFFIXES and not any(part.startswith(".") for part in
                                             p.relative_to(folder).parts))


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder in the path becomes `labels`, the
    suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def yolo_items(images: list[Path], classes: int | None) -> list[tuple[Path, np.ndarray]]:
    """Each image with its label file's rows (none without a label file)."""
    items = []
    for image in images:
        labels = label_path(image)
        # a label that is there but no file (a folder, a FIFO, a link loop) is refused by
        # parse_label_file, not taken for an image without objects
        rows = parse_label_file(labels, classes) if os.path.lexists(labels) else \
            np.zeros((0, 5), np.float32)
        items.append((image, rows))
    return items


def _check_orphans(images: list[Path], labels_dir: Path) -> None:
    """A label file without its image is a mistake (a renamed or deleted image)."""
    if not labels_dir.is_dir():
        return
    expected = {label_path(p) for p in images}
    for label in sorted(labels_dir.rglob("*.txt")):
        if label not in expected and label != labels_dir / "classes.txt":
            raise DataError(f"{label}: a label file without an image (no "
                            f"{label.relative_to(labels_dir).with_suffix('.*')} in "
                            f"{_images_dir(labels_dir)})",
                            help="every label file names an image with the same stem")


def _images_dir(labels_dir: Path) -> Path:
    """label_path's rule backwards: the folder whose images the labels belong to."""
    parts = list(labels_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "labels":
            parts[i] = "images"
            return Path(*parts)
    return labels_dir


def _yolo_folder(root: Path) -> tuple[list[Path], list[Path] | None]:
    """The images of a YOLO-layout folder: (train, val) when it is split, else (all,
    None)."""
    for train, val in ((root / "train" / "images", root / "val" / "images"),
                       (root / "images" / "train", root / "images" / "val")):
        if train.is_dir() and val.is_dir():
            return _images_in(train), _images_in(val)
    if not (root / "images").is_dir():
        raise DataError(f"{root} has no images/ folder", help="detection data: images/NAME"
                        ".jpg with labels/NAME.txt (train/ and val/ inside, or not), an "
                        "Ultralytics data .yaml, a COCO .json, or `shapes`")
    return _images_in(root / "images"), None


def _images_in(folder: Path) -> list[Path]:
    images = _image_files(folder)
    if not images:
        raise DataError(f"{folder} has no images")
    _check_orphans(images, label_path(folder / "x.png").parent)
    return images




# ---- an Ultralytics data YAML -------------------------------------------------------------


def _yaml_images(path: Path, base: Path, value, key: str) -> list[Path]:
    """`train:` / `val:` as Ultralytics reads it: a folder, a .txt list of images, or a
    list of those; relative to the dataset's root."""
    entries = value if isinstance(value, list) else [value]
    images: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise DataError(f"{path}: `{key}` names a folder or a .txt list of images")
        where = base / entry
        if where.is_dir():
            folder = where / "images" if not _image_files(where) and \
                (where / "images").is_dir() else where
            images += _images_in(folder)
        elif where.is_file() and where.suffix == ".txt":
            images += _listed_images(where, base)
        else:
            raise DataError(f"{path}: `{key}: {entry}`: no folder or .txt file {where}")
    if not images:
        raise DataError(f"{path}: `{key}` holds no images")
    return images


def _listed_images(listing: Path, base: Path) -> list[Path]:
    """A .txt list of images, one a line: `./x` beside the list, others under the root."""
    raw = read_bounded(listing, MAX_JSON_BYTES, "a list of images")
    images = []
    for line in raw.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line:
            images.append(listing.parent / line[2:] if line.startswith("./") else
                          base / line)
    return images


def _from_yaml(path: Path) -> tuple[list[Path], list[Path], list[str]]:
    spec = read_data_yaml(path)
    names = yaml_class_names(path, spec)
    root = spec.get("path")
    if root is not None and not isinstance(root, str):
        raise DataError(f"{path}: `path` names a folder (the dataset's root)")
    base = path.parent if root is None else path.parent / root
    for key in ("train", "val"):
        if key not in spec:
            raise DataError(f"{path}: no `{key}`", help="an Ultralytics data YAML names "
                            "`train` and `val` image folders and the class `names`")
    return (_yaml_images(path, base, spec["train"], "train"),
            _yaml_images(path, base, spec["val"], "val"), names)


# ---- COCO JSON ----------------------------------------------------------------------------


def _from_coco(path: Path) -> tuple[list[tuple[Path, np.ndarray]], list[str]]:
    raw = read_bounded(path, MAX_JSON_BYTES, "a COCO annotation file")
    try:
        coco = load_json(raw)
    except json.JSONDecodeError as exc:
        raise LabelError(path, exc.lineno, exc.colno, f"not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise DataError(f"{path}: not a COCO file (nested too deeply)") from None
    except ValueError as exc:  # a number of over 4,300 digits
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: a COCO file holds lists `images`, `annotations` and "
                        "`categories`")
    try:
        categories = sorted((_whole(c["id"]), _text(c["name"])) for c in coco["categories"])
        images: dict[int, tuple[str, float, float]] = {}
        for i in coco["images"]:
            image_id = _whole(i["id"])
            if image_id in images:
                raise DataError(f"{path}: image id {image_id} twice")
            images[image_id] = (_text(i["file_name"]), _size(i["width"]),
                                _size(i["height"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: a category needs `id` and `name`, an image `id`, "
                        f"`file_name`, `width` and `height` (a size over 0) ({exc})") \
            from None
    index = {cid: i for i, (cid, _) in enumerate(categories)}
    rows: dict[int, list] = {i: [] for i in images}
    for n, ann in enumerate(coco["annotations"]):
        rows_for = _coco_annotation(path, n, ann, images, index)
        if rows_for is not None:
            rows[rows_for[0]].append(rows_for[1])
            if len(rows[rows_for[0]]) > MAX_OBJECTS:
                raise DataError(f"{path}: image {rows_for[0]} has over {MAX_OBJECTS} objects")
    folders = [path.parent, path.parent / "images", path.parent.parent,
               path.parent.parent / "images"]
    items = []
    for image_id, (name, _, _) in sorted(images.items()):
        inside = not Path(name).is_absolute() and ".." not in Path(name).parts
        file = next((d / name for d in folders if inside and (d / name).is_file()), None)
        if file is None:
            raise DataError(f"{path}: image {image_id}: no file {name} beside it (nor in "
                            "images/)")
        items.append((file, np.asarray(rows[image_id], np.float32).reshape(-1, 5)))
    return items, [name for _, name in categories]


def _coco_annotation(path: Path, n: int, ann, images: dict, index: dict):
    """(image id, normalised `[class, cx, cy, w, h]`), or None for a crowd region."""
    where = f"{path}: annotation {n}" + (f" (id {str(ann.get('id'))[:20]})"
                                         if isinstance(ann, dict) and "id" in ann else "")
    try:
        image_id, category = _whole(ann["image_id"]), _whole(ann["category_id"])
        if not isinstance(ann["bbox"], list):
            raise TypeError("bbox")
        x, y, w, h = (_number(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: needs `image_id`, `category_id` and `bbox` [x, y, w, h]") \
            from None
    if ann.get("iscrowd"):
        return None  # COCO's evaluation ignores crowd regions; they are no single object
    if image_id not in images:
        raise DataError(f"{where}: no image with id {image_id}")
    if category not in index:
        raise DataError(f"{where}: category {category} is not in `categories`")
    _, width, height = images[image_id]
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: the box has zero size")
    slack_x, slack_y = EDGE_SLACK * width, EDGE_SLACK * height
    if x < -slack_x or y < -slack_y or x + w > width + slack_x or y + h > height + slack_y:
        raise DataError(f"{where}: the box reaches outside its {width:g} x {height:g} image")
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, width), min(y + h, height)
    return image_id, [index[category], (x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                      (x2 - x1) / width, (y2 - y1) / height]


def _number(value) -> float:
    """A finite JSON number (not a bool, a string or NaN), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise ValueError(f"{str(value)[:20]!r} is not a number")
    return float(value)


def _whole(value) -> int:
    if _number(value) != int(value):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def _size(value) -> float:
    if _number(value) <= 0:
        raise ValueError(f"{value!r} is not a size")
    return float(value)


def _text(value) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"{str(value)[:20]!r} is not a name")
    return str(value)


# ---- loading ------------------------------------------------------------------------------


def load_detection_data(source: str, shape: tuple[int, int, int], *,
                        val_fraction: float = 0.2, seed: int = 0,
                        max_boxes: int | None = None, cache: str = "auto",
                        shapes_count: int = SHAPES_COUNT, max_pixels: int | None = None,
                        max_bytes: float = DATA_BYTES) -> Data:
    """Detection data at the spec's input shape (see the module's note); `max_boxes`: the
    targets' rows (default: the most objects in one image of the set); an image over
    `max_pixels` is refused from its header; `max_bytes`: the most held in memory."""
    if shape[0] not in (1, 3):
        raise DataError(f"images have 1 or 3 channels; the network takes {shape[0]}")
    if str(source) == "shapes":
        return _shapes(shape, val_fraction, seed, max_boxes, shapes_count)
    if str(source) == "digits":
        raise DataError("`digits` is classification data (a label per image)",
                        help="detection needs boxes: `--data shapes`, a folder with images/ "
                        "and labels/, an Ultralytics data .yaml or a COCO .json")
    path = Path(source)
    if not os.path.lexists(path):
        raise DataError(f"no data at {path}", help="give `shapes`, a folder with images/ and "
                        "labels/, an Ultralytics data .yaml or a COCO .json")
    presplit = True
    if path.suffix.lower() in (".yaml", ".yml") and not path.is_dir():
        train_images, val_images, classes = _from_yaml(path)
        train = yolo_items(train_images, len(classes))
        val = yolo_items(val_images, len(classes))
    elif path.suffix.lower() == ".json" and not path.is_dir():
        every, classes = _from_coco(path)
        train, val = _split_items(every, val_fraction, seed)
        presplit = False
    elif path.is_dir():
        train_images, val_images = _yolo_folder(path)
        named = class_file(path)
        count = len(named) if named is not None else None
        train = yolo_items(train_images, count)
        if val_images is None:
            train, val = _split_items(train, val_fraction, seed)
            presplit = False
        else:
            val = yolo_items(val_images, count)
        top = max((int(r[:, 0].max()) for _, r in train + val if len(r)), default=0)
        classes = named or [str(i) for i in range(top + 1)]
    else:
        raise DataError(f"{path}: not detection data", help="give `shapes`, a folder with "
                        "images/ and labels/, an Ultralytics data .yaml or a COCO .json")
    if not any(len(rows) for _, rows in train + val):
        raise DataError(f"{path}: no objects in any image", help="each image's objects are "
                        "lines `class cx cy w h` in labels/NAME.txt beside images/NAME.jpg")
    _check_images(train + val, max_pixels)
    size = _max_boxes([r for _, r in train + val], max_boxes, str(path))
    parts = (BoxFiles(train, classes, shape, size, max_pixels),
             BoxFiles(val, classes, shape, size, max_pixels))
    count = len(train) + len(val)
    need = (math.prod(shape) * 4 + size * 20) * count
    parts = hold_in_memory(parts, cache, need, max_bytes, path, f"{count:,} images at "
                           f"{' x '.join(map(str, shape))} with their boxes")
    trained, held = ({int(c) for _, rows in part for c in rows[:, 0]} for part in (train, val))
    return Data(parts[0], parts[1], str(path), presplit=presplit,
                warnings=untrained_classes(trained, held, classes, "image"))


def _check_images(items, max_pixels: int | None = None) -> None:
    for image, _ in items:
        try:
            read_header(image, max_pixels)
        except UnreadableImageError as why:
            raise DataError(f"{image}: {why}") from None
        except OSError as exc:
            raise DataError(f"{image}: {exc.strerror or exc}") from None


def _split_items(items: list, val_fraction: float, seed: int):
    train, val = _random_split(len(items), val_fraction, seed)
    return [items[i] for i in train], [items[i] for i in val]


def _random_split(count: int, val_fraction: float, seed: int):
    from .segdata import _random_split
    return _random_split(count, val_fraction, seed)


# ---- augmentation -------------------------------------------------------------------------


def detection_augmenter(config, size) -> Callable | None:
    """The spec's `augment:` for detection: `(image, target) -> (image, target)`, one
    random draw (the loop seeds it per sample)."""
    return box_augmenter([(a.name, a.args) for a in config.augment], size)


def visible_boxes(rows: torch.Tensor, size) -> torch.Tensor:
    """Rows `[class, x1, y1, x2, y2]` moved by a transform, clipped to the image (H, W);
    kept as Ultralytics' box_candidates keeps them: at least 2 pixels wide and high after
    clipping, and at least a tenth of the moved box still inside."""
    height, width = size
    clipped = rows.clone()
    clipped[:, 1::2] = rows[:, 1::2].clamp(0, width)
    clipped[:, 2::2] = rows[:, 2::2].clamp(0, height)
    w, h = clipped[:, 3] - clipped[:, 1], clipped[:, 4] - clipped[:, 2]
    whole = (rows[:, 3] - rows[:, 1]) * (rows[:, 4] - rows[:, 2])
    keep = (w >= 2) & (h >= 2) & (w * h > 0.1 * whole)
    return clipped[keep]


def box_augmenter(ops: list[tuple[str, dict]], size) -> Callable | None:
    """Image and boxes transformed together by torchvision.transforms.v2 (tv_tensors.
    BoundingBoxes): flip, crop with padding (a translation), scale, rotation (a rotated box
    becomes the box around it); colour jitter on the image. Boxes are clipped to the image
    and those mostly pushed out of it dropped (`visible_boxes`: the row becomes class -1);
    pixels brought in from outside are Ultralytics' grey."""
    from torchvision.transforms import v2
    fill = LETTERBOX_FILL
    steps = v2_transforms(ops, size, fill)
    if not steps:
        return None
    pipeline = v2.Compose(steps)

    def apply(image: torch.Tensor, target: torch.Tensor):
        from torchvision import tv_tensors
        real = target[:, 0] >= 0
        boxes = tv_tensors.BoundingBoxes(target[real, 1:], format="XYXY", clamping_mode=None,
                                         canvas_size=tuple(image.shape[-2:]))
        out = pipeline({"image": tv_tensors.Image(image), "boxes": boxes})
        rows = torch.cat([target[real, :1], out["boxes"].as_subclass(torch.Tensor)], 1)
        return out["image"].as_subclass(torch.Tensor), pad_boxes(
            visible_boxes(rows, image.shape[-2:]), len(target))
    return apply
