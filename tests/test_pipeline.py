"""The data pipeline: folders read lazily (in DataLoader workers) train exactly as the same
folder held in memory; unreadable files are skipped as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import cnndsl
from cnndsl.training.data import Dataset, ImageFiles, load_data

torch.set_num_threads(1)

SPEC = """
network small(classes: int = 3) {
    input image: 3 x 12 x 12
    conv(4, 3, padding=same) -> batchnorm -> relu -> maxpool(2)
    flatten -> dropout(0.2) -> linear(classes)
}
train small() {
    optimizer: sgd(lr=0.05, momentum=0.9)
    epochs: 2
    batch: 8
    augment: random_crop(padding=1) -> flip
}
"""


def class_folder(root: Path, classes=("a", "b", "c"), per_class=10, size=14) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_a_streamed_folder_is_the_folder_in_memory(tmp_path):
    folder = class_folder(tmp_path / "images")
    lazy = load_data(folder, (3, 12, 12), cache="none")
    eager = load_data(folder, (3, 12, 12), cache="memory")
    assert isinstance(lazy.train, ImageFiles) and isinstance(eager.train, Dataset)
    assert lazy.skipped == eager.skipped and len(lazy.skipped) == 1
    assert torch.equal(lazy.train.labels, eager.train.labels)
    for i in (0, len(eager.train) - 1):
        assert torch.equal(lazy.train[i][0], eager.train.images[i])
    auto = load_data(folder, (3, 12, 12))  # small: held in memory
    assert isinstance(auto.train, Dataset)


def test_streamed_and_in_memory_training_end_with_the_same_weights(tmp_path):
    folder = class_folder(tmp_path / "images")
    model = cnndsl.loads(SPEC)
    runs = {}
    for cache, workers in (("memory", 0), ("none", 0), ("none", 2)):
        result = model.fit(str(folder), progress=False, cache=cache, workers=workers)
        runs[cache, workers] = result["module"].state_dict()
    reference = runs["memory", 0]
    for key, state in runs.items():
        for name, tensor in reference.items():
            assert torch.equal(tensor, state[name]), (key, name)


def test_a_bad_file_is_skipped_whatever_a_plugin_in_pillows_open_raises(tmp_path, monkeypatch):
    """Ultralytics replaces `PIL.Image.open` with one that, on a file Pillow cannot identify,
    imports an optional HEIF plugin: a ModuleNotFoundError where it is missing. A reader in
    the same process must still skip the file (this failed CI when test_yolov8 ran first)."""
    import PIL.Image
    original = PIL.Image.open

    def patched(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except PIL.Image.UnidentifiedImageError:  # as Ultralytics' patch, no `from`
            raise ModuleNotFoundError("No module named 'pi_heif'")  # noqa: B904

    monkeypatch.setattr(PIL.Image, "open", patched)
    folder = class_folder(tmp_path / "images")
    for cache in ("none", "memory"):
        data = load_data(folder, (3, 12, 12), cache=cache)
        assert [Path(f).name for f, _ in data.skipped] == ["broken.png"]
        # the file's own failure, not the plugin's (segmentation predict printed "unreadable
        # image (No module named 'pi_heif')" after test_yolov8 had imported Ultralytics)
        assert data.skipped[0][1] == "not an image"
