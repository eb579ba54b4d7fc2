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
}


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
