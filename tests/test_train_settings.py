"""Training settings checked with the network before anything runs (issue 29, item 3), each
refusal located at the argument that is wrong, in the spec or on the command line; and the
checks only the data or the machine allow, made before the first batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cnndsl
from cnndsl.diagnostics import CnnError
from conftest import run_cli

SPEC = """network tiny(classes: int = 2) {
    input image: %s
    conv(4, 3, padding=same) -> relu
    flatten
    fc: linear(classes)
}

train tiny() {
    data: "d.npz"
    epochs: 1
    batch: 4
    %s
}
"""


def _spec(tmp_path: Path, setting: str, image: str = "1 x 8 x 8") -> Path:
    path = tmp_path / "s.cnn"
    path.write_text(SPEC % (image, setting))
    return path


def _errors(path: Path, **overrides) -> list:
    with pytest.raises(CnnError) as caught:
        cnndsl.load(path, train_overrides=overrides or None)
    return caught.value.diagnostics


SETTING_LINE = 12


@pytest.mark.parametrize("setting, written, message", [
    ("augment: flip(p=5)", "5", "`flip` argument `p`: must be a probability in [0, 1], found 5"),
    ("augment: color_jitter(hue=5)", "5", "argument `hue`: must be in [0, 0.5]"),
    ("augment: color_jitter(brightness=-1)", "-1", "argument `brightness`: must be 0 or more"),
    ("augment: rotate(1e9)", "1e9", "argument `degrees`: must be at most 360"),
    ("augment: scale(low=0, high=1)", "0", "argument `low`: must be a positive number"),
    ("augment: random_crop(padding=2.5)", "2.5", "argument `padding`"),
    ("augment: random_crop(padding=100000)", "padding=100000",
     "random_crop: padding 100,000 is over the image's side (8): a crop could hold no image"),
    ("augment: scale(low=2, high=1)", "low=2", "scale: low 2 is above high 1"),
    ("augment: normalize(mean=(0.5, 0.5, 0.5), std=0.5)", "mean=(0.5, 0.5, 0.5)",
     "normalize: 3 values of `mean` for an input of 1 channel"),
    ("augment: normalize(mean=0.5, std=1e-9)", "1e-9",
     "a standard deviation must be at least 0.001"),
    ("augment: normalize(mean=0.5, std=0.5) -> normalize(mean=0.1, std=0.2)",
     "normalize(mean=0.1, std=0.2)", "`normalize` is given twice"),
    ("loss: cross_entropy(weights=(0, 0))", "weights=(0, 0)",
     "every class weight is 0: no sample would count in the loss"),
    ("optimizer: sgd(lr=1e999)", "1e999", "number out of range"),
    ("freeze: (conv1, fc)\n    unfreeze_after: 1", "unfreeze_after: 1",
     "`freeze` leaves nothing to train in 1 epochs"),
])
def test_a_setting_the_run_would_fail_on_is_refused_at_its_argument(tmp_path, setting,
                                                                    written, message):
    path = _spec(tmp_path, setting)
    [error] = _errors(path)
    assert message in error.message
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if written in text)
    assert (error.span.file, error.span.line) == (str(path), line)
    assert lines[line - 1][error.span.column - 1:].startswith(written)


def test_a_network_without_weights_has_nothing_to_train(tmp_path):
    path = tmp_path / "s.cnn"
    path.write_text("network n() {\n    input image: 1 x 8 x 8\n    flatten\n}\n"
                    "train n() {\n    optimizer: sgd\n}\n")
    [error] = _errors(path)
    assert error.message == "the network has no weights to train"
    assert error.span.line == 6


def test_a_command_line_value_is_checked_as_the_spec_is(tmp_path):
    path = _spec(tmp_path, "augment: flip")
    result = run_cli("check", str(path), "--set", "optimizer.lr=nan", "--set",
                     "loss.weights=0", cwd=tmp_path)
    assert result.returncode == 1
    assert "error[E-train]: --set optimizer.lr=nan: must be a positive number" in result.stderr
    assert "--> <command line>:1:" in result.stderr and "Traceback" not in result.stderr


def test_check_shows_the_argument_with_a_caret(tmp_path):
    path = _spec(tmp_path, "augment: flip -> random_crop(padding=100000)")
    result = run_cli("check", path.name, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == ("error[E-train]: random_crop: padding 100,000 is over the image's side "
                        "(8): a crop could hold no image")
    assert lines[1] == f"  --> s.cnn:{SETTING_LINE}:34"
    assert lines[3].endswith("augment: flip -> random_crop(padding=100000)")
    assert lines[4].endswith(" " * 33 + "^" * 14)


def test_a_set_key_given_twice_is_refused_where_it_is_repeated(tmp_path):
    path = _spec(tmp_path, "augment: flip")
    result = run_cli("check", path.name, "--set", "epochs=2", "epochs=3", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "error[E-arg]: --set epochs is given twice"
    second = len("cnndsl check s.cnn --set epochs=2 --set epochs=") + 1
    assert lines[1] == f" --> <command line>:1:{second}"


def test_a_set_value_with_a_newline_is_shown_on_one_line(tmp_path):
    path = _spec(tmp_path, "augment: flip")
    result = run_cli("check", path.name, "--set", "epochs=2\n", "--set", "loss=nl\nl",
                     cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "error[E-train]: --set loss=nl\\nl: unknown loss `nl\\nl`"
    shown = "cnndsl check s.cnn --set epochs=2\\n --set loss=nl\\nl"
    assert lines[1] == f" --> <command line>:1:{shown.index('nl') + 1}"
    assert lines[3] == "1 | cnndsl check s.cnn --set epochs=2\\n --set loss=nl\\nl"
    assert lines[4].index("^") == lines[3].index("nl\\nl")


# ---- before the first batch --------------------------------------------------------------


@pytest.fixture
def one_sample(tmp_path: Path) -> Path:
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 8, 8), np.uint8), y=np.zeros(1, int))
    return _spec(tmp_path, "val_split: 0.2")


def test_a_split_with_an_empty_part_is_refused_in_json_too(one_sample, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", one_sample.name, "--out", str(out), "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    [error] = json.loads(result.stdout)["errors"]
    assert error["message"].startswith("`val_split: 0.2` leaves the validation part of ")
    assert error["message"].endswith("empty (1 train / 0 val of 1 samples)")
    assert (error["file"], error["line"]) == ("s.cnn", SETTING_LINE)
    assert not out.exists()


def test_fp16_without_cuda_is_refused_before_the_first_batch(one_sample, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 8, 8), np.uint8), y=np.arange(8) % 2)
    out = tmp_path / "run"
    result = run_cli("train", str(one_sample), "--device", "cpu", "--set", "amp=fp16",
                     "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "error[E-train]: `amp: fp16` needs a CUDA device; this run is on cpu" in result.stderr
    assert "--> <command line>:1:" in result.stderr
    assert not out.exists()


def test_a_loss_that_becomes_nan_in_epoch_1_promises_no_checkpoint(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).integers(0, 255, (16, 8, 8)),
             y=np.arange(16) % 2)
    path = _spec(tmp_path, "optimizer: sgd")
    result = run_cli("train", path.name, "--lr", "1e30", "--out", str(tmp_path / "run"),
                     cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "the loss became" in result.stderr and "at epoch 1" in result.stderr
    assert "checkpoint" not in result.stderr and "keeps the state" not in result.stderr


def test_a_class_the_split_leaves_without_a_training_sample_is_refused(tmp_path, capsys):
    """A class of one sample goes to validation whole at `val_split` > 0.5: the network
    could never learn it. Refused before the first batch, at the setting, naming the class."""
    from cnndsl.cli import main
    np.savez(tmp_path / "d.npz", x=np.zeros((11, 8, 8), np.uint8), y=np.array([0] * 10 + [1]),
             classes=np.array(["cat", "dog"]))
    spec = _spec(tmp_path, "val_split: 0.6")
    out = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert ("error[E-data]: `val_split: 0.6` leaves class `dog` without a training sample "
            "(its 1 sample is in the validation part)") in err, err
    assert f"--> {spec}:{SETTING_LINE}:" in err and "val_split" in err.split("help:")[1]
    assert err.count("\n1 error\n") == 1 and not out.exists()
    assert main(["train", str(spec), "--out", str(out), "--set", "val_split=0.4"]) == 0


@pytest.mark.parametrize("classes", [None, ["cat"]])
def test_data_of_one_class_is_refused_for_a_classifier(tmp_path, capsys, classes):
    """One class (a folder of one class, labels all 0) cannot train a softmax classifier:
    every answer is right. It was an internal error in the metrics (num_classes=1)."""
    from cnndsl.cli import main
    extra = {"classes": np.array(classes)} if classes else {}
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 8, 8), np.uint8), y=np.zeros(8, np.int64),
             **extra)
    spec = _spec(tmp_path, "")
    out = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out), "--set", "classes=1"]) == 1
    err = capsys.readouterr().err
    assert "error[E-data]: the data has 1 class: a classifier needs 2 or more" in err, err
    assert f"--> {spec}:9:5" in err and "internal error" not in err
    assert not out.exists()


def test_masks_of_one_class_are_refused_for_segmentation(tmp_path, capsys):
    """Masks of one class (all background): an internal error in the metrics as well."""
    from cnndsl.cli import main
    np.savez(tmp_path / "seg.npz", x=np.zeros((8, 1, 8, 8), np.float32),
             masks=np.zeros((8, 8, 8), np.int64))
    spec = tmp_path / "seg.cnn"
    spec.write_text('network seg(classes: int = 1) {\n    input image: 1 x 8 x 8\n'
                    '    conv(4, 3, padding=same) -> relu -> conv(classes, 1)\n}\n\n'
                    'train seg() {\n    task: segment\n    data: "seg.npz"\n'
                    '    epochs: 1\n    batch: 4\n}\n')
    out = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error[E-data]: the data has 1 class: a segmentation network needs 2 or more" \
        in err, err
    assert f"--> {spec}:8:5" in err and not out.exists()


ONE_VALUE_NORM = """network pooled(classes: int = 2) {
    input image: 1 x 8 x 8
    x = image -> conv(4, 3, padding=same) -> relu
    context = x -> global_avgpool -> conv(4, 1, bias=false) -> pool_bn: batchnorm -> relu
              -> upsample(like=image)
    scores = add(x, context) -> conv(classes, 1)
    output scores
}

train pooled() {
    task: segment
    data: "seg.npz"
    epochs: 1
    batch: 4
    val_split: 0.2
}
"""


@pytest.fixture
def one_value_norm(tmp_path: Path) -> Path:
    """DeepLabV3's ASPP pooling branch in small: a batch norm over a 1 x 1 map, on 6
    samples of which 5 train, so that `batch: 4` leaves a last batch of one."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "seg.npz", x=rng.random((6, 1, 8, 8), np.float32),
             masks=(rng.random((6, 8, 8)) > 0.5).astype(np.uint8))
    path = tmp_path / "pooled.cnn"
    path.write_text(ONE_VALUE_NORM)
    return path


def test_a_last_batch_of_one_joins_the_one_before_for_a_norm_over_one_value(
        one_value_norm, tmp_path, capsys):
    """PyTorch refuses to train a batch norm on one value per channel ("Expected more than
    1 value per channel"): the last batch of one is merged into the one before, as a last
    batch too small for the processes is, so every sample still trains once an epoch."""
    from cnndsl.cli import main
    out = tmp_path / "run"
    assert main(["train", str(one_value_norm), "--out", str(out), "--json"]) == 0, \
        capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["history"]) == 1


def test_a_batch_of_one_for_a_norm_over_one_value_is_refused_at_batch(one_value_norm, capsys):
    from cnndsl.cli import main
    out = one_value_norm.parent / "run"
    assert main(["train", str(one_value_norm), "--set", "batch=1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert ("error[E-train]: batch 1 gives each step 1 sample, but `pool_bn` normalises one "
            "value per channel (a 1 x 1 map) and needs 2 or more to train") in err, err
    assert "--> <command line>:1:" in err and "internal error" not in err
    assert "pooled.cnn:4:" in err and "pool_bn: batchnorm" in err.split("pooled.cnn:4:")[1]
    assert not out.exists()


def test_only_a_norm_over_one_value_changes_the_batches():
    from cnndsl.training.loop import global_batches
    assert global_batches(list(range(5)), 4, 1) == [[0, 1, 2, 3], [4]]
    assert global_batches(list(range(5)), 4, 1, least=2) == [[0, 1, 2, 3, 4]]
    assert global_batches(list(range(6)), 4, 1, least=2) == [[0, 1, 2, 3], [4, 5]]
    assert global_batches(list(range(11)), 4, 2, least=2) == [[0, 1, 2, 3], [4, 5, 6, 7, 8,
                                                                              9, 10]]


def test_a_class_only_in_validation_masks_or_boxes_is_warned_about(tmp_path):
    """Segmentation and detection: a class that only validation images hold is said (the
    other classes still train: a warning, not a refusal), by name."""
    from PIL import Image

    from cnndsl.training.detdata import load_detection_data
    from cnndsl.training.segdata import _random_split, load_masks
    _, (held, *_) = _random_split(6, 0.2, 0)  # the one validation sample
    masks = np.zeros((6, 8, 8), np.uint8)
    masks[:, :4] = 1
    masks[held, 0, 0] = 2
    np.savez(tmp_path / "s.npz", x=np.zeros((6, 1, 8, 8), np.float32), masks=masks,
             classes=np.array(["sky", "road", "deer"]))
    data = load_masks(tmp_path / "s.npz", (1, 8, 8))
    assert data.warnings == [
        "class `deer` appears only in the validation part: no training mask holds it, so "
        "the network cannot learn it (add such masks, or change `val_split`)"]
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    for i in range(6):
        Image.new("L", (8, 8)).save(tmp_path / "d" / "images" / f"{i}.png")
        (tmp_path / "d" / "labels" / f"{i}.txt").write_text(
            f"{2 if i == held else 0} 0.5 0.5 0.5 0.5\n1 0.2 0.2 0.1 0.1\n")
    (tmp_path / "d" / "classes.txt").write_text("cat\ndog\nowl\n")
    data = load_detection_data(str(tmp_path / "d"), (1, 8, 8))
    assert [len(data.train), len(data.val)] == [5, 1]
    assert data.warnings[0].startswith("class `owl` appears only in the validation part: "
                                       "no training image holds it")
    masks[held, 0, 0] = 1  # every class trains: nothing said
    np.savez(tmp_path / "s.npz", x=np.zeros((6, 1, 8, 8), np.float32), masks=masks)
    assert load_masks(tmp_path / "s.npz", (1, 8, 8)).warnings == []
