"""The parametric PyTorch source generator: golden files, and classes that really are
parametric (replacing an expression by its literal value must fail a test here)."""

from __future__ import annotations

import re

import pytest
import torch

import cnndsl
from conftest import ROOT, SPECS, golden, import_file

GOLDEN = ROOT / "tests" / "golden" / "source"


@pytest.mark.parametrize("spec", ["resnet50", "mobilenet_v2", "densenet121", "efficientnet"])
def test_golden_source(spec):
    golden(GOLDEN / f"{spec}.py", cnndsl.load(SPECS / f"{spec}.cnn").to_torch_source())


def _generated(spec: str, tmp_path):
    path = tmp_path / f"{spec}.py"
    path.write_text(cnndsl.load(SPECS / f"{spec}.cnn").to_torch_source())
    return import_file(path, f"param_{spec}")


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_bottleneck_classes_compute_their_sizes_from_their_arguments(tmp_path):
    """A class per structure (stride-1 projection, identity, stride-2 projection), each
    parametric: built with arguments the zoo never uses, it has the layers, parameters and
    output the checker gives a call with those arguments."""
    module = _generated("resnet50", tmp_path)
    source = (tmp_path / "resnet50.py").read_text()
    assert "nn.Conv2d(c * base_width // 64 * groups, c * expansion, kernel_size=1, " \
        "bias=False)" in source
    assert "nn.BatchNorm2d(c * expansion)" in source
    for in_channels, c, stride, expansion, groups, width, dilation in [
            (64, 16, 2, 2, 1, 64, 1), (96, 24, 1, 2, 4, 32, 2), (40, 10, 1, 4, 1, 64, 1),
            (32, 8, 2, 4, 2, 128, 1), (40, 10, 1, 4, 1, 64, 3)]:
        cls = (module.Bottleneck3 if stride == 2 else module.Bottleneck
               if in_channels != c * expansion else module.Bottleneck2)
        block = cls(in_channels, c, stride, expansion, groups, width, dilation)
        model = cnndsl.loads(f"network n() {{\n input x: {in_channels} x 8 x 8\n"
                             f" bottleneck({c}, {stride}, {expansion}, groups={groups}, "
                             f"base_width={width}, dilation={dilation})\n}}")
        assert _params(block) == model.params
        y = block.eval()(torch.randn(2, in_channels, 8, 8))
        assert tuple(y.shape[1:]) == model.ir.shape_of(model.ir.outputs[0])


def test_inverted_residual_class_rounds_as_the_spec_says(tmp_path):
    module = _generated("mobilenet_v2", tmp_path)
    source = (tmp_path / "mobilenet_v2.py").read_text()
    classes = re.findall(r"^class (\w+)\(nn.Module\)", source, re.M)
    assert "InvertedResidual" in classes and len(classes) < 10  # shared, not one per call
    init = inspect_init(module.InvertedResidual)
    assert "in_channels * expand" in init  # the expansion is computed, not a literal


def inspect_init(cls) -> str:
    import inspect
    return inspect.getsource(cls.__init__)


def test_dense_layer_grows_with_its_input(tmp_path):
    module = _generated("densenet121", tmp_path)
    for in_channels in (64, 96, 128):
        layer = module.DenseLayer(in_channels, 32, 4)
        model = cnndsl.loads(f"network n() {{\n input x: {in_channels} x 8 x 8\n"
                             " dense_layer(32, 4)\n}")
        assert _params(layer) == model.params
        assert layer(torch.randn(1, in_channels, 8, 8)).shape[1] == in_channels + 32
