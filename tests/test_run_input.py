"""`run --input` takes images (a file or a folder) preprocessed as the spec's training did,
warns about arrays that do not look like training's images, and says why it cannot read
an input in its own words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnndsl
from conftest import run_cli

SPEC = """network grey(classes: int = 4) {
    input image: 1 x 12 x 12
    conv(4, 3) -> relu -> global_avgpool -> flatten -> linear(classes)
}
train grey() {
    augment: flip -> normalize(mean=0.5, std=0.25)
}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The spec, its ONNX model, and a folder of three RGB images of another size."""
    root = tmp_path_factory.mktemp("run_input")
    spec = root / "grey.cnn"
    spec.write_text(SPEC)
    onnx = root / "grey.onnx"
    assert run_cli("compile", str(spec), "--to", "onnx", "-o", str(onnx)).returncode == 0
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for where in ["a.png", "b.jpg", "sub/c.png"]:
        Image.fromarray((rng.random((20, 16, 3)) * 255).astype("uint8")).save(folder / where)
    (folder / "notes.txt").write_text("not an image")
    return spec, onnx, folder


def _expected(spec: Path, folder: Path, files: list[str], normalize: bool) -> np.ndarray:
    """The model's outputs on the images as training reads them, computed apart from run."""
    from cnndsl.training.data import _decode
    images = _decode([(folder / f, 0) for f in files], ["0"], (1, 12, 12), []).images
    if normalize:
        images = (images - 0.5) / 0.25
    model = cnndsl.load(spec)
    session = model.onnx_session("cpu")
    (out,) = session.run(images.numpy())
    return out


def test_a_folder_of_images_runs_with_the_training_preprocessing(setup, tmp_path):
    spec, _, folder = setup
    out = tmp_path / "out.npy"
    result = run_cli("run", str(spec), "--input", str(folder), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"input: 3 images from {folder}, normalised as the spec's training did" \
        in result.stderr
    assert result.stdout.splitlines()[0].startswith("output linear1: 3 x 4")
    expected = _expected(spec, folder, ["a.png", "b.jpg", "sub/c.png"], normalize=True)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


def test_one_image_runs_through_an_onnx_file(setup, tmp_path):
    spec, onnx, folder = setup
    out = tmp_path / "out.npy"
    result = run_cli("run", str(onnx), "--input", str(folder / "b.jpg"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"input: 1 image from {folder / 'b.jpg'}\n" in result.stderr
    # an .onnx file carries no training preprocessing: the images go in as 0..1
    np.testing.assert_allclose(np.load(out), _expected(spec, folder, ["b.jpg"], False),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype, scale, warning", [
    ("uint8", 255, "holds uint8 values (0..{top}); the model takes float32, and training "
     "fed it images in 0..1: divide by 255 first"),
    ("float32", 255, "holds values up to {top:g}; training fed the model images in 0..1: "
     "divide by 255 first"),
    ("float32", 1, None),
])
def test_an_array_unlike_training_images_gets_a_warning(setup, tmp_path, dtype, scale,
                                                        warning):
    _, onnx, _ = setup
    array = (np.random.default_rng(0).random((2, 1, 12, 12)) * scale).astype(dtype)
    path = tmp_path / "x.npy"
    np.save(path, array)
    result = run_cli("run", str(onnx), "--input", str(path))
    assert result.returncode == 0, result.stderr
    if warning is None:
        assert "warning" not in result.stderr
    else:
        top = array.max() if dtype == "uint8" else float(array.max())
        assert f"warning: {path} " + warning.format(top=top) in result.stderr


def test_a_normalising_spec_takes_arrays_beyond_0_1_without_a_warning(setup, tmp_path):
    spec, _, _ = setup
    path = tmp_path / "x.npy"
    np.save(path, np.full((1, 1, 12, 12), 2.0, dtype=np.float32))  # (1 - 0.5) / 0.25
    result = run_cli("run", str(spec), "--input", str(path))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("name, content, message, code", [
    ("new.npy", b"hello", "cannot read {path}: it is neither an .npy array nor an image",
     "E-io"),
    ("new", b"hello", "cannot read {path}: not an image", "E-io"),
    ("new.png", b"not a png", "cannot read {path}: not an image", "E-io"),
    ("empty", None, "{path} holds no images", "E-io"),
    ("missing.png", "absent", "cannot read {path}: No such file or directory", "E-run"),
])
def test_an_unreadable_input_is_one_line_in_the_tools_words(setup, tmp_path, name, content,
                                                            message, code):
    _, onnx, _ = setup
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    result = run_cli("run", str(onnx), "--input", str(path), "--json")
    assert result.returncode == 1
    errors = json.loads(result.stdout)["errors"]
    assert len(errors) == 1 and errors[0]["code"] == code
    assert errors[0]["message"].startswith(message.format(path=path))
    assert "NUMPY" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
