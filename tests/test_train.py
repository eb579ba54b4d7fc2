"""Training from a spec: real runs on the bundled digits, metrics recomputed with
scikit-learn, resume equal to an uninterrupted run, Ctrl-C, divergence, bad data, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.training.loop import Ranks, TrainingStopped, global_batches, shard
from conftest import ROOT, run_cli

torch.set_num_threads(2)
EXAMPLE = ROOT / "examples" / "train_digits.cnn"
PNG = b"\x89PNG\r\n\x1a\n"

TINY = """
network tiny(classes: int = 10) {
    input image: 1 x 8 x 8
    conv(8, 3, padding=same) -> batchnorm -> relu -> maxpool(2)
    flatten -> dropout(0.1) -> linear(classes)
}
train tiny() {
    data: digits
    optimizer: sgd(lr=0.05, momentum=0.9)
    epochs: 2
    batch: 50
    augment: random_crop(padding=1)
}
"""


def train_size(shape) -> int:
    from cnndsl.training.data import load_data
    data = load_data("digits", shape, val_fraction=0.2, seed=0)
    assert len(data.train.labels) + len(data.val.labels) == 1_797
    return len(data.train.labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The example trained once, through the CLI, as a newcomer would."""
    out = tmp_path_factory.mktemp("digits")
    result = run_cli("train", str(EXAMPLE), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True  # b22: one document, "ok" like every other command's
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_example_reaches_97_percent_on_digits(trained):
    summary = json.loads((trained / "summary.json").read_text())
    best = summary["history"][summary["best_epoch"] - 1]
    assert best["val_accuracy"] >= 0.97, best
    history = json.loads((trained / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 13))
    for record in history:
        assert set(record) >= {"train_loss", "val_loss", "val_accuracy", "precision", "recall",
                               "f1", "lr", "seconds"}
        assert record["train_samples"] == train_size((1, 16, 16))  # each once per epoch
    assert history[-1]["lr"] < history[1]["lr"]  # cosine decay after the warm-up
    for name in ("best.safetensors", "last.safetensors", "state.pt"):
        assert (trained / name).stat().st_size > 0
    for name in ("curves.png", "confusion.png"):
        data = (trained / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


def test_eval_metrics_equal_scikit_learns(trained):
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from cnndsl.training.data import load_data
    result = run_cli("eval", str(EXAMPLE), "--weights", str(trained / "best.safetensors"),
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report.pop("ok") is True
    # recomputed independently: our own forward pass, scikit-learn's formulas
    model = cnndsl.load(EXAMPLE)
    module = model.to_torch().eval()
    from safetensors.torch import load_file
    module.load_state_dict(load_file(str(trained / "best.safetensors")))
    data = load_data("digits", (1, 16, 16), val_fraction=0.2, seed=0)
    with torch.no_grad():
        predicted = module(data.val.images).argmax(1).numpy()
    truth = data.val.labels.numpy()
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    p, r, f, support = precision_recall_fscore_support(truth, predicted, average="macro",
                                                       zero_division=0)
    assert (report["precision"], report["recall"], report["f1"]) == pytest.approx(
        (p, r, f), abs=1e-6)
    assert report["confusion_matrix"] == confusion_matrix(truth, predicted).tolist()
    per_class = precision_recall_fscore_support(truth, predicted, zero_division=0)
    for i, row in enumerate(report["per_class"]):
        assert row["class"] == str(i)
        assert row["f1"] == pytest.approx(per_class[2][i], abs=1e-6)
        assert row["support"] == per_class[3][i]
    assert report["top5"] >= report["accuracy"]


def test_a_trained_checkpoint_goes_straight_to_onnx(trained, tmp_path):
    from cnndsl.runtime import create_session
    out = tmp_path / "digits.onnx"
    result = run_cli("compile", str(EXAMPLE), "--to", "onnx", "-o", str(out), "--weights",
                     str(trained / "best.safetensors"))
    assert result.returncode == 0, result.stderr
    model = cnndsl.load(EXAMPLE)
    module = model.to_torch().eval()
    from safetensors.torch import load_file
    module.load_state_dict(load_file(str(trained / "best.safetensors")))
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        expected = module(x).numpy()
    actual = create_session(str(out), "cpu").run(x.numpy())[0]
    assert np.abs(actual - expected).max() < 1e-4


def test_lenet5_reaches_97_percent_on_digits_at_32x32(tmp_path):
    result = run_cli("train", "specs/lenet5.cnn", "--data", "digits", "--set", "classes=10",
                     "--epochs", "12", "--lr", "0.003", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert max(r["val_accuracy"] for r in summary["history"]) >= 0.97


def _weights(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_resume_ends_with_the_same_weights(tmp_path):
    model = cnndsl.loads(TINY)
    whole = model.fit(out=tmp_path / "whole", progress=False, epochs=3)
    with pytest.raises(TrainingStopped):
        model.fit(out=tmp_path / "cut", progress=False, epochs=3,
                  **{"_stop_at": (1, 7)})
    resumed = model.fit(out=tmp_path / "cut", progress=False, epochs=3,
                        resume=tmp_path / "cut")
    a, b = _weights(whole["module"]), _weights(resumed["module"])
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())[-1]["val_loss"] == \
        json.loads((tmp_path / "cut" / "metrics.json").read_text())[-1]["val_loss"]


def test_ctrl_c_saves_a_resumable_state(tmp_path):
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY.replace("epochs: 2", "epochs: 200"))
    out = tmp_path / "run"
    env = {**os.environ, "NO_COLOR": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cnndsl", "train", str(spec), "--out",
                                str(out)], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert f"--resume {out}" in err and "Traceback" not in err
    state = torch.load(out / "state.pt", weights_only=True)
    done = json.loads(state["progress"])["epoch"]
    assert done >= 1
    result = run_cli("train", str(spec), "--out", str(out), "--resume", str(out), "--epochs",
                     str(done + 1), "--json")  # one more epoch is enough to show it goes on
    assert result.returncode == 0, result.stderr
    assert f"resuming {out} at epoch {done + 1}" in result.stderr
    assert json.loads(result.stdout)["history"][-1]["epoch"] == done + 1


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    out = tmp_path / "run"
    assert run_cli("train", str(spec), "--out", str(out), "--epochs", "1").returncode == 0
    good = (out / "best.safetensors").read_bytes()
    result = run_cli("train", str(spec), "--out", str(out), "--lr", "1e30", "--exist-ok")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error[E-train]: the loss became" in result.stderr
    assert "at epoch 1, step" in result.stderr
    assert "no epoch finished, so nothing was saved" in result.stderr
    assert (out / "best.safetensors").read_bytes() == good


def test_settings_are_checked_before_anything_runs(tmp_path):
    spec = tmp_path / "bad.cnn"
    spec.write_text(TINY.replace("sgd(lr=0.05, momentum=0.9)", "sgd(lr=-1, momentun=0.9)")
                    .replace("epochs: 2", "epochs: 0"))
    result = run_cli("check", str(spec))
    assert result.returncode == 1
    err = result.stderr.replace(str(tmp_path) + "/", "")
    assert "unknown argument `momentun` for `sgd`\n --> bad.cnn:9:27" in err
    assert "did you mean `momentum`?" in err
    assert "`epochs`: must be at least 1, found 0\n  --> bad.cnn:10:13" in err


def test_cli_overrides_every_setting(tmp_path):
    model = cnndsl.loads(TINY)
    summary = model.fit(progress=False, epochs=1, batch=100, lr=0.01, seed=3,
                        **{"optimizer.momentum": 0.5, "schedule": "cosine"})
    assert summary["epochs"] == 1
    result = run_cli("train", str(EXAMPLE), "--out", str(tmp_path), "--set",
                     "optimizer.betas=1", "--epochs", "1")
    assert result.returncode == 1 and "betas" in result.stderr


def _image_folder(root: Path, classes=("cat", "dog"), per_class=6, size=12) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


BAD_DATA_SPEC = TINY.replace("data: digits\n", "").replace("1 x 8 x 8", "3 x 8 x 8")


@pytest.mark.parametrize("case", ["missing", "empty_class", "class_count", "corrupt"])
def test_bad_data_is_a_clear_error(case, tmp_path):
    spec = tmp_path / "net.cnn"
    spec.write_text(BAD_DATA_SPEC)
    folder = _image_folder(tmp_path / "images")
    if case == "missing":
        shutil.rmtree(folder)
    elif case == "empty_class":
        (folder / "bird").mkdir()
    elif case == "corrupt":
        (folder / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
        (folder / "dog" / "notes.txt").write_text("not an image")
    args = ["train", str(spec), "--data", str(folder), "--out", str(tmp_path / "run"),
            "--epochs", "1"]
    if case != "class_count":
        args += ["--set", "classes=2"]
    result = run_cli(*args)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    if case == "corrupt":  # skipped and counted, the run goes on
        assert result.returncode == 0, result.stderr
        assert "skipped 2 unreadable file(s)" in result.stderr
    elif case == "class_count":
        assert result.returncode == 1
        assert "the data has 2 classes but the network gives 10 outputs" in result.stderr
        assert "--set classes=2" in result.stderr and "net.cnn:5:" in result.stderr
    else:
        assert result.returncode == 1 and "error[E-data]" in result.stderr
        if case == "empty_class":
            assert "bird" in result.stderr


def test_global_batches_cover_every_sample_once():
    cases = [(1437, 64, 1), (1437, 64, 2), (11, 5, 2), (10, 4, 4), (9, 4, 4), (7, 7, 3)]
    for n, size, world in cases:
        order = list(range(n))
        batches = global_batches(order, size, world)
        assert sorted(i for b in batches for i in b) == order
        for batch in batches:
            parts = [shard(batch, Ranks(r, world)) for r in range(world)]
            assert all(parts) and sorted(i for p in parts for i in p) == sorted(batch)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (
    Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed")
def test_two_processes_train_as_one(tmp_path):
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc_per_node=2", "--standalone", "-m",
                             "cnndsl", "train", str(spec), "--out", str(tmp_path / "run"),
                             "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # only rank 0 prints
    assert summary["world"] == 2
    assert summary["rank_divergence"] == 0.0  # identical weights on both ranks
    for record in summary["history"]:
        assert record["train_samples"] == train_size((1, 8, 8))  # once per epoch, all ranks
    assert (tmp_path / "run" / "best.safetensors").exists()
