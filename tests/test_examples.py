"""examples/: every example checks clean and computes the same function through the
in-memory module, the generated source and onnxruntime."""

from __future__ import annotations

import pytest
import torch

import cnndsl
from cnndsl.runtime import create_session
from conftest import ROOT, import_file, run_cli
from test_onnx import assert_close, randomise_batchnorm

EXAMPLES = ROOT / "examples"
EXAMPLE_SPECS = sorted(p.name for p in EXAMPLES.glob("*.cnn"))

# Parameter counts worked out by hand from each file (weights + biases + batch-norm affine).
HAND_COUNTED = {
    # 3*32*9 + 32*32*9 + 32*64*9 + 64*64*9 + 64*128*9 (no bias), 2*(32+32+64+64+128) batchnorm,
    # 128*10 + 10 linear
    "cifar_cnn.cnn": 864 + 9_216 + 18_432 + 36_864 + 73_728 + 640 + 1_290,
    # conv 3->32 k3 +b, conv 32->64 k3 +b, linear 64->10, linear 64->64
    "two_outputs.cnn": 896 + 18_496 + 650 + 4_160,
    # encoder 1->64->64->...->1024 (3x3 + bias), up-convolutions 2x2 + bias, decoder convs
    # on the concatenation, 1x1 to 2 classes: the paper's 31,030,658
    "unet_paper.cnn": sum(9 * i * o + o for i, o in [
        (1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512),
        (512, 512), (512, 1024), (1024, 1024), (1024, 512), (512, 512), (512, 256),
        (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)])
    + sum(4 * i * o + o for i, o in [(1024, 512), (512, 256), (256, 128), (128, 64)])
    + 64 * 2 + 2,
}
# Examples too large to run three times in the suite run at these arguments.
SMALLER = {"unet_paper.cnn": {"c": 8, "size": 252}}


def test_examples_exist():
    assert {"cifar_cnn.cnn", "custom_blocks.cnn", "unet.cnn", "two_outputs.cnn"} <= set(
        EXAMPLE_SPECS)


@pytest.mark.parametrize("name", EXAMPLE_SPECS)
def test_example_checks_clean(name):
    result = run_cli("check", f"examples/{name}", "--strict")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warnings either


@pytest.mark.parametrize("name", EXAMPLE_SPECS)
def test_example_backends_agree(name, tmp_path):
    model = cnndsl.load(EXAMPLES / name)
    if name in HAND_COUNTED:
        assert model.params == HAND_COUNTED[name]
    if name in SMALLER:
        model = cnndsl.load(EXAMPLES / name, **SMALLER[name])
    module = model.to_torch().eval()
    randomise_batchnorm(module)
    assert model.params == sum(p.numel() for p in module.parameters())
    source = tmp_path / "example_model.py"
    source.write_text(model.to_torch_source())
    generated = import_file(source, f"example_{name[:-4]}").build().eval()
    generated.load_state_dict(module.state_dict())
    session = create_session(model.to_onnx(weights=module.state_dict()).SerializeToString(),
                             "cpu")
    torch.manual_seed(0)
    xs = [torch.randn(2, *i.shape) for i in model.inputs]
    with torch.no_grad():
        expected = module(*xs)
        again = generated(*xs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    again = again if isinstance(again, tuple) else (again,)
    onnx_out = session.run(*(x.numpy() for x in xs))
    assert len(expected) == len(again) == len(onnx_out) == len(model.ir.outputs)
    for e, g, o in zip(expected, again, onnx_out):
        assert tuple(e.shape[1:]) == tuple(o.shape[1:])
        assert torch.equal(e, g)
        assert_close(o, e.numpy())


def test_two_output_example_keeps_its_output_names():
    model = cnndsl.load(EXAMPLES / "two_outputs.cnn")
    proto = model.to_onnx()
    assert [o.name for o in proto.graph.output] == ["logits", "probs", "embedding"]
    assert [i.name for i in proto.graph.input] == ["image"]
    probs = create_session(proto.SerializeToString(), "cpu").run(
        torch.randn(3, 3, 32, 32).numpy())[1]
    assert probs.shape == (3, 10) and abs(probs.sum(axis=1) - 1).max() < 1e-5


def test_custom_blocks_example_uses_its_library():
    model = cnndsl.load(EXAMPLES / "custom_blocks.cnn")
    scopes = {s.path: s.block for s in model.ir.scopes}
    assert scopes[("stem",)] == "cbr" and scopes[("gate",)] == "se"
    assert scopes[("stage1", "0")] == "res_unit" and scopes[("stage1", "1")] == "res_unit"
    # the strided unit got an automatic 1x1 projection on its shortcut
    assert model.ir.node("stage2.shortcut_conv1").attrs.stride == (2, 2)
    assert model.shape("stage3") == (128, 8, 8)


class PaperUNet(torch.nn.Module):
    """The U-Net of Ronneberger et al. written directly in PyTorch: unpadded convolutions,
    encoder tensors centre-cropped to the decoder's size and put first."""

    def __init__(self, c: int, classes: int = 2):
        super().__init__()
        widths = [c, 2 * c, 4 * c, 8 * c, 16 * c]
        self.down = torch.nn.ModuleList(
            self.double(i, o) for i, o in zip([1, *widths[:-1]], widths))
        self.ups = torch.nn.ModuleList(torch.nn.ModuleList([
            torch.nn.ConvTranspose2d(o * 2, o, 2, stride=2), self.double(2 * o, o)])
            for o in reversed(widths[:-1]))
        self.head = torch.nn.Conv2d(c, classes, 1)

    @staticmethod
    def double(i: int, o: int) -> torch.nn.Sequential:
        return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3), torch.nn.ReLU(),
                                   torch.nn.Conv2d(o, o, 3), torch.nn.ReLU())

    def forward(self, x):
        skips = []
        for k, block in enumerate(self.down):
            x = block(torch.nn.functional.max_pool2d(x, 2) if k else x)
            skips.append(x)
        for (up, block), skip in zip(self.ups, reversed(skips[:-1])):
            x = up(x)
            top, left = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
            skip = skip[:, :, top:top + x.shape[2], left:left + x.shape[3]]
            x = block(torch.cat([skip, x], 1))
        return self.head(x)


def test_the_papers_unet_is_the_hand_written_one():
    """Same parameters in the same order, same function, at the paper's 572 -> 388 sizes
    and at a smaller width (c=8, 252 -> 68) that runs quickly."""
    full = cnndsl.load(EXAMPLES / "unet_paper.cnn")
    assert full.inputs[0].shape == (1, 572, 572) and full.layers[-1].shape == (2, 388, 388)
    assert full.params == sum(p.numel() for p in PaperUNet(64).parameters())
    model = cnndsl.load(EXAMPLES / "unet_paper.cnn", **SMALLER["unet_paper.cnn"])
    ours, theirs = model.to_torch().eval(), PaperUNet(8).eval()
    mine = list(ours.state_dict())
    assert [tuple(v.shape) for v in ours.state_dict().values()] == \
        [tuple(v.shape) for v in theirs.state_dict().values()]
    ours.load_state_dict(dict(zip(mine, theirs.state_dict().values())))
    x = torch.randn(2, 1, 252, 252)
    with torch.no_grad():
        expected = theirs(x)
        assert expected.shape == (2, 2, 68, 68)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-5)
