"""specs/retinanet_resnet50_fpn.cnn and specs/fcos_resnet50_fpn.cnn against torchvision's
detectors (issue 22): the ResNet-50 body, the FPN with P6/P7 and the head whose one set of
weights runs on all five levels. Torchvision's weights (random init, batch-norm statistics
randomised) are mapped by tracing its model, no table of names; the head's raw outputs
(before anchors, box decoding and postprocessing; torchvision's transform skipped) agree
within 1e-4 relative (at 64 x 64). The generated source and onnxruntime compute what the
module does for every spec of the zoo (tests/test_zoo.py, tests/test_onnx.py), these
two included. A backbone built with FrozenBatchNorm2d, as torchvision's pretrained
detectors are, maps too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnndsl
from conftest import SPECS

detection = pytest.importorskip("torchvision.models.detection")
torch.set_num_threads(2)
SIZE = 64  # levels of 8 x 8, 4 x 4, 2 x 2, 1 x 1 and 1 x 1 cells
CELLS = 8 * 8 + 4 * 4 + 2 * 2 + 1 + 1


class RawHead(nn.Module):
    """torchvision's backbone (body and FPN) and head, without the transform and the
    postprocessing: the head's outputs as its dict holds them."""

    def __init__(self, detector):
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, x):
        return tuple(self.head(list(self.backbone(x).values())).values())


def _randomised(detector) -> RawHead:
    torch.manual_seed(1)
    with torch.no_grad():
        for module in detector.modules():
            if hasattr(module, "running_var"):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return RawHead(detector).eval()


def _built(name: str) -> RawHead:
    torch.manual_seed(0)
    builder = getattr(detection, name)
    return _randomised(builder(weights=None, weights_backbone=None))


def _close(ours, theirs) -> None:
    theirs = theirs.numpy()
    scale = float(np.abs(theirs).max())
    assert np.asarray(ours).shape == theirs.shape
    assert float(np.abs(np.asarray(ours) - theirs).max()) <= 1e-4 * scale


def _mapped(name: str, reference: RawHead):
    model = cnndsl.load(SPECS / f"{name}.cnn", size=SIZE)
    module = model.to_torch(weights=reference).eval()
    return model, module


@pytest.mark.parametrize("name, params, outputs", [
    ("retinanet_resnet50_fpn", 34_068_119, [(CELLS * 9, 91), (CELLS * 9, 4)]),
    ("fcos_resnet50_fpn", 32_322_720, [(CELLS, 91), (CELLS, 4), (CELLS, 1)])])
def test_raw_head_outputs_equal_torchvisions(name, params, outputs):
    reference = _built(name)
    model, module = _mapped(name, reference)
    assert model.params == params == sum(p.numel() for p in reference.parameters())
    assert [model.ir.shape_of(o) for o in model.ir.outputs] == outputs
    report = model.weights_report
    assert len(report.loaded) == len(reference.state_dict())
    assert not report.reinitialised and not report.ignored
    # one copy of the shared head in the state_dict, as torchvision has
    assert len(module.state_dict()) == len(reference.state_dict())
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected, ours = reference(x), module(x)
    assert len(expected) == len(ours) == len(outputs)
    for mine, theirs in zip(ours, expected):
        _close(mine, theirs)


def test_a_frozen_batch_norm_backbone_maps_too():
    """torchvision's pretrained detectors freeze the body's batch norms
    (FrozenBatchNorm2d: buffers only, computed with arithmetic of its own); the trace
    records each as the batch norm it is. The parameter count is torchvision's documented
    34,014,999 there: the 53,120 affine values are buffers."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    reference = _randomised(detection.RetinaNet(backbone, num_classes=91))
    assert sum(p.numel() for p in reference.parameters()) == 34_014_999
    model, module = _mapped("retinanet_resnet50_fpn", reference)
    report = model.weights_report
    assert len(report.loaded) == len(reference.state_dict()) == 301
    assert not report.reinitialised and not report.ignored
    assert report.loaded["layer1.bottleneck1.batchnorm1.running_var"] == \
        "backbone.body.layer1.0.bn1.running_var"
    assert report.notes[-1] == ("53 batch norms are frozen in the source (no "
                                "num_batches_tracked): their step counters start at 0")
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for mine, theirs in zip(module(x), reference(x)):
            _close(mine, theirs)
