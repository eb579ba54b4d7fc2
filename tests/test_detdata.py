"""Detection data (cnndsl/training/detdata.py): the generated shapes set, YOLO folders,
Ultralytics data YAMLs and COCO JSON, letterboxing, box-aware augmentation, and each bad
label located by file, line and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnndsl.training.data import DataError
from cnndsl.training.detdata import (
    LETTERBOX_FILL,
    SHAPES_CLASSES,
    LabelError,
    box_augmenter,
    generate_shapes,
    load_detection_data,
)


def _image(path, width, height, value=200):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def _label(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def shapes():
    return load_detection_data("shapes", (3, 32, 32), val_fraction=0.25, seed=0,
                               shapes_count=16)


def test_shapes_samples_are_images_and_padded_boxes(shapes):
    assert (len(shapes.train), len(shapes.val)) == (12, 4)
    assert shapes.train.classes == SHAPES_CLASSES == ["square", "disc", "triangle"]
    image, target = shapes.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert target.shape == (4, 5) and target.dtype == torch.float32
    targets = torch.cat([shapes.train.labels, shapes.val.labels])
    real = targets[..., 0] >= 0
    assert real.sum(1).min() >= 2 and real.sum(1).max() <= 4
    boxes = targets[real]
    assert set(boxes[:, 0].tolist()) == {0.0, 1.0, 2.0}
    assert (boxes[:, 1:] >= 0).all() and (boxes[:, 1:] <= 32).all()
    assert (boxes[:, 3] > boxes[:, 1]).all() and (boxes[:, 4] > boxes[:, 2]).all()
    assert (targets[~real] == torch.tensor([-1.0, 0, 0, 0, 0])).all()


def test_shapes_are_deterministic_and_apart():
    """The same seed gives the same images and boxes; shapes never overlap, so each box
    is one whole object."""
    images, boxes = generate_shapes(3, 48, 48, seed=1)
    again_images, again_boxes = generate_shapes(3, 48, 48, seed=1)
    assert np.array_equal(images, again_images)
    assert all(np.array_equal(a, b) for a, b in zip(boxes, again_boxes))
    for rows in boxes:
        assert 2 <= len(rows) <= 4
        for _, x1, y1, x2, y2 in rows:  # boxes do not overlap (shapes are apart)
            others = [r for r in rows if not (r[1] == x1 and r[2] == y1)]
            assert all(x2 <= o[1] or o[3] <= x1 or y2 <= o[2] or o[4] <= y1 for o in others)


def test_yolo_folder_letterboxes_images_and_boxes(tmp_path):
    # a 40 x 20 image in a 32 x 32 input: scale 0.8 to 32 x 16, 8 rows of grey above
    _image(tmp_path / "images" / "a.png", 40, 20)
    _label(tmp_path / "labels" / "a.txt", "1 0.5 0.5 0.5 0.5\n\n0 0.25 0.25 0.1 0.1\n")
    _image(tmp_path / "images" / "b.png", 20, 20)  # no label file: no objects
    _image(tmp_path / "images" / "c.png", 20, 20)
    _label(tmp_path / "labels" / "c.txt", "")  # empty: no objects
    data = load_detection_data(str(tmp_path), (3, 32, 32), val_fraction=0.34, seed=0)
    assert data.train.classes == ["0", "1"]
    every = {name: sample for part in (data.train, data.val)
             for name, sample in zip(part.names, (part[i] for i in range(len(part))))}
    assert sorted(every) == ["a", "b", "c"]
    image, target = every["a"]
    assert target.shape == (2, 5)
    assert torch.allclose(target[0], torch.tensor([1.0, 8, 12, 24, 20]))
    assert torch.allclose(target[1], torch.tensor([0.0, 6.4, 11.2, 9.6, 12.8]))
    assert torch.allclose(image[:, :8], torch.tensor(LETTERBOX_FILL))
    assert torch.allclose(image[:, 24:], torch.tensor(LETTERBOX_FILL))
    assert torch.allclose(image[:, 8:24], torch.tensor(200 / 255))
    assert (every["b"][1][:, 0] == -1).all() and (every["c"][1][:, 0] == -1).all()


def test_yolo_folder_split_and_class_names(tmp_path):
    for part in ("train", "val"):
        _image(tmp_path / part / "images" / f"{part}.png", 16, 16)
        _label(tmp_path / part / "labels" / f"{part}.txt", "2 0.5 0.5 1 1\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    data = load_detection_data(str(tmp_path), (1, 16, 16), val_fraction=0.2, seed=0)
    assert data.presplit and data.val.names == ["val"] and data.train.names == ["train"]
    assert data.val.classes == ["cat", "dog", "bird"]
    image, target = data.val[0]
    assert image.shape == (1, 16, 16)
    assert target.tolist() == [[2.0, 0, 0, 16, 16]]


def test_ultralytics_yaml(tmp_path):
    root = tmp_path / "set"
    _image(root / "images" / "train" / "t.jpg", 64, 32)
    _label(root / "labels" / "train" / "t.txt", "1 0.5 0.5 0.25 0.5\n")
    _image(root / "images" / "val" / "v.jpg", 32, 32)
    _label(root / "labels" / "val" / "v.txt", "0 0.5 0.5 0.5 0.5\n")
    spec = tmp_path / "cfg" / "data.yaml"
    spec.parent.mkdir()
    spec.write_text("path: ../set\ntrain: images/train\nval: images/val\n"
                    "names:\n  0: person\n  1: car\ndownload: print('never run')\n")
    data = load_detection_data(str(spec), (3, 32, 32), val_fraction=0.2, seed=0)
    assert data.train.classes == ["person", "car"]
    assert torch.allclose(data.train[0][1], torch.tensor([[1.0, 12, 12, 20, 20]]))
    assert torch.allclose(data.val[0][1], torch.tensor([[0.0, 8, 8, 24, 24]]))


def test_coco_json(tmp_path):
    _image(tmp_path / "images" / "x.png", 20, 10)
    _image(tmp_path / "images" / "y.png", 10, 10)
    coco = {"images": [{"id": 7, "file_name": "x.png", "width": 20, "height": 10},
                       {"id": 9, "file_name": "y.png", "width": 10, "height": 10}],
            "categories": [{"id": 3, "name": "b"}, {"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 1, 4, 5]},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 10],
                             "iscrowd": 1}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    data = load_detection_data(str(tmp_path / "instances.json"), (3, 20, 20),
                               val_fraction=0.5, seed=0)
    assert data.train.classes == ["a", "b"]
    samples = {n: s for part in (data.train, data.val) for n, s in
               zip(part.names, (part[i] for i in range(len(part))))}
    # 20 x 10 fits 20 x 20 at scale 1, 5 rows of grey above
    assert torch.allclose(samples["x"][1], torch.tensor([[1.0, 2, 6, 6, 11]]))
    assert (samples["y"][1][:, 0] == -1).all()


BAD = [
    ("2 0.5 0.5 0.2 0.2\n", 1, 1, "class 2 is not a class (0..1)"),
    ("0 0.5 0.5 0.2 0.2\n1 1.5 0.5 0.2 0.2\n", 2, 3, "1.5 is outside 0..1"),
    ("0 0.5 0.5 0 0.2\n", 1, 11, "the box has zero size"),
    ("0 0.5 0.5 0.2\n", 1, 0, "4 columns, 5 expected"),
    ("0 0.5 0.5 0.2 0.2 0.3 0.3\n", 1, 19, "7 columns, 5 expected"),
    ("0 0.5 abc 0.2 0.2\n", 1, 7, "`abc` is not a number"),
    ("0.5 0.5 0.5 0.2 0.2\n", 1, 1, "class 0.5 is not a class"),
    ("0 0.95 0.5 0.2 0.2\n", 1, 3, "the box reaches outside the image"),
]


@pytest.mark.parametrize(("text", "line", "column", "problem"), BAD)
def test_bad_label_is_located(tmp_path, text, line, column, problem):
    _image(tmp_path / "images" / "a.png", 8, 8)
    label = tmp_path / "labels" / "a.txt"
    _label(label, text)
    (tmp_path / "classes.txt").write_text("x\ny\n")
    with pytest.raises(LabelError) as caught:
        load_detection_data(str(tmp_path), (3, 8, 8), val_fraction=0.2, seed=0)
    error = caught.value
    assert (error.path, error.line, error.column) == (str(label), line, column)
    assert problem in error.problem
    assert error.message.startswith(f"{label}:{line}" + (f":{column}: " if column else ": "))
    assert "\n" not in error.message


def test_label_without_image(tmp_path):
    _image(tmp_path / "images" / "a.png", 8, 8)
    _label(tmp_path / "labels" / "b.txt", "0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"labels/b\.txt: a label file without an image "
                       r"\(no b\.\* in .*/images\)"):
        load_detection_data(str(tmp_path), (3, 8, 8), val_fraction=0.2, seed=0)


def test_too_many_objects_refused(tmp_path):
    _image(tmp_path / "images" / "a.png", 8, 8)
    _label(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n" * 1001)
    with pytest.raises(LabelError, match=r"a\.txt:1001: over 1000 objects"):
        load_detection_data(str(tmp_path), (3, 8, 8), val_fraction=0.2, seed=0)


def test_augmenter_moves_boxes_with_the_image():
    image = torch.rand(3, 16, 24)
    target = torch.tensor([[1.0, 2, 3, 10, 9], [0.0, 0, 0, 0.5, 16], [-1.0, 0, 0, 0, 0]])
    flip = box_augmenter([("flip", {"p": 1.0})], (16, 24))
    flipped, boxes = flip(image, target)
    assert torch.equal(flipped, image.flip(-1))
    # the half-pixel-wide box is dropped; the other mirrored; the rows keep their count
    assert boxes.tolist() == [[1.0, 14, 3, 22, 9], [-1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]]


def test_augmenter_is_seeded_and_keeps_boxes_inside():
    ops = [("scale", {"low": 0.5, "high": 1.5}), ("random_crop", {"padding": 4}),
           ("color_jitter", {"brightness": 0.3, "contrast": 0.0, "saturation": 0.0,
                             "hue": 0.0})]
    augment = box_augmenter(ops, (32, 32))
    images, boxes = generate_shapes(6, 32, 32, seed=2)
    from cnndsl.training.detdata import pad_boxes
    for pixels, rows in zip(images, boxes):
        image, target = torch.from_numpy(pixels).float() / 255, pad_boxes(
            torch.from_numpy(rows), 4)
        torch.manual_seed(5)
        first = augment(image, target)
        torch.manual_seed(5)
        second = augment(image, target)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        out = first[1]
        real = out[:, 0] >= 0
        assert out.shape == (4, 5) and (out[~real, 0] == -1).all()
        assert (out[real, 1:] >= 0).all() and (out[real, 1:] <= 32).all()
        assert (out[real, 3] - out[real, 1] >= 1).all()


def test_nested_folders_and_max_boxes(tmp_path):
    _image(tmp_path / "images" / "day" / "a.png", 10, 10)
    _label(tmp_path / "labels" / "day" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    _image(tmp_path / "images" / "night" / "b.png", 10, 10)
    data = load_detection_data(str(tmp_path), (3, 10, 10), val_fraction=0.5, seed=0,
                               max_boxes=3)
    samples = dict(zip(data.train.names + data.val.names,
                       [data.train[0][1], data.val[0][1]]))
    assert samples["a"].tolist() == [[0.0, 4, 4, 6, 6]] + [[-1.0, 0, 0, 0, 0]] * 2
    assert data.part("all").labels.shape == (2, 3, 5)
    _label(tmp_path / "labels" / "night" / "b.txt", "0 0.5 0.5 0.2 0.2\n" * 4)
    with pytest.raises(DataError, match="an image has 4 objects, over max_boxes=3"):
        load_detection_data(str(tmp_path), (3, 10, 10), val_fraction=0.5, seed=0,
                            max_boxes=3)


def test_no_objects_anywhere_is_refused(tmp_path):
    _image(tmp_path / "images" / "a.png", 8, 8)
    with pytest.raises(DataError, match="no objects in any image"):
        load_detection_data(str(tmp_path), (3, 8, 8), val_fraction=0.2, seed=0)


def test_bad_yaml_and_coco_are_located(tmp_path):
    spec = tmp_path / "data.yaml"
    spec.write_text("train: images\nval: [images\nnames: [a]\n")
    with pytest.raises(LabelError) as caught:
        load_detection_data(str(spec), (3, 8, 8), val_fraction=0.2, seed=0)
    assert (caught.value.path, caught.value.line) == (str(spec), 3)
    spec.write_text("train: images\nval: images\nnames: {a: x, 0: y}\n")
    with pytest.raises(DataError, match="`names` must number the classes 0, 1, ... in order"):
        load_detection_data(str(spec), (3, 8, 8), val_fraction=0.2, seed=0)
    _image(tmp_path / "a.png", 8, 8)
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
                        {"id": 6, "image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 2]}]}))
    with pytest.raises(DataError, match=r"coco\.json: annotation 1 \(id 6\): category 4 "
                       r"is not in `categories`"):
        load_detection_data(str(coco), (3, 8, 8), val_fraction=0.2, seed=0)


def test_letterbox_and_label_paths_match_ultralytics():
    """An Ultralytics dataset reads as Ultralytics reads it: the same label file for an
    image, the same placement of the scaled image in the input."""
    augment = pytest.importorskip("ultralytics.data.augment")
    from ultralytics.data.utils import img2label_paths

    from cnndsl.training.detdata import label_path, letterbox
    paths = ["/d/images/train/a.jpg", "/d/images/x/images/b.png", "/d/imgs/c.jpg",
             "/d/images/day/sub/e.jpeg"]
    assert [str(label_path(Path(p))) for p in paths] == \
        img2label_paths(paths)
    for h, w in ((20, 70), (70, 20), (33, 33), (17, 50), (64, 96)):
        theirs = augment.LetterBox((32, 48), auto=False, center=True)(
            image=np.full((h, w, 3), 255, np.uint8))
        ours, _, _ = letterbox(torch.ones(3, h, w), (32, 48))
        assert np.array_equal(theirs[..., 0] > 200, ours[0].numpy() > 0.9), (h, w)


def test_streamed_files_give_the_samples_held_in_memory(tmp_path):
    _image(tmp_path / "images" / "a.png", 24, 12, value=90)
    _label(tmp_path / "labels" / "a.txt", "1 0.5 0.5 0.5 0.5\n")
    _image(tmp_path / "images" / "b.png", 12, 24, value=30)
    _label(tmp_path / "labels" / "b.txt", "0 0.25 0.5 0.5 1\n1 0.75 0.5 0.5 0.5\n")
    held = load_detection_data(str(tmp_path), (3, 16, 16), val_fraction=0.5, seed=0)
    streamed = load_detection_data(str(tmp_path), (3, 16, 16), val_fraction=0.5, seed=0,
                                   cache="none")
    assert type(streamed.train).__name__ == "BoxFiles" and hasattr(held.train, "images")
    for a, b in ((held.train, streamed.train), (held.val, streamed.val)):
        assert a.names == b.names
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])
    both = streamed.part("all")
    assert len(both) == 2 and both[1][1].shape == (2, 5)


def test_shapes_too_large_for_memory_is_refused():
    with pytest.raises(DataError, match=r"shapes: 64 images at 3 x 4096 x 4096 need 12\.00 GiB"):
        load_detection_data("shapes", (3, 4096, 4096), val_fraction=0.2, seed=0)


def test_ultralytics_own_coco8_yaml_reads_unchanged(tmp_path):
    """Ultralytics' coco8.yaml as it ships (its `download:` never run), beside a tiny
    folder in its layout."""
    import importlib.util
    found = importlib.util.find_spec("ultralytics")
    if found is None:
        pytest.skip("ultralytics is not installed")
    shipped = Path(found.submodule_search_locations[0]) / "cfg" / "datasets" / "coco8.yaml"
    (tmp_path / "coco8.yaml").write_bytes(shipped.read_bytes())
    root = tmp_path / "coco8"
    _image(root / "images" / "train" / "a.jpg", 32, 32)
    _label(root / "labels" / "train" / "a.txt", "79 0.5 0.5 0.5 0.5\n0 0.25 0.25 0.5 0.5\n")
    _image(root / "images" / "val" / "b.jpg", 32, 32)
    _label(root / "labels" / "val" / "b.txt", "80 0.5 0.5 0.5 0.5\n")
    with pytest.raises(LabelError, match=r"b\.txt:1:1: class 80 is not a class \(0\.\.79\)"):
        load_detection_data(str(tmp_path / "coco8.yaml"), (3, 32, 32), val_fraction=0.2,
                            seed=0)
    _label(root / "labels" / "val" / "b.txt", "2 0.5 0.5 0.5 0.5\n")
    data = load_detection_data(str(tmp_path / "coco8.yaml"), (3, 32, 32), val_fraction=0.2,
                               seed=0)
    assert len(data.train.classes) == 80 and data.train.classes[79] == "toothbrush"
    assert data.train[0][1].tolist() == [[79.0, 8, 8, 24, 24], [0.0, 0, 0, 16, 16]]
    assert data.val[0][1].tolist() == [[2.0, 8, 8, 24, 24], [-1.0, 0, 0, 0, 0]]


def test_boxes_mostly_pushed_out_are_dropped():
    from cnndsl.training.detdata import visible_boxes
    moved = torch.tensor([[0.0, -8, 2, 2, 12],     # a fifth inside: kept, clipped
                          [1.0, -19, 2, 1, 12],    # a twentieth inside: dropped
                          [2.0, 10, 14, 14, 15.5],  # 1.5 pixels high: dropped
                          [0.0, 18, 4, 30, 20]])   # a sixth inside, 2 wide: kept
    assert visible_boxes(moved, (16, 20)).tolist() == [[0.0, 0, 2, 2, 12],
                                                        [0.0, 18, 4, 20, 16]]
