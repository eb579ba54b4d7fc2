"""Every spec in specs/ and examples/ goes through one training step on generated data of
its task (labels for a classifier, masks for a segmentation network), or is refused with
a located error that says why: never an internal error.

Each network runs at the smallest square input it checks at (its `resolution` or `size`
parameter, else its input line rewritten): the step exercises the same layers, losses
and heads as at full size, in a fraction of the time. The VGGs keep their 4096-wide
classifier whatever the input (adaptive pooling to 7 x 7), so they stay the slowest
(about 1 GB of weights and gradients each); they are kept because their classifier is
what such a step would break on.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.diagnostics import CnnError
from conftest import ROOT

torch.set_num_threads(2)
SPEC_FILES = sorted((ROOT / "specs").glob("*.cnn")) + sorted(
    p for p in (ROOT / "examples").glob("*.cnn") if "network " in p.read_text()
    or "train " in p.read_text())
SIZES = (16, 32, 64, 75, 96, 128, 160, 224, 299, 572)
INPUT = re.compile(r"^(\s*input \w+: \d+ x )(\d+) x (\d+)", re.M)
CLASSES = 2  # two images a class: one to train on, one to validate


def smallest(path: Path) -> tuple[cnndsl.Model, int]:
    """The spec at the smallest square input it checks at, with CLASSES classes (unless
    its `train` definition picks classes of the data)."""
    text = path.read_text()
    params = {"classes": CLASSES} if re.search(r"network \w+\([^{]*\bclasses: int", text) and \
        "data_classes" not in text else {}
    size_param = next((p for p in ("resolution", "size") if re.search(
        rf"\b{p}: int", text)), None)
    match = INPUT.search(text)
    full = int(match.group(2)) if match else 10**9
    last = None
    for size in [s for s in SIZES if s <= full] or [full]:
        if size_param:
            source, extra = text, {size_param: size}
        elif match:
            source, extra = INPUT.sub(rf"\g<1>{size} x {size}", text, count=1), {}
        else:
            source, extra = text, {}
        try:
            model = cnndsl.loads(source, name=str(path), imports_from=path.parent,
                                 **params, **extra)
            return model, size
        except CnnError as exc:
            last = exc
            if not (size_param or match):
                raise
    raise last


def generated_data(tmp_path: Path, shape, classes: int = CLASSES, task: str = "classify"
                   ) -> Path:
    """Two images a class: one for training, one for validation; with a label each, or a
    mask (every class in each) for segmentation."""
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    n = 2 * classes
    if task == "detect":
        return yolo_folder(tmp_path / "boxes", shape, classes)
    x = rng.random((n, *shape), dtype=np.float32)
    if task == "segment":
        masks = (np.arange(shape[1] * shape[2]).reshape(shape[1:]) % classes).astype(np.uint8)
        np.savez(path, x=x, masks=np.stack([np.roll(masks, i) for i in range(n)]))
    else:
        np.savez(path, x=x, y=np.arange(n) % classes)
    return path


def yolo_folder(root: Path, shape, classes: int) -> Path:
    """A YOLO folder: four images a class, one box each (`class cx cy w h`, normalised)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(4 * classes):
        pixels = rng.integers(0, 255, (shape[1], shape[2], shape[0]), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if shape[0] == 1 else pixels).save(
            root / "images" / f"{i}.png")
        (root / "labels" / f"{i}.txt").write_text(f"{i % classes} 0.5 0.5 0.4 0.3\n")
    return root


# specs that cannot train, and the located refusal each gets
REFUSED = {
    # the course's fixed Sobel filter: one map of edges, its valid convolution smaller than
    # the image: not a network to train
    "sobel.cnn": "the output's maps are 14 x 14 but the masks are 16 x 16 (the input's size)",
    # the paper's U-Net: valid convolutions give maps smaller than the image and its masks
    "unet_paper.cnn": "the output's maps are 36 x 36 but the masks are 224 x 224 (the "
    "input's size)",
    # a detector's raw head outputs (anchors x classes, anchors x 4, ...)
    "retinanet_resnet50_fpn.cnn": "the network gives 207 x 2: neither one score per class "
    "nor a score map",
    "fcos_resnet50_fpn.cnn": "the network gives 23 x 2: neither one score per class nor a "
    "score map",
}


@pytest.mark.parametrize("path", SPEC_FILES, ids=[f"{p.parent.name}/{p.name}"
                                                  for p in SPEC_FILES])
def test_one_training_step_or_a_located_refusal(path, tmp_path):
    model, _ = smallest(path)
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 3:
        pytest.fail(f"{path.name}: no single image input")  # none in the zoo today
    picks = "data_classes" in path.read_text()  # digits 0-4 or 5-9: give all ten
    classes = 10 if picks else CLASSES
    try:
        task = model.train_config().task
        data = generated_data(tmp_path, model.inputs[0].shape, classes, task)
        # segmentation: one batch (a batch of one sample breaks batch norm over the 1 x 1
        # maps of DeepLabV3's and LR-ASPP's pooling branches: see the closing note)
        result = model.fit(str(data), epochs=1, batch=2 * classes if task == "segment" else
                           classes, progress=False,
                           optimizer="sgd", device="cpu")
    except CnnError as exc:  # a refusal: located in the spec, saying why
        (d,) = exc.diagnostics
        assert d.code == "E-train" and d.span is not None, d
        assert d.span.file.endswith(path.name)
        assert REFUSED.get(path.name) == d.message, d.message
        return
    assert path.name not in REFUSED
    assert result["epochs"] == 1
    assert len(result["history"]) == 1
    assert np.isfinite(result["history"][0]["train_loss"])
    trained = result["history"][0]["train_samples"]
    if task == "segment":  # masks are split at random, not by class
        assert 1 <= trained < 2 * classes
    elif task == "detect":
        assert 1 <= trained < 4 * classes
    else:
        assert trained == (5 if picks else CLASSES)
