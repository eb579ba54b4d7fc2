"""`train`, `check` and the commands that do not train: --set overrides, --resume's folder,
a `train` definition that does not fit the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

TINY = """network tiny(classes: int = 10) {
    input image: 1 x 8 x 8
    conv(8, 3, padding=same) -> relu -> maxpool(2)
    flatten -> linear(classes)
}
train tiny() {
    data: digits
    loss: %s
    epochs: 1
    batch: 100
}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY % "cross_entropy")
    return spec


def test_resume_without_out_writes_into_the_folder_it_resumes(tiny, tmp_path):
    run = tmp_path / "vgg"
    result = run_cli("train", str(tiny), "--out", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_cli("train", str(tiny), "--resume", str(run), "--epochs", "2", "--json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["out"] == str(run)
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2]
    assert not (tmp_path / "runs").exists()  # nothing went to the default runs/train


def _caret(stderr: str) -> tuple[str, str]:
    """The quoted command line and its caret line under `<command line>`."""
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if "--> <command line>:1:" in line)
    return lines[at + 2], lines[at + 3]


@pytest.mark.parametrize("value, message", [
    ("dicey", "error[E-train]: --set loss=dicey: unknown loss `dicey`"),
    ("dice", "error[E-train]: `dice` is a segmentation loss; this network classifies"),
    ("nll", "error[E-train]: `nll` takes log-probabilities"),
])
@pytest.mark.parametrize("command", ["check", "train"])
def test_a_bad_set_value_is_located_on_the_command_line(tiny, command, value, message):
    result = run_cli(command, str(tiny), "--set", f"loss={value}")
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "<defaults>" not in result.stderr
    quoted, caret = _caret(result.stderr)
    assert quoted.endswith(f"cnndsl {command} {tiny} --set loss={value}")
    assert caret.rstrip().endswith("^" * len(value))
    assert quoted.index(f"loss={value}") + len("loss=") == caret.index("^")


def test_a_set_loss_is_what_the_check_sees(tmp_path):
    """The spec's own loss does not fit; the one given with --set does, and wins."""
    spec = tmp_path / "nll.cnn"
    spec.write_text(TINY % "nll")
    assert run_cli("check", str(spec)).returncode == 1
    result = run_cli("check", str(spec), "--set", "loss=cross_entropy")
    assert result.returncode == 0, result.stderr
    result = run_cli("train", str(spec), "--set", "loss=cross_entropy", "--out",
                     str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "cross_entropy(label_smoothing=0)" in result.stderr


@pytest.mark.parametrize("loss, error, where", [
    ("nll", "error[E-train]: `nll` takes log-probabilities", "8:5"),
    ("cross_entropy\n    freeze: (conv9)", "error[E-train]: `freeze`: the network has no "
     "layer or block `conv9`", "9:14"),
])
def test_a_train_definition_that_does_not_fit_stops_check_only(tmp_path, loss, error, where):
    spec = tmp_path / "nll.cnn"
    spec.write_text(TINY % loss)
    result = run_cli("check", str(spec))
    assert result.returncode == 1
    assert error in result.stderr
    assert f"--> {spec}:{where}" in result.stderr
    assert "note: an error of the `train tiny` definition" in result.stderr
    for command in (["compile", str(spec), "--to", "onnx", "-o", str(tmp_path / "m.onnx")],
                    ["compile", str(spec), "--to", "torch", "-o", str(tmp_path / "m.py")],
                    ["render", str(spec), "-o", str(tmp_path / "m.dot")],
                    ["summary", str(spec)],
                    ["run", str(spec)]):
        result = run_cli(*command)
        assert result.returncode == 0, (command, result.stderr)
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert (tmp_path / "m.dot").read_text().startswith("digraph")


def _test_folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((8, 8)) * 255).astype("uint8")).save(
                root / f"c{c}" / f"{i}.png")
    return root


def test_eval_scores_a_held_out_folder_whole(tiny, tmp_path):
    test = _test_folder(tmp_path / "testset")
    run = tmp_path / "run"
    result = run_cli("train", str(tiny), "--set", "classes=3", "--data", str(test), "--out",
                     str(run))
    assert result.returncode == 0, result.stderr
    weights = str(run / "best.safetensors")
    result = run_cli("eval", str(tiny), "--set", "classes=3", "--data", str(test),
                     "--weights", weights)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"tiny on {test}: every image, 30 images (--split all, the default for a folder "
        "without train/ and val/)")
    result = run_cli("eval", str(tiny), "--set", "classes=3", "--data", str(test),
                     "--weights", weights, "--json")
    report = json.loads(result.stdout)
    assert report["samples"] == 30 and report["split"] == "all"
    assert sum(map(sum, report["confusion_matrix"])) == 30
    result = run_cli("eval", str(tiny), "--set", "classes=3", "--data", str(test),
                     "--weights", weights, "--split", "val")
    assert result.stdout.splitlines()[0] == (
        f"tiny on {test}: the validation split, 6 images (--split val)")
    result = run_cli("eval", str(tiny), "--set", "classes=3", "--data", str(test),
                     "--weights", weights, "--split", "train", "--json")
    assert json.loads(result.stdout)["samples"] == 24


def test_eval_on_digits_says_its_default(tiny, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", str(tiny), "--out", str(run)).returncode == 0
    result = run_cli("eval", str(tiny), "--weights", str(run / "best.safetensors"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "tiny on digits: the validation split, 359 images (--split val, the default for "
        "digits)")
