"""`ema:` an exponential moving average of the weights (Ultralytics' ModelEMA) in the shared
training loop: the setting bound and checked, the average's arithmetic, and a run that
evaluates, saves and returns the average and resumes to the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

import cnndsl
from cnndsl.diagnostics import CnnError
from cnndsl.training.loop import TrainingStopped, WeightAverage

TINY = """
network tiny(classes: int = 10) {
    input image: 1 x 8 x 8
    conv(8, 3, padding=same) -> batchnorm -> relu -> maxpool(2)
    flatten -> linear(classes)
}
train tiny() {
    data: digits
    optimizer: sgd(lr=0.05, momentum=0.9)
    epochs: 2
    batch: 100
    %s
}
"""


def test_the_setting_takes_a_decay_and_a_ramp():
    assert cnndsl.loads(TINY % "ema: 0.99").train_config().ema == {"decay": 0.99,
                                                                  "tau": 2000.0}
    config = cnndsl.loads(TINY % "ema: ema(decay=0.9, tau=50)").train_config({"ema.tau": 10})
    assert config.ema == {"decay": 0.9, "tau": 10.0}
    assert "ema(decay=0.9, tau=10)" in config.describe()
    assert cnndsl.loads(TINY % "").train_config({"ema": 0.5}).ema["decay"] == 0.5
    assert cnndsl.loads(TINY % "").train_config().ema is None


@pytest.mark.parametrize("setting", ["ema: 1.5", "ema: ema(decay=0.9, tau=0)",
                                     "ema: ema(tau=5)"])
def test_a_bad_ema_is_refused_at_its_argument(setting):
    with pytest.raises(CnnError) as error:
        cnndsl.loads(TINY % setting).train_config()
    diagnostic = error.value.diagnostics[0]
    assert diagnostic.span.line == 12, diagnostic  # the `ema` line


def test_a_ramp_without_a_decay_is_refused_on_the_command_line():
    with pytest.raises(CnnError, match="give its `decay` too"):
        cnndsl.loads(TINY % "").train_config({"ema.tau": 10})


def test_the_average_follows_the_ramped_decay():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9, tau=4.0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = dict(start)
    for step in (1, 2):
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.dtype.is_floating_point:
                    tensor.add_(torch.randn_like(tensor))
        average.update(model)
        d = 0.9 * (1 - math.exp(-step / 4.0))
        expected = {k: d * expected[k] + (1 - d) * v if v.dtype.is_floating_point else
                    expected[k] for k, v in model.state_dict().items()}
    for name, tensor in average.module.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-6)
        if tensor.dtype.is_floating_point:
            assert not torch.equal(tensor, model.state_dict()[name]), name
    assert not any(p.requires_grad for p in average.module.parameters())


def test_a_run_evaluates_saves_and_returns_the_average_and_resumes_to_it(tmp_path):
    model = cnndsl.loads(TINY % "ema: ema(decay=0.9, tau=3)")
    whole = model.fit(out=tmp_path / "whole", progress=False, epochs=2)
    module = whole["module"]
    saved = load_file(tmp_path / "whole" / "last.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())
    # the validation loss recorded is the returned (averaged) module's
    assert model.evaluate(weights=tmp_path / "whole" / "last.safetensors")["loss"] == \
        pytest.approx(whole["history"][-1]["val_loss"], rel=1e-5)
    state = torch.load(tmp_path / "whole" / "state.pt", weights_only=True)
    for name, tensor in module.state_dict().items():  # the average, not the last weights
        assert torch.equal(state["ema"][name], tensor), name
    assert not torch.equal(state["model"]["linear1.weight"], state["ema"]["linear1.weight"])
    with pytest.raises(TrainingStopped):
        model.fit(out=tmp_path / "cut", progress=False, epochs=2, _stop_at=(1, 3))
    assert "ema" in torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    resumed = model.fit(out=tmp_path / "cut", progress=False, epochs=2,
                        resume=tmp_path / "cut")["module"]
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
