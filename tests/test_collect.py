"""Collecting the outputs of a repeat (issue 22, item 3): `concat(a, b, each(m))` joins the
output of every step of the repeat labelled `m`, as YOLOv8's C2f does. Checked against
C2f written in PyTorch as Ultralytics writes it, through the module, the generated source
and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnndsl
from cnndsl.runtime import create_session
from conftest import import_file

torch.set_num_threads(2)

SPEC = """\
block conv_bn(c: int, k: int = 1) {
    conv(c, k, padding=k // 2, bias=false) -> batchnorm(eps=0.001, momentum=0.03) -> silu
}

block yolo_bottleneck(c: int, shortcut: bool = true) {
    if shortcut {
        residual(project=false) {
            conv_bn(c, 3) -> conv_bn(c, 3)
        }
    } else {
        conv_bn(c, 3) -> conv_bn(c, 3)
    }
}

block c2f(c: int, n: int = 1, shortcut: bool = false) {
    input x
    a, b = x -> cv1: conv_bn(2 * (c // 2)) -> split(2)
    m: yolo_bottleneck(c // 2, shortcut) * n
    concat(a, b, each(m)) -> cv2: conv_bn(c)
}

network t(n: int = 2, shortcut: bool = true) {
    input x: 8 x 12 x 12
    c2f(16, n, shortcut)
}
"""


class ConvBN(nn.Module):
    def __init__(self, c1, c2, k=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)

    def forward(self, x):
        return nn.functional.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut):
        super().__init__()
        self.cv1, self.cv2, self.add = ConvBN(c, c, 3), ConvBN(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Ultralytics' C2f (ultralytics/nn/modules/block.py), in its own words."""

    def __init__(self, c1, c2, n, shortcut):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBN(c1, 2 * self.c)
        self.cv2 = ConvBN((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


@pytest.mark.parametrize("n, shortcut", [(0, True), (1, False), (3, True)])
def test_c2f_computes_what_ultralytics_c2f_computes(n, shortcut, tmp_path):
    model = cnndsl.loads(SPEC, name="c2f.cnn", n=n, shortcut=shortcut)
    reference = C2f(8, 16, n, shortcut).eval()
    module = model.to_torch().eval()
    assert model.params == sum(p.numel() for p in reference.parameters())
    torch.manual_seed(n)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.uniform_(0.5, 1.5) if tensor.ndim == 1 else tensor.normal_(0, 0.1)
    # the same tensors in the same order: Ultralytics declares cv2 before m, the spec
    # runs m first; map by role
    ours = module.state_dict()
    theirs = reference.state_dict()
    order = [k for k in theirs if k.startswith("cv1.")] + \
        [k for k in theirs if k.startswith("m.")] + [k for k in theirs if k.startswith("cv2.")]
    module.load_state_dict(dict(zip(ours, (theirs[k] for k in order))))
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(module(x), expected)
    path = tmp_path / f"c2f_{n}.py"
    path.write_text(model.to_torch_source())
    generated = import_file(path, f"c2f_{n}").build().eval()
    generated.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(generated(x), expected)
    proto = model.to_onnx(weights=module.state_dict())
    got = create_session(proto.SerializeToString(), "cpu").run(x.numpy())[0]
    scale = max(1.0, float(expected.abs().max()))  # float32 sums: relative to the output
    assert np.abs(got - expected.numpy()).max() <= 1e-5 * scale
    concat = [node for node in model.layers if node.op == "concat"][0]
    assert concat.shape == ((2 + n) * 8, 12, 12)
    assert len(concat.inputs) == 2 + n


def test_each_names_a_labelled_repeat():
    text = ("network n() {\n    input x: 4 x 8 x 8\n    y = x -> relu\n"
            "    concat(x, each(y))\n}\n")
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text)
    (d,) = [d for d in info.value.diagnostics if d.severity == "error"]
    assert (d.code, d.span.line, d.span.column) == ("E-name", 4, 20)
    assert d.message == "`y` is not the label of a repeat or group"


def test_a_repeat_that_feeds_nothing_else_stays_one_sequential_call():
    model = cnndsl.load(cnndsl.__path__[0] + "/../specs/resnet18.cnn")
    assert "self.layer1(" in model.to_torch_source()


def test_each_of_an_unlabelled_repeat_named_by_its_output(tmp_path):
    """`y = x -> unit(4) * 3` collects too: each(y) is the three steps' outputs, the same
    network as with a label (the module names stay those of an unlabelled chain)."""
    body = ("block unit(c: int) {\n    conv(c, 3, padding=1) -> relu\n}\n\n"
            "network t() {\n    input x: 4 x 6 x 6\n    {repeat}\n"
            "    concat(x, each(y))\n}\n")
    unlabelled = cnndsl.loads(body.replace("{repeat}", "y = x -> unit(4) * 3"), name="u.cnn")
    labelled = cnndsl.loads(body.replace("{repeat}", "y: unit(4) * 3"), name="l.cnn")
    concat = [node for node in unlabelled.layers if node.op == "concat"][0]
    assert concat.shape == (16, 6, 6) and len(concat.inputs) == 4
    assert unlabelled.params == labelled.params == 3 * (4 * 4 * 9 + 4)
    module, reference = unlabelled.to_torch().eval(), labelled.to_torch().eval()
    reference.load_state_dict(dict(zip(reference.state_dict(),
                                       module.state_dict().values())))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(module(x), expected)
    proto = unlabelled.to_onnx(weights=module.state_dict())
    got = create_session(proto.SerializeToString(), "cpu").run(x.numpy())[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_each_of_a_chain_that_goes_on_after_the_repeat_is_refused():
    text = ("network n() {\n    input x: 4 x 8 x 8\n    y = x -> relu * 2 -> sigmoid\n"
            "    concat(x, each(y))\n}\n")
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text)
    (d,) = [d for d in info.value.diagnostics if d.severity == "error"]
    assert (d.code, d.span.line, d.span.column) == ("E-name", 4, 20)
    assert d.help.startswith("label the repeat, `m: bottleneck(64) * n`, or name its output")
