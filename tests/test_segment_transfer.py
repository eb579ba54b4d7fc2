"""Transfer learning for segmentation: a torchvision classifier's weights into the encoder
of a segmentation spec (by structure, verified on what the head takes from the encoder;
the head new), frozen and trained; torchvision's own segmentation models into the specs
in specs/ with equal outputs."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.training.segdata import generate_shapes
from cnndsl.transfer import _cache_file
from conftest import SPECS

torchvision = pytest.importorskip("torchvision")
torch.set_num_threads(1)

UNET = """
network resnet18_unet(classes: int = 4, size: int = 64) {
    input image: 3 x size x size
    s1 = image -> stem: (conv(64, 7, stride=2, padding=3, bias=false) -> batchnorm -> relu)
    s2 = s1 -> maxpool(3, stride=2, padding=1) -> layer1: basic_stage(64, 2)
    s3 = s2 -> layer2: basic_stage(128, 2, stride=2)
    s4 = s3 -> layer3: basic_stage(256, 2, stride=2)
    s5 = s4 -> layer4: basic_stage(512, 2, stride=2)
    d4 = s5 -> upsample(2) -> concat(s4) -> dec4: (conv(64, 3, padding=same) -> relu)
    d3 = d4 -> upsample(2) -> concat(s3) -> dec3: (conv(32, 3, padding=same) -> relu)
    scores = d3 -> head: conv(classes, 1) -> upsample(like=image, mode=bilinear)
    output scores
}
"""
TRAIN = """
train resnet18_unet(size=32) {
    data: "shapes.npz"
    optimizer: adam(lr=0.01)
    epochs: 1
    batch: 16
    workers: 0
    freeze: (stem, layer1, layer2, layer3, layer4)
}
"""
HEAD = {"dec4", "dec3", "head"}


@pytest.fixture(autouse=True)
def torch_home(tmp_path_factory, monkeypatch) -> Path:
    """A torch hub cache of our own: what torchvision's weights API reads offline."""
    home = tmp_path_factory.getbasetemp() / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def randomised(name: str, **kwargs):
    """torchvision's model, random, batch norms' weights and statistics random too (so
    that a swapped or skipped one shows), in eval mode."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def cache(model, name: str) -> None:
    """Saved where torchvision's weights API looks for `name`'s DEFAULT weights."""
    path = _cache_file(torchvision.models.get_model_weights(name).DEFAULT.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def resnet18():
    return randomised("resnet18")


# ---- a classifier's weights into an encoder ----------------------------------------------


def test_a_resnet18_loads_into_a_unets_encoder_and_the_head_is_new(resnet18):
    cache(resnet18, "resnet18")
    model = cnndsl.loads(UNET)
    module = model.to_torch("torchvision:resnet18").eval()
    report = model.weights_report
    assert report.method == "traced against torchvision:resnet18, into the spec's encoder"
    assert len(report.loaded) == 120  # all but the classifier
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    assert {k.split(".")[0] for k in report.reinitialised} == HEAD
    assert all(why.startswith("new") for why in report.reinitialised.values())
    assert report.verified is not None and report.verified < 1e-5
    assert "the head (3 layers: dec4.0, dec3.0, head) is new" in report.text()
    mine, theirs = module.state_dict(), resnet18.state_dict()
    assert all(torch.equal(mine[a], theirs[b]) for a, b in report.loaded.items())
    # recomputed here: the encoder's output is torchvision's layer4 features
    x = torch.randn(2, 3, 64, 64)
    last = [n.name for n in model.layers if n.name.startswith("layer4.")][-1]
    with torch.no_grad():
        features = module.run_all(x)[last]
        expected = torch.nn.Sequential(*list(resnet18.children())[:-2])(x)
    assert relative(features, expected) < 1e-5


def test_a_mobilenet_v3_large_loads_into_an_encoder():
    spec = (SPECS / "mobilenet_v3_large.cnn").read_text()
    body = spec[spec.index("conv(16, 3"):spec.index("global_avgpool")]
    text = spec[:spec.index("network")] + (
        "network mobile_seg(classes: int = 3) {\n    input image: 3 x 64 x 64\n"
        f"    {body}\n    head: conv(classes, 1) -> upsample(like=image, mode=bilinear)\n}}\n")
    source = randomised("mobilenet_v3_large")
    model = cnndsl.loads(text)
    model.weights(source)
    report = model.weights_report
    classifier = {k for k in source.state_dict() if k.startswith("classifier.")}
    assert set(report.ignored) == classifier
    assert len(report.loaded) == len(source.state_dict()) - len(classifier)
    assert set(report.reinitialised) == {"head.weight", "head.bias"}
    assert report.verified is not None and report.verified < 1e-5


def test_an_encoder_that_computes_otherwise_is_refused_not_mismapped(resnet18):
    text = UNET.replace("-> batchnorm -> relu)", "-> batchnorm -> hardswish)")
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(text).weights(resnet18)
    assert "do not compute the given ResNet" in refused.value.diagnostics[0].message


def test_a_frozen_encoder_stays_bitwise_as_loaded_and_the_head_trains(resnet18, tmp_path):
    images, masks = generate_shapes(32, 32, 32, seed=1)
    np.savez(tmp_path / "shapes.npz", x=images, masks=masks)
    (tmp_path / "net.cnn").write_text(UNET + TRAIN)
    model = cnndsl.load(tmp_path / "net.cnn")
    result = model.fit(out=tmp_path / "run", weights=resnet18, progress=False)
    assert result["weights_report"]["method"].endswith("into the spec's encoder")
    from safetensors.torch import load_file
    after = load_file(str(tmp_path / "run" / "last.safetensors"))
    loaded = result["weights_report"]["loaded"]
    theirs = resnet18.state_dict()
    assert len(loaded) == 120
    for mine, source in loaded.items():
        assert torch.equal(after[mine], theirs[source]), mine
    start = model.weights(resnet18)
    assert not np.array_equal(after["head.weight"].numpy(), start["head.weight"])


# ---- torchvision's segmentation models into specs/ ---------------------------------------


SEGMENTATION = {"fcn_resnet50": {"aux_loss": True}, "deeplabv3_resnet50": {},
                "lraspp_mobilenet_v3_large": {}}


@functools.cache
def segmentation_model(name: str):
    return randomised(name, weights_backbone=None, **SEGMENTATION[name])


@pytest.fixture(scope="module", params=sorted(SEGMENTATION))
def segmentation(request):
    return request.param, segmentation_model(request.param)


def test_torchvisions_segmentation_models_map_into_the_specs_with_equal_outputs(segmentation):
    name, source = segmentation
    model = cnndsl.load(SPECS / f"{name}.cnn")
    module = model.to_torch(source).eval()
    report = model.weights_report
    aux = {k for k in source.state_dict() if k.startswith("aux_classifier.")}
    assert len(report.loaded) == len(source.state_dict()) - len(aux)
    assert set(report.ignored) == aux and not report.reinitialised
    assert report.verified is not None and report.verified < 1e-4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative(module(x), source(x)["out"]) < 1e-4
    if name == "lraspp_mobilenet_v3_large":  # by name too, through torchvision's weights
        cache(source, name)
        session = model.onnx_session("cpu", weights=f"torchvision:{name}")
        assert model.weights_report.method == f"traced against torchvision:{name}"
        with torch.no_grad():
            assert relative(session.run(x.numpy())[0], source(x)["out"]) < 1e-4


def test_a_deeplab_with_other_rates_is_refused():
    """(At 64 x 64 the features are 8 x 8: rates 12, 24 and 36 all reach only the centre
    tap there, so they compute the same; rate 2 does not.)"""
    source = segmentation_model("deeplabv3_resnet50")
    text = (SPECS / "deeplabv3_resnet50.cnn").read_text().replace("aspp_conv(256, 12)",
                                                                  "aspp_conv(256, 2)")
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(text).weights(source)
    assert "do not compute the given DeepLabV3" in refused.value.diagnostics[0].message


# ---- language details found writing segmentation networks ---------------------------------


ALIGNED = """
network aligned(corners: bool = true) {
    input x: 4 x 6 x 5
    x -> upsample(size=(15, 13), mode=bilinear, align_corners=corners)
}
"""


def test_bilinear_upsampling_with_align_corners_is_pytorchs_in_every_back_end(tmp_path):
    import torch.nn.functional as F

    from conftest import import_file
    model = cnndsl.loads(ALIGNED)
    x = torch.randn(2, 4, 6, 5)
    expected = F.interpolate(x, size=(15, 13), mode="bilinear", align_corners=True)
    assert relative(expected, F.interpolate(x, size=(15, 13), mode="bilinear")) > 0.01
    with torch.no_grad():
        assert relative(model.to_torch()(x), expected) < 1e-6
    path = tmp_path / "aligned.py"
    path.write_text(model.to_torch_source())
    assert "align_corners=True" in path.read_text()
    with torch.no_grad():
        assert relative(import_file(path, "aligned").build()(x), expected) < 1e-6
    assert relative(model.onnx_session("cpu").run(x.numpy())[0], expected) < 1e-5
    plain = cnndsl.loads(ALIGNED, corners=False)
    with torch.no_grad():
        assert relative(plain.to_torch()(x), F.interpolate(x, size=(15, 13),
                                                          mode="bilinear")) < 1e-6


def test_align_corners_with_nearest_is_an_error_at_the_argument():
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(ALIGNED.replace("mode=bilinear", "mode=nearest"))
    d = refused.value.diagnostics[0]
    assert d.message == "align_corners applies to bilinear upsampling only"
    assert (d.span.line, d.span.column) == (4, 48)  # `align_corners`


def test_dilation_in_the_standard_librarys_blocks_keeps_the_size():
    model = cnndsl.loads("""
network dilated() {
    input x: 16 x 12 x 12
    stage: bottleneck_stage(8, 3, dilation=4)
    bneck(16, 5, 48, true, hardswish, dilation=2)
    inverted_residual(16, dilation=2)
}
""")
    dilations = [n.attrs.dilation[0] for n in model.ir.nodes
                 if n.op == "conv" and n.attrs.kernel[0] > 1]
    # torchvision's replace_stride_with_dilation: the stage's first block keeps half
    assert dilations == [2, 4, 4, 2, 2]
    assert all(n.shape[1:] == (12, 12) for n in model.ir.nodes if n.op == "conv"
               and "squeeze" not in n.name)
    assert model.shape(model.ir.outputs[0]) == (16, 12, 12)


def test_a_pipeline_as_an_argument_says_to_name_it_first():
    text = """network n() {
    input x: 8 x 16 x 16
    skip = x -> conv(8, 3, padding=same)
    y = concat(skip -> maxpool(2) -> upsample(like=skip), skip)
    output y
}
"""
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(text)
    d = refused.value.diagnostics[0]
    assert d.message == ("a pipeline cannot be one of `concat`'s arguments: they are "
                         "tensors by name")
    assert (d.span.line, d.span.column, d.span.end_column) == (4, 16, 57)
    assert d.help == ("name it on a line of its own first, `piped = skip -> maxpool(2) -> "
                      "upsample(like=skip)`, then write `y = concat(piped, skip)`")
    fixed = text.replace("    y = concat(skip -> maxpool(2) -> upsample(like=skip), skip)",
                         "    piped = skip -> maxpool(2) -> upsample(like=skip)\n"
                         "    y = concat(piped, skip)")
    assert cnndsl.loads(fixed).shape("y") == (16, 16, 16)


def test_a_repeat_in_a_labelled_group_says_where_the_label_goes():
    text = "network n() {\n    input x: 8 x 16 x 16\n    layer1: (conv(8, 3, padding=1) * 3)\n}\n"
    with pytest.raises(cnndsl.CnnError) as refused:
        cnndsl.loads(text)
    d = refused.value.diagnostics[0]
    assert d.message == "a repeat cannot go inside a labelled group's parentheses"
    assert (d.span.line, d.span.column) == (3, 13)
    assert d.help == ("a repeat takes the label itself: `layer1: conv(8, 3, padding=1) * 3` "
                      "(the copies are layer1.0, layer1.1, ...)")
    fixed = cnndsl.loads(text.replace("(conv(8, 3, padding=1) * 3)", "conv(8, 3, padding=1) * 3"))
    assert [n.name for n in fixed.ir.nodes if n.op == "conv"] == [
        "layer1.0", "layer1.1", "layer1.2"]
