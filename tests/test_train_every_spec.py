"""Every spec in specs/ and examples/ goes through one training step on generated data, or
is refused with a located error that says why: never an internal error.

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
    params = {} if "data_classes" in text else {"classes": CLASSES}
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


def generated_data(tmp_path: Path, shape, classes: int = CLASSES) -> Path:
    """Two images a class: one for training, one for validation."""
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    n = 2 * classes
    np.savez(path, x=rng.random((n, *shape), dtype=np.float32), y=np.arange(n) % classes)
    return path


@pytest.mark.parametrize("path", SPEC_FILES, ids=[f"{p.parent.name}/{p.name}"
                                                  for p in SPEC_FILES])
def test_one_training_step_or_a_located_refusal(path, tmp_path):
    model, _ = smallest(path)
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 3:
        pytest.fail(f"{path.name}: no single image input")  # none in the zoo today
    picks = "data_classes" in path.read_text()  # digits 0-4 or 5-9: give all ten
    classes = 10 if picks else CLASSES
    data = generated_data(tmp_path, model.inputs[0].shape, classes)
    try:
        result = model.fit(str(data), epochs=1, batch=classes, progress=False,
                           optimizer="sgd", device="cpu")
    except CnnError as exc:  # a refusal: located in the spec, saying why
        (d,) = exc.diagnostics
        assert d.code == "E-train" and d.span is not None, d
        assert d.span.file.endswith(path.name)
        assert "one score per class" in d.message, d.message  # a segmentation network
        assert "flatten -> linear(classes)" in d.help
        return
    assert result["epochs"] == 1
    assert len(result["history"]) == 1
    assert np.isfinite(result["history"][0]["train_loss"])
    assert result["history"][0]["train_samples"] == (5 if picks else CLASSES)
