"""Hostile inputs to predict, inspect, run and the ONNX metadata: each is a clear error or a
skipped file, never an internal error, a hang or an allocation the size of a bad header."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from cnndsl.deploy.describe import from_onnx_metadata
from cnndsl.diagnostics import CnnError
from conftest import run_cli

TWO_CHANNELS = """
network two() {
    input image: 2 x 8 x 8
    conv(4, 3) -> flatten -> linear(3)
}
"""


def bomb_png(path: Path) -> None:
    """A PNG whose header claims 60,000 x 60,000 pixels (a few bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def grey_png(path: Path) -> None:
    from PIL import Image
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(path)


def test_a_decompression_bomb_is_skipped_and_named_not_an_internal_error(tmp_path):
    from cnndsl.deploy.predict import decode_images
    bomb_png(tmp_path / "bomb.png")
    grey_png(tmp_path / "ok.png")
    skipped: list = []
    data = decode_images([tmp_path / "bomb.png", tmp_path / "ok.png"], (1, 8, 8), skipped)
    assert data.images.shape == (1, 1, 8, 8)
    assert len(skipped) == 1 and skipped[0][0] == str(tmp_path / "bomb.png")
    assert skipped[0][1].startswith("image too large (60,000 x 60,000 pixels; the limit is "
                                    "67,108,864 pixels")


def test_predict_of_a_network_images_cannot_feed_is_a_data_error(tmp_path):
    (tmp_path / "two.cnn").write_text(TWO_CHANNELS)
    grey_png(tmp_path / "ok.png")
    for args in (["predict", "two.cnn", "ok.png"], ["run", "two.cnn", "--input", "ok.png"],
                 ["inspect", "two.cnn", "ok.png", "--layer", "conv1", "-o", "x.png"]):
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 1, (args, done.stderr)
        assert "images cannot feed an input of 2 x 8 x 8" in done.stderr, args
        assert "internal error" not in done.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_predict_and_inspect_refuse_a_fifo_instead_of_blocking_on_it(tmp_path):
    from cnndsl.deploy.predict import image_files
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(CnnError, match="not a regular file"):
        image_files([str(fifo)])
    done = run_cli("inspect", str(Path(__file__).parent.parent / "examples/train_digits.cnn"),
                   str(fifo), "--layer", "conv1", "-o", str(tmp_path / "x.png"))
    assert done.returncode == 1 and "is not an image file" in done.stderr, done.stderr


def test_onnx_metadata_cannot_override_the_models_fixed_input_shape():
    info = from_onnx_metadata({"cnndsl.shape": "[1, 100000, 100000]"}, [None, 1, 16, 16])
    assert info.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="not N x C x H x W"):
        from_onnx_metadata({"cnndsl.shape": "[1, 100000, 100000]"}, ["N", "C", "H", "W"])
    info = from_onnx_metadata({"cnndsl.shape": "[3, 32, 32]"}, ["N", "C", "H", "W"])
    assert info.shape == (3, 32, 32)


@pytest.mark.parametrize("mean, std", [("[0.5]", "[0]"), ("[NaN]", "[Infinity]"),
                                       ("[0.1, 0.2]", "[0.1, 0.2]"), ("[0.5]", "[1e400]")])
def test_onnx_metadata_normalisation_that_cannot_be_applied_is_ignored(mean, std):
    info = from_onnx_metadata({"cnndsl.mean": mean, "cnndsl.std": std}, [None, 1, 16, 16])
    assert info.mean is None and info.std is None
    ok = from_onnx_metadata({"cnndsl.mean": "[0.5]", "cnndsl.std": "[0.25]"},
                            [None, 1, 16, 16])
    assert ok.mean == [0.5] and ok.std == [0.25]


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    import cnndsl
    folder = tmp_path_factory.mktemp("importer")
    spec = folder / "small.cnn"
    spec.write_text("network small() {\n    input image: 1 x 8 x 8\n"
                    "    conv(2, 3) -> relu -> flatten -> linear(3)\n}\n")
    cnndsl.load(spec).to_onnx(folder / "small.onnx")
    return folder / "small.onnx"


def test_a_failed_import_keeps_the_weights_file_that_was_there(digits_onnx, tmp_path,
                                                                   monkeypatch, capsys):
    from cnndsl import atomic
    from cnndsl.cli import main
    weights = tmp_path / "net.safetensors"
    weights.write_bytes(b"an earlier import's weights")
    (tmp_path / "taken.cnn").mkdir()
    assert main(["import", str(digits_onnx), "-o", str(tmp_path / "taken.cnn"),
                 "--weights-out", str(weights)]) == 1
    assert weights.read_bytes() == b"an earlier import's weights"
    # the spec's write failing after the weights are written (a full disk) keeps both too
    spec = tmp_path / "net.cnn"
    spec.write_text("an earlier spec")
    real = atomic.write_bytes

    def full_disk(target, data):
        if Path(target) == spec:
            raise OSError(28, "No space left on device", str(target))
        real(target, data)
    monkeypatch.setattr(atomic, "write_bytes", full_disk)
    assert main(["import", str(digits_onnx), "-o", str(spec)]) == 1
    assert weights.read_bytes() == b"an earlier import's weights"
    assert spec.read_text() == "an earlier spec"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.cnn", "net.safetensors",
                                                          "taken.cnn"]
    assert "No space left" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_import_of_a_fifo_is_refused_instead_of_blocking(tmp_path, capsys):
    from cnndsl.cli import main
    os.mkfifo(tmp_path / "model.onnx")
    assert main(["import", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "x.cnn")]) == 1
    assert "not a regular file" in capsys.readouterr().err


def test_import_of_a_python_function_that_gives_no_module_is_an_error(tmp_path, capsys):
    from cnndsl.cli import main
    for source, words in (("python:os:getcwd", "returns a torch.nn.Module; it gave str"),
                          ("python:os:sep", "is not a function")):
        assert main(["import", source, "-o", str(tmp_path / "x.cnn")]) == 1
        err = capsys.readouterr().err
        assert words in err and "internal error" not in err, err
    assert not list(tmp_path.iterdir())


ZERO_WEIGHTED = """
network n() {
    input image: 1 x 8 x 8
    f = image -> conv(2, 3, padding=1) -> relu -> flatten
    fc = f -> linear(10)
    emb = f -> linear(5)
    output OUTPUTS
}
train n() {
    data: digits
    epochs: 1
    loss: LOSS
}
"""


@pytest.mark.parametrize("outputs, loss, code, words", [
    ("fc, emb", "cross_entropy(fc) + 0 * cross_entropy(emb)", 0, "best epoch 1"),
    ("fc, emb", "cross_entropy(fc) + 0 * mse(emb)", 0, "best epoch 1"),
    ("emb, fc", "0 * cross_entropy(emb) + cross_entropy(fc)", 1,
     "the data has 10 classes but `emb` gives 5 outputs")])
def test_an_output_weighted_zero_is_trained_without_its_loss(tmp_path, outputs, loss, code,
                                                               words):
    """`+ 0 * loss(out)` trains without `out` (its class count is not the data's); the
    first term's output is the one measured, so its count must fit even at weight 0."""
    (tmp_path / "n.cnn").write_text(ZERO_WEIGHTED.replace("OUTPUTS", outputs)
                                    .replace("LOSS", loss))
    done = run_cli("train", "n.cnn", "--out", "runs", cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert words in done.stderr + done.stdout
    assert "internal error" not in done.stderr


def test_predict_with_a_spec_of_several_outputs_uses_the_first(tmp_path):
    (tmp_path / "two.cnn").write_text(
        "network two() {\n    input image: 1 x 8 x 8\n"
        "    f = image -> conv(2, 3) -> flatten\n    a = f -> linear(3)\n"
        "    b = f -> linear(4)\n    output a, b\n}\n")
    grey_png(tmp_path / "ok.png")
    done = run_cli("predict", "two.cnn", "ok.png", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import json
    result = json.loads(done.stdout)["predictions"][0]
    assert sorted(t["index"] for t in result["top"]) == [0, 1, 2]  # `a`'s 3 classes


def test_quantising_with_data_that_has_no_validation_images_writes_nothing(tmp_path):
    from PIL import Image
    (tmp_path / "images" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "only" / "0.png")
    (tmp_path / "n.cnn").write_text("network n() {\n    input image: 1 x 8 x 8\n"
                                    "    conv(2, 3) -> flatten -> linear(1)\n}\n")
    done = run_cli("compile", "n.cnn", "--to", "onnx", "-o", "q.onnx", "--quantize", "int8",
                   "--calibrate", "images", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "no validation images" in done.stderr and "internal error" not in done.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_keeping_an_output_twice_is_an_error_not_a_renamed_copy(tmp_path):
    import cnndsl
    spec = tmp_path / "two.cnn"
    spec.write_text("network two() {\n    input image: 1 x 8 x 8\n"
                    "    f = image -> conv(2, 3) -> flatten\n    a = f -> linear(3)\n"
                    "    b = f -> linear(4)\n    output a, b\n}\n")
    with pytest.raises(CnnError, match="the output `a` is named twice"):
        cnndsl.load(spec).keep_outputs(("a", "a"))
    assert cnndsl.load(spec).keep_outputs(("b", "a")).ir.output_names == ("b", "a")
