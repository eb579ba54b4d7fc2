"""Transfer learning: torchvision's weights into the zoo (by torchvision's weights API and
from a plain file), mapped by structure and verified against torchvision's own function;
RegNet's shortcut order; new heads; freezing; bad weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.transfer import _cache_file
from conftest import SPECS, run_cli

torchvision = pytest.importorskip("torchvision")
torch.set_num_threads(2)

# every zoo spec with a torchvision counterpart: (torchvision name, spec, --set values)
ZOO = [
    ("alexnet", "alexnet.cnn", {}),
    ("vgg11", "vgg11.cnn", {}),
    ("vgg16", "vgg16.cnn", {}),
    ("vgg19", "vgg19.cnn", {}),
    ("resnet18", "resnet18.cnn", {}),
    ("resnet34", "resnet34.cnn", {}),
    ("resnet50", "resnet50.cnn", {}),
    ("resnet101", "resnet101.cnn", {}),
    ("resnet152", "resnet152.cnn", {}),
    ("googlenet", "googlenet.cnn", {}),
    ("mobilenet_v2", "mobilenet_v2.cnn", {}),
    ("efficientnet_b0", "efficientnet.cnn", {}),
    ("efficientnet_b1", "efficientnet.cnn", {"depth": 1.1, "resolution": 240}),
    ("efficientnet_b3", "efficientnet.cnn", {"width": 1.2, "depth": 1.4, "resolution": 300,
                                             "dropout": 0.3}),
    ("efficientnet_b7", "efficientnet.cnn", {"width": 2.0, "depth": 3.1, "resolution": 600,
                                             "dropout": 0.5, "eps": 0.001}),
    ("densenet121", "densenet121.cnn", {}),
    ("squeezenet1_1", "squeezenet1_1.cnn", {}),
    # the newer zoo (issue 13)
    ("resnext50_32x4d", "resnext50_32x4d.cnn", {}),
    ("wide_resnet50_2", "wide_resnet50_2.cnn", {}),
    ("vgg16_bn", "vgg16_bn.cnn", {}),
    ("inception_v3", "inception_v3.cnn", {}),
    ("googlenet", "googlenet_aux.cnn", {}),
    ("efficientnet_v2_s", "efficientnet_v2_s.cnn", {}),
    ("mobilenet_v3_large", "mobilenet_v3_large.cnn", {}),
    ("mobilenet_v3_small", "mobilenet_v3_small.cnn", {}),
    ("shufflenet_v2_x1_0", "shufflenet_v2_x1_0.cnn", {}),
    ("convnext_tiny", "convnext_tiny.cnn", {}),
    ("regnet_y_400mf", "regnet_y_400mf.cnn", {}),
]
# whose files declare tensors in another order than the spec runs them: from a bare file
# they are refused (the architecture must be named), never mapped wrong
OTHER_ORDER = {"regnet_y_400mf", "convnext_tiny"}


@pytest.fixture(autouse=True)
def torch_home(tmp_path_factory, monkeypatch) -> Path:
    """A torch hub cache of our own: what torchvision's weights API reads offline."""
    home = tmp_path_factory.getbasetemp() / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def randomised(name: str, seed: int = 0, **kwargs):
    """torchvision's model, randomly initialised, with every batch norm's weight, bias and
    running statistics randomised too (so that a swapped or skipped one shows)."""
    torch.manual_seed(seed)
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", True)  # and no warning about its default
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(seed + 7)
    return model


def cache(model, name: str) -> Path:
    """Saved where torchvision's weights API looks for `name`'s DEFAULT weights."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = _cache_file(weights.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name, spec, sets", ZOO, ids=[z[1][:-4] + "".join(
    f"-{k}{v}" for k, v in z[2].items() if k != "dropout") for z in ZOO])
def test_torchvision_weights_compute_torchvisions_function(name, spec, sets):
    """By `torchvision:NAME` into the PyTorch module, and from the plain .pth file into
    ONNX run by onnxruntime: both compute what torchvision's model computes."""
    reference = randomised(name)
    path = cache(reference, name)
    model = cnndsl.load(SPECS / spec, **sets)
    x = torch.randn(1, *model.inputs[0].shape, generator=torch.Generator().manual_seed(1))
    expected = reference_outputs(reference, x, len(model.ir.outputs))
    module = model.to_torch(f"torchvision:{name}").eval()
    report = model.weights_report
    assert report.method == f"traced against torchvision:{name}"
    assert not report.reinitialised and report.verified is not None and report.verified < 1e-4
    assert len(report.loaded) == len(module.state_dict())
    assert set(report.loaded.values()) | set(report.ignored) == set(reference.state_dict())
    with torch.no_grad():
        outputs = module(x)
    for mine, theirs in zip(outputs if len(expected) > 1 else [outputs], expected, strict=True):
        assert relative(mine, theirs) < 2e-3
    if name in OTHER_ORDER:
        with pytest.raises(cnndsl.CnnError, match="do not fit"):
            model.weights(str(path))
        session = model.onnx_session("cpu", weights=str(path), weights_from=f"torchvision:{name}")
    else:
        session = model.onnx_session("cpu", weights=str(path))
        assert model.weights_report.method == "the file's order"
    assert model.weights_report.loaded == report.loaded  # both ways find the same mapping
    for mine, theirs in zip(session.run(x.numpy()), expected, strict=True):
        assert relative(mine, theirs) < 2e-3


def reference_outputs(reference, x, count: int) -> list:
    """torchvision's outputs in eval mode; GoogLeNet's auxiliary heads (which torchvision
    runs only in training) applied to what inception4a and inception4d give."""
    caught = {}
    if count == 3:
        for name in ("inception4a", "inception4d"):
            getattr(reference, name).register_forward_hook(
                lambda m, a, out, name=name: caught.setdefault(name, out))
    with torch.no_grad():
        outputs = [reference(x)]
        if count == 3:
            outputs += [reference.aux1(caught["inception4a"]),
                        reference.aux2(caught["inception4d"])]
    return outputs


def test_googlenets_auxiliary_heads_are_ignored_by_both_ways():
    path = cache(randomised("googlenet"), "googlenet")
    model = cnndsl.load(SPECS / "googlenet.cnn")
    for weights in ("torchvision:googlenet", str(path)):
        model.weights(weights)
        ignored = model.weights_report.ignored
        assert len(ignored) == 20 and all(k.startswith(("aux1.", "aux2.")) for k in ignored)


def test_regnet_maps_by_structure_when_named_and_is_refused_from_a_bare_file(tmp_path):
    """torchvision's RegNet declares the projection `proj` before the body `f`, with a
    weight of the body's first 1x1 conv's shape; the spec runs the body first."""
    reference = randomised("regnet_y_400mf")
    path = cache(reference, "regnet_y_400mf")
    model = cnndsl.load(SPECS / "regnet_y_400mf.cnn")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
    for weights, weights_from in (("torchvision:regnet_y_400mf", None),
                                  (str(path), "torchvision:regnet_y_400mf")):
        module = model.to_torch(weights, weights_from=weights_from).eval()
        pairs = model.weights_report.loaded
        assert pairs["s1.y_block1.shortcut_conv1.weight"] == \
            "trunk_output.block1.block1-0.proj.0.weight"
        assert pairs["s1.y_block1.conv1.weight"] == "trunk_output.block1.block1-0.f.a.0.weight"
        with torch.no_grad():
            assert relative(module(x), expected) < 2e-3
    with pytest.raises(cnndsl.CnnError) as refused:
        model.weights(str(path))
    d = refused.value.diagnostics[0]
    assert d.code == "E-weights" and "do not fit regnet_y_400mf" in d.message
    assert "--weights-from torchvision:NAME" in d.help
    assert any("another order than they run" in note for note in d.notes)
    result = run_cli("compile", "specs/regnet_y_400mf.cnn", "--to", "onnx", "-o",
                     str(tmp_path / "r.onnx"), "--weights", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "r.onnx").exists()


class ProjectionFirst(torch.nn.Module):
    """A residual block written by hand, its shortcut declared before its body, as RegNet;
    the body's first conv has the shortcut's shape."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, bias=False),
                                        torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, stride=2,
                                                                         padding=1, bias=False))

    def forward(self, x):
        return self.proj(x) + self.body(x)


def test_a_file_in_another_order_is_refused_not_mismapped(tmp_path):
    spec = """
    network block(classes: int = 2) {
        input x: 8 x 16 x 16
        residual {
            conv(16, 1, bias=false) -> relu -> conv(16, 3, stride=2, padding=1, bias=false)
        } shortcut {
            conv(16, 1, stride=2, bias=false)
        }
    }
    """
    torch.save(ProjectionFirst().state_dict(), tmp_path / "block.pt")
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(spec).weights(str(tmp_path / "block.pt"))
    assert "do not fit block" in refused.value.diagnostics[0].message


def test_a_new_head_is_reinitialised_and_reported(tmp_path):
    reference = randomised("resnet18")
    cache(reference, "resnet18")
    model = cnndsl.load(SPECS / "resnet18.cnn", classes=10)
    module = model.to_torch("torchvision:resnet18").eval()
    report = model.weights_report
    assert set(report.reinitialised) == {"fc.weight", "fc.bias"}
    assert "(10, 512) here, (1000, 512) in the source" in report.reinitialised["fc.weight"]
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    assert len(report.loaded) == 120 and report.verified is not None and report.verified < 1e-4
    x = torch.randn(2, 3, 224, 224)
    features = {}
    module.fc.register_forward_pre_hook(lambda m, a: features.setdefault("mine", a[0]))
    reference.fc.register_forward_pre_hook(lambda m, a: features.setdefault("theirs", a[0]))
    with torch.no_grad():
        assert module(x).shape == (2, 10)
        reference(x)
    assert relative(features["mine"], features["theirs"]) < 1e-5
    mine, theirs = module.state_dict(), reference.state_dict()
    assert all(torch.equal(mine[a], theirs[b]) for a, b in report.loaded.items())
    result = run_cli("compile", "specs/resnet18.cnn", "--set", "classes=10", "--to", "onnx",
                     "-o", str(tmp_path / "r.onnx"), "--weights", "torchvision:resnet18",
                     "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["weights_report"]["counts"]
    assert counts == {"loaded": 120, "reinitialised": 2, "ignored": 2}


def test_a_mismatch_elsewhere_stays_an_error_unless_asked_for(tmp_path):
    cache(randomised("resnet18"), "resnet18")
    spec = (SPECS / "resnet18.cnn").read_text().replace("layer4: basic_stage(512, 2",
                                                        "layer4: basic_stage(384, 2")
    path = tmp_path / "narrow.cnn"
    path.write_text(spec)
    model = cnndsl.load(path)
    with pytest.raises(cnndsl.CnnError) as refused:
        model.weights("torchvision:resnet18")
    assert "layer4" in refused.value.render(False)
    model.weights("torchvision:resnet18", reinit=("layer4", "fc"))
    assert {k.split(".")[0] for k in model.weights_report.reinitialised} == {"layer4", "fc"}
    assert len(model.weights_report.loaded) == 122 - 32


def test_bad_weights_are_clear_errors(tmp_path, torch_home):
    reference = randomised("resnet18")
    path = cache(reference, "resnet18")
    cases = {}
    torch.save(randomised("resnet34").state_dict(), tmp_path / "other.pth")
    cases["another architecture"] = (str(tmp_path / "other.pth"), "torchvision:resnet18",
                                     "not torchvision's resnet18")
    data = path.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (str(tmp_path / "truncated.pth"), None, "not a readable PyTorch")
    torch.save({"model": "resnet18", "epochs": [1, 2]}, tmp_path / "dict.pth")
    cases["not a state_dict"] = (str(tmp_path / "dict.pth"), None, "`model` is a str")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    cases["a list"] = (str(tmp_path / "list.pth"), None, "holds a list, not a state_dict")
    state = reference.state_dict()
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"].clone()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    cases["NaN"] = (str(tmp_path / "nan.pth"), None, "`layer2.0.conv1.weight` has 1 NaN")
    model = cnndsl.load(SPECS / "resnet18.cnn")
    for case, (weights, weights_from, expected) in cases.items():
        with pytest.raises(cnndsl.CnnError) as refused:
            model.weights(weights, weights_from=weights_from)
        assert expected in refused.value.render(False), case
    path.write_bytes(data[:1000])  # a damaged file in the cache
    with pytest.raises(cnndsl.CnnError) as refused:
        model.weights("torchvision:resnet18")
    assert str(path) in refused.value.render(False)
    path.unlink()  # offline, nothing in the cache: it says where to put the file
    result = run_cli("compile", "specs/resnet18.cnn", "--to", "onnx", "-o",
                     str(tmp_path / "r.onnx"), "--weights", "torchvision:resnet18",
                     env={"TORCH_HOME": str(torch_home)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(path) in result.stderr.replace("\n", "")
    with pytest.raises(cnndsl.CnnError) as refused:
        model.weights("torchvision:resnet_18")
    assert "did you mean `resnet18`" in refused.value.render(False)


# ---- freezing ----------------------------------------------------------------------------

BASE = """
network digits_net(classes: int = 5) {
    input image: 1 x 16 x 16
    features: (conv(16, 3, padding=same, bias=false) -> batchnorm -> relu -> maxpool(2)
               -> conv(32, 3, padding=same, bias=false) -> batchnorm -> relu -> maxpool(2))
    flatten -> dropout(0.2)
    classifier: linear(classes)
}
"""
TRAIN = """
train digits_net() {
    data: digits
    optimizer: adamw(lr=0.005)
    batch: 64
    seed: 3
    %s
}
"""


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """The network trained on digits 0-4."""
    out = tmp_path_factory.mktemp("backbone")
    model = cnndsl.loads(BASE + TRAIN % "data_classes: (0, 1, 2, 3, 4)\nepochs: 2")
    model.fit(out=out, progress=False)
    return out / "best.safetensors"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


def test_fine_tuning_leaves_every_frozen_tensor_bitwise_unchanged(backbone, tmp_path):
    model = cnndsl.loads(BASE + TRAIN % "data_classes: (5, 6, 7, 8, 9)\nepochs: 2\n"
                         "freeze: features\nreinit: classifier")
    result = model.fit(out=tmp_path, weights=str(backbone), progress=False)
    before, after = _tensors(backbone), _tensors(tmp_path / "last.safetensors")
    frozen = [k for k in before if k.startswith("features.")]
    assert len(frozen) == 12  # two convs, two batch norms with their running statistics
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert result["weights_report"]["reinitialised"].keys() == {"classifier.weight",
                                                               "classifier.bias"}
    assert result["val_accuracy"] > 0.85
    module = result["module"]
    assert all(p.grad is None and not p.requires_grad
               for n, p in module.named_parameters() if n.startswith("features."))
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [2, 0]  # only the head is optimised


def test_unfreezing_trains_the_backbone_at_a_lower_rate(backbone, tmp_path):
    model = cnndsl.loads(BASE + TRAIN % "data_classes: (5, 6, 7, 8, 9)\nepochs: 2\n"
                         "freeze: all_except(classifier)\nunfreeze_after: 1\n"
                         "backbone_lr_scale: 0.1")
    model.fit(out=tmp_path, weights=str(backbone), progress=False)
    before, after = _tensors(backbone), _tensors(tmp_path / "last.safetensors")
    assert not torch.equal(before["features.0.weight"], after["features.0.weight"])
    groups = torch.load(tmp_path / "state.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [2, 6]
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert len(history) == 2


def test_resume_across_unfreezing_ends_with_the_same_weights(backbone, tmp_path):
    text = BASE + TRAIN % ("data_classes: (5, 6, 7, 8, 9)\nepochs: 3\nfreeze: features\n"
                           "unfreeze_after: 1")
    whole = tmp_path / "whole"
    cnndsl.loads(text).fit(out=whole, weights=str(backbone), progress=False)
    cut = tmp_path / "cut"
    from cnndsl.training.loop import TrainingStopped
    with pytest.raises(TrainingStopped):
        cnndsl.loads(text).fit(out=cut, weights=str(backbone), progress=False,
                               _stop_at=(1, 5))
    cnndsl.loads(text).fit(out=cut, weights=str(backbone), resume=cut, progress=False)
    a, b = _tensors(whole / "last.safetensors"), _tensors(cut / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_freeze_names_are_checked_with_the_spec():
    text = BASE + TRAIN % "freeze: (feature, classifier)"
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(text)
    d = refused.value.diagnostics[0]
    assert "no layer or block `feature`" in d.message and "features" in d.help
    line = text[:text.index("(feature,")].count("\n") + 1
    assert (d.span.line, d.span.column, d.span.end_column) == (line, 14, 21)
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(BASE + TRAIN % "freeze: (features, classifier)")
    assert "leaves nothing to train" in refused.value.diagnostics[0].message


def test_summary_and_check_count_trainable_and_frozen_parameters(tmp_path):
    path = tmp_path / "net.cnn"
    path.write_text(BASE + TRAIN % "freeze: features")
    checked = json.loads(run_cli("check", str(path), "--json").stdout)
    assert (checked["trainable_params"], checked["frozen_params"]) == (2_565, 4_848)
    assert [layer["name"] for layer in checked["layers"] if layer["frozen"]] == [
        "features.0", "features.1", "features.4", "features.5"]
    summary = run_cli("summary", str(path)).stdout
    assert "parameters         7,413 (trainable 2,565, frozen 4,848)" in summary
    totals = json.loads(run_cli("summary", str(path), "--json", "--freeze-all-except",
                                "features").stdout)["totals"]
    assert (totals["trainable_params"], totals["frozen_params"]) == (4_848, 2_565)

