"""Networks with several outputs train: a loss and a weight per output, checked first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import cnndsl
from cnndsl.diagnostics import CnnError
from cnndsl.training import tasks
from cnndsl.training.combine import OutputLosses
from cnndsl.training.run import train_config
from conftest import SPECS, run_cli

torch.set_num_threads(2)
SMALL = "3 x 32 x 32"  # GoogLeNet's smallest comfortable size: fast on a CPU


def googlenet_aux_text(size: str = SMALL) -> str:
    return (SPECS / "googlenet_aux.cnn").read_text().replace("3 x 224 x 224", size)


def image_folder(root: Path, classes: int = 3, per_class: int = 10, size: int = 32) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_googlenet_aux_total_loss_equals_a_hand_computation():
    model = cnndsl.loads(googlenet_aux_text(), classes=3)
    config = train_config(model)
    from cnndsl.training.spec import check_loss_fits
    config = check_loss_fits(config, model.ir)
    assert [(t.output, t.index, t.weight, t.loss.name) for t in config.losses] == [
        ("fc", 0, 1.0, "cross_entropy"), ("aux1", 1, 0.3, "cross_entropy"),
        ("aux2", 2, 0.3, "cross_entropy")]
    torch.manual_seed(0)
    module = model.to_torch().train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 1, 2])
    outputs = module(x)
    assert len(outputs) == 3 and all(o.shape == (4, 3) for o in outputs)
    losses = OutputLosses(config, lambda c: tasks.get("classify").loss(c, 3, torch.device("cpu")))
    total = OutputLosses.combine(losses(outputs, y), lambda t: t)
    fc, aux1, aux2 = outputs
    by_hand = (F.cross_entropy(fc, y) + 0.3 * F.cross_entropy(aux1, y)
               + 0.3 * F.cross_entropy(aux2, y))
    assert float(total.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-6)
    # every head gets a gradient from it: the auxiliary ones too
    total.backward()
    assert module.aux1.linear2.weight.grad.abs().sum() > 0
    assert module.aux2.linear2.weight.grad.abs().sum() > 0


def test_googlenet_aux_trains_and_its_deployed_model_drops_the_heads(tmp_path):
    spec = tmp_path / "googlenet_aux.cnn"
    spec.write_text(googlenet_aux_text())
    data = image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "run"
    result = run_cli("train", str(spec), "--data", str(data), "--set", "classes=3",
                     "--epochs", "1", "--batch", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert ("cross_entropy(fc, label_smoothing=0) + 0.3 * cross_entropy(aux1, "
            "label_smoothing=0) + 0.3 * cross_entropy(aux2, label_smoothing=0)") in result.stderr
    onnx_path = tmp_path / "main.onnx"
    result = run_cli("compile", str(spec), "--set", "classes=3", "--to", "onnx", "-o",
                     str(onnx_path), "--weights", str(out / "best.safetensors"),
                     "--outputs", "fc")
    assert result.returncode == 0, result.stderr
    graph = onnx.load(str(onnx_path)).graph
    assert [o.name for o in graph.output] == ["fc"]
    assert not any(i.name.startswith("aux") for i in graph.initializer)
    # the same weights, the whole model in torch: its `fc` is the deployed model's output
    from safetensors.torch import load_file

    from cnndsl.runtime import create_session
    whole = cnndsl.load(spec, classes=3)
    module = whole.to_torch().eval()
    module.load_state_dict(load_file(out / "best.safetensors"))
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x))[0].numpy()
    (got,) = create_session(onnx_path.read_bytes(), "cpu").run(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    result = run_cli("run", str(spec), "--set", "classes=3", "--outputs", "fc,aux2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("output fc: 1 x 3")
    assert result.stdout.splitlines()[1].startswith("output aux2: 1 x 3")


def test_keeping_the_main_output_gives_googlenet_without_aux():
    aux = cnndsl.load(SPECS / "googlenet_aux.cnn").keep_outputs("fc")
    plain = cnndsl.load(SPECS / "googlenet.cnn")
    assert aux.params == plain.params == 6_624_904
    assert aux.macs == plain.macs
    with pytest.raises(CnnError) as info:
        cnndsl.load(SPECS / "googlenet_aux.cnn").keep_outputs(["fc", "aux"])
    assert "no output `aux`" in info.value.diagnostics[0].message
    assert "aux1" in info.value.diagnostics[0].help


def test_the_two_outputs_example_trains_as_the_readme_says(tmp_path):
    """The command that once ended in `internal error: AttributeError: 'tuple' object has
    no attribute 'float'`."""
    data = image_folder(tmp_path / "images", per_class=5)
    result = run_cli("train", "examples/two_outputs.cnn", "--data", str(data), "--set",
                     "classes=3", "--epochs", "1", "--out", str(tmp_path / "two"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["epochs"] == 1
    assert "the loss applies to `logits`, the first of 3 outputs" in result.stderr
    result = run_cli("eval", "examples/two_outputs.cnn", "--set", "classes=3", "--data",
                     str(data), "--weights", str(tmp_path / "two" / "best.safetensors"),
                     "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["confusion_matrix"]


TWO = """network two(classes: int = 3) {
    input image: 1 x 8 x 8
    feat = image -> conv(4, 3, padding=1) -> relu
    logits = feat -> flatten -> linear(classes)
    probs = logits -> softmax
    side = feat -> global_avgpool -> flatten -> linear(classes)
    output logits, probs, side
}
train two() {
    loss: %s
}
"""


@pytest.mark.parametrize("loss, message, where", [
    ("cross_entropy(logits) + 0.5 * cross_entropy(side)",
     "the output `probs` has no loss",
     "loss: cross_entropy(logits) + 0.5 * cross_entropy(side)"),
    ("cross_entropy(logits) + 0.5 * cross_entropy(sid) + 0 * nll(probs)",
     "`cross_entropy(sid)`: the network has no output `sid`", "sid"),
    ("cross_entropy(logits) + 0.5 * cross_entropy(probs) + cross_entropy(side)",
     "`cross_entropy` takes raw scores but `probs` ends with `softmax`",
     "0.5 * cross_entropy(probs)"),
    ("cross_entropy(logits) + cross_entropy + 0 * mse(probs)",
     "with several losses, each names the output it applies to", "cross_entropy"),
    ("cross_entropy(logits) - 0.3 * cross_entropy(side)",
     "losses are added, each with a weight of 0 or more", None),
])
def test_loss_terms_are_checked_against_the_outputs(loss, message, where):
    text = TWO % loss
    with pytest.raises(CnnError) as info:
        cnndsl.loads(text)
    d = info.value.diagnostics[0]
    assert d.code == "E-train" and d.message == message
    assert d.span.line == 10
    if where is not None:
        line = text.splitlines()[9]
        assert line[d.span.column - 1:d.span.end_column - 1] == where


def test_a_loss_term_on_an_image_output_is_refused_at_the_term():
    text = TWO.replace("output logits, probs, side", "output logits, feat") % (
        "cross_entropy(logits) + 0.2 * mse(feat)")
    with pytest.raises(CnnError) as info:
        cnndsl.loads(text)
    d = info.value.diagnostics[0]
    assert d.message == "mse needs one score per class; `feat` gives 4 x 8 x 8"
    line = text.splitlines()[9]
    assert d.span.line == 10
    assert line[d.span.column - 1:d.span.end_column - 1] == "0.2 * mse(feat)"


def test_an_output_left_without_loss_on_purpose_trains(tmp_path):
    text = TWO % "cross_entropy(logits) + 0.5 * cross_entropy(side) + 0 * cross_entropy(probs)"
    model = cnndsl.loads(text)
    result = model.fit(str(_npz(tmp_path)), epochs=1, batch=10, progress=False)
    assert result["epochs"] == 1 and result["val_accuracy"] is not None


def test_the_class_count_of_every_trained_output_is_checked(tmp_path):
    text = TWO.replace("side = feat -> global_avgpool -> flatten -> linear(classes)",
                       "side = feat -> global_avgpool -> flatten -> linear(5)") % (
        "cross_entropy(logits) + 0.5 * cross_entropy(side) + 0 * nll(probs)")
    model = cnndsl.loads(text)
    with pytest.raises(CnnError) as info:
        model.fit(str(_npz(tmp_path)), epochs=1, progress=False)
    d = info.value.diagnostics[0]
    assert d.message == "the data has 3 classes but `side` gives 5 outputs"
    assert d.span.line == 6


def _npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.random((30, 1, 8, 8), dtype=np.float32), y=np.arange(30) % 3)
    return path


@pytest.mark.parametrize("spec, terms", [
    ("googlenet_aux.cnn", [("fc", 1.0), ("aux1", 0.3), ("aux2", 0.3)]),
    ("inception_v3_aux.cnn", [("fc", 1.0), ("aux", 0.4)]),
])
def test_the_zoos_auxiliary_heads_train_with_their_losses(spec, terms):
    from cnndsl.training.spec import check_loss_fits
    model = cnndsl.load(SPECS / spec)
    config = check_loss_fits(train_config(model), model.ir)
    assert [(t.output, t.weight) for t in config.losses] == terms
    assert [model.ir.outputs[t.index] for t in config.losses] == list(model.ir.outputs)
