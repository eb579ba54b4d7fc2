"""Hostile detection data, each case once broken (a hang, a traceback, unbounded memory
or silently wrong boxes): every one is now a located DataError, at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnndsl.training.data import DataError
from cnndsl.training.detdata import load_detection_data

SHAPE = (3, 32, 32)
GOOD = "0 0.5 0.5 0.2 0.2\n"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path)


def _yolo(root: Path, labels: list[str | None]) -> Path:
    for i, text in enumerate(labels):
        _image(root / "images" / f"a{i}.png")
        if text is not None:
            (root / "labels").mkdir(parents=True, exist_ok=True)
            (root / "labels" / f"a{i}.txt").write_text(text, newline="")
    return root


def _refused(source, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_detection_data(str(source), SHAPE)


# ---- YOLO folders -------------------------------------------------------------------------


def test_class_index_without_class_names_is_bounded(tmp_path):
    # was: 10^8 made 10^8 class names (7.7 GB, 39 s); 10^9 ran out of memory
    _refused(_yolo(tmp_path, ["999999999 0.5 0.5 0.2 0.2\n", GOOD]),
             r"a0.txt:1:1: class 999999999 is not a class \(at most 100,000")


@pytest.mark.parametrize("kind", ["folder", "fifo", "loop"])
def test_label_that_is_no_regular_file_is_refused(tmp_path, kind):
    # was: taken as an image without objects, silently
    root = _yolo(tmp_path, [None, GOOD])
    label = root / "labels" / "a0.txt"
    {"folder": label.mkdir, "fifo": lambda: os.mkfifo(label),
     "loop": lambda: label.symlink_to("a0.txt")}[kind]()
    _refused(root, "a0.txt")


def test_label_with_a_byte_order_mark_reads(tmp_path):
    # was: "`\ufeff0` is not a number" for a file saved by a Windows editor
    data = load_detection_data(str(_yolo(tmp_path, ["\ufeff" + GOOD, GOOD])), SHAPE,
                               cache="memory")
    boxes = [data.train.labels, data.val.labels]
    assert sum(int((b[:, :, 0] >= 0).sum()) for b in boxes) == 2


# ---- Ultralytics data YAML ----------------------------------------------------------------

BOMB = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n"
               for a, b in zip("abcdefg", "bcdefgh"))
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB  # *h: 9^8 leaves, a few KB of text


@pytest.fixture
def dataset(tmp_path):
    _yolo(tmp_path / "ds", [GOOD, GOOD, GOOD])
    return tmp_path


@pytest.mark.parametrize("fields, match", [
    ("path: ds\nnames: [*h, y]\n", "`names:` must list the class names"),
    ("path: ds\nnames: [x]\nnc: *h\n", "`nc` is not a whole number"),
    ("path: *h\nnames: [x]\n", "`path` names a folder"),
    ("path: ds\nnames: [[a, b], c]\n", "`names:` must list the class names"),
    ("path: ds\nnames: [a, a]\n", "names the class 'a' twice"),
])
def test_yaml_fields_of_the_wrong_type_are_refused(dataset, fields, match):
    # was: an alias bomb in `names`/`nc`/`path` made a 225 MB name, message or path (one
    # level more: out of memory); nested or repeated names were taken as they came
    path = dataset / "data.yaml"
    path.write_text(BOMB + fields + "train: images\nval: images\n")
    _refused(path, match)


def test_deeply_nested_yaml_is_refused(dataset):
    # was: RecursionError, an internal error
    path = dataset / "data.yaml"
    path.write_text("names: " + "[" * 50_000 + "]" * 50_000 + "\ntrain: a\nval: a\n")
    _refused(path, "nested too deeply")


def test_listed_image_that_is_a_fifo_is_refused_at_once(dataset):
    # was: Pillow's open() blocked on the FIFO for ever
    os.mkfifo(dataset / "ds" / "f.png")
    (dataset / "ds" / "list.txt").write_text("./images/a0.png\n./f.png\n")
    path = dataset / "data.yaml"
    path.write_text("path: ds\nnames: [x]\ntrain: list.txt\nval: images\n")
    _refused(path, r"f.png: unreadable image \(.*not a regular file")


# ---- COCO JSON ----------------------------------------------------------------------------


def _coco(tmp_path: Path, change) -> Path:
    for name in ("a.png", "b.png"):
        _image(tmp_path / name)
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                       {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9]}],
            "categories": [{"id": 1, "name": "x"}]}
    change(coco)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco) if isinstance(coco, dict) else coco)
    return path


def _set(section, index, key, value):
    return lambda coco: coco[section][index].__setitem__(key, value)


@pytest.mark.parametrize("change, match", [
    (_set("categories", 0, "id", float("inf")), "category.*`id`"),
    (_set("annotations", 0, "image_id", float("inf")), "annotation 0 .*needs"),
    (_set("annotations", 0, "bbox", [float("nan")] * 4), "annotation 0 .*needs"),
    (_set("annotations", 0, "bbox", "1234"), "annotation 0 .*needs"),
    (_set("annotations", 0, "bbox", [1, 1, 9]), "annotation 0 .*needs"),
    (_set("annotations", 0, "category_id", True), "annotation 0 .*needs"),
    (_set("images", 0, "width", float("nan")), "`width`"),
    (_set("images", 0, "width", 0), "`width`"),
    (_set("images", 1, "id", 1), "image id 1 twice"),
])
def test_coco_values_of_the_wrong_kind_are_refused(tmp_path, change, match):
    # was: OverflowError (an infinite id), NaN boxes taken (NaN targets), the string
    # "1234" read as the box [1, 2, 3, 4], a repeated image id a confusing "no image 2"
    _refused(_coco(tmp_path, change), match)


@pytest.mark.parametrize("text, match", [
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ('{"images": [{"id": ' + "9" * 5000 + "}]}", "not valid JSON"),
])
def test_coco_json_python_cannot_read_is_refused(tmp_path, text, match):
    # was: RecursionError and ValueError (int digits limit), internal errors
    path = tmp_path / "coco.json"
    path.write_text(text)
    _refused(path, match)
