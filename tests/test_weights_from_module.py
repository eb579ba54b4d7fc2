"""Weights from any PyTorch model (issue 22, item 5): `weights=` takes an nn.Module, the
command line `--weights python:package.module:function` (imported only because the user
names it), both traced against the spec as torchvision's models are and verified on a
random batch. Ultralytics' C2f declares `cv2` before `m` but runs `m` first: the file's
order cannot map it, tracing does."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_collect import SPEC, C2f

import cnndsl
from conftest import ROOT, run_cli

torch.set_num_threads(2)

FACTORY = """\
import torch
from test_collect import C2f


def build():
    torch.manual_seed(0)
    model = C2f(8, 16, 2, True)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.uniform_(0.5, 1.5) if tensor.ndim == 1 else tensor.normal_(0, 0.1)
    return model.eval()


def not_a_model():
    return 42
"""


def _reference() -> C2f:
    import importlib.util
    spec = importlib.util.spec_from_loader("factory", loader=None)
    factory = importlib.util.module_from_spec(spec)
    exec(FACTORY, factory.__dict__)  # noqa: S102 - the test's own text
    return factory.build()


@pytest.fixture(scope="module")
def model():
    return cnndsl.loads(SPEC, name="c2f.cnn", n=2, shortcut=True)


def test_an_nn_module_is_traced_and_verified(model):
    reference = _reference()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    module = model.to_torch(weights=reference).eval()
    report = model.weights_report
    assert report.method == "traced against the given C2f"
    assert len(report.loaded) == len(before) and not report.reinitialised and not report.ignored
    assert report.verified is not None and report.verified <= 1e-6
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference(x))
    for name, tensor in reference.state_dict().items():  # theirs is left as it was
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(tensor, before[name])


def test_the_file_order_alone_cannot_map_it(model):
    with pytest.raises(cnndsl.CnnError) as info:
        model.weights(_reference().state_dict())
    assert "python:package.module:function" in info.value.render()
    # the blame falls where the order really breaks: C2f declares cv2 before m
    assert ("taken one for one, the first that differs is the spec's "
            "`c2f1.m.0.conv_bn1.conv1` against the file's `cv2.conv`"
            ) in info.value.diagnostics[0].notes


def test_a_module_computing_something_else_is_refused(model):
    reference = _reference()
    reference.cv2.bn.eps = 0.5  # the same weights, another function
    with pytest.raises(cnndsl.CnnError) as info:
        model.weights(reference)
    (d,) = info.value.diagnostics
    assert d.code == "E-weights"
    assert d.message.startswith("the weights, mapped onto the spec, do not compute the given "
                                "C2f: relative difference")


def test_a_module_of_another_structure_is_refused_not_mis_mapped(model):
    reference = _reference()
    reference.m[0].add = False  # no shortcut: the traces differ
    with pytest.raises(cnndsl.CnnError) as info:
        model.weights(reference)
    (d,) = info.value.diagnostics
    assert (d.code, d.message) == ("E-weights", "the weights in the given C2f do not fit t")


def test_the_command_line_takes_a_factory(tmp_path):
    (tmp_path / "c2f_factory.py").write_text(FACTORY)
    (tmp_path / "c2f.cnn").write_text(SPEC)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "tests"), str(ROOT)])}
    out = tmp_path / "c2f.onnx"
    result = run_cli("compile", str(tmp_path / "c2f.cnn"), "--to", "onnx", "-o", str(out),
                     "--weights", "python:c2f_factory:build", "--set", "n=2", cwd=tmp_path,
                     env=env)
    assert result.returncode == 0, result.stderr
    assert "traced against python:c2f_factory:build" in result.stderr
    x = np.random.default_rng(0).standard_normal((2, 8, 12, 12)).astype(np.float32)
    from cnndsl.runtime import create_session
    got = create_session(out.read_bytes(), "cpu").run(x)[0]
    with torch.no_grad():
        expected = _reference()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec, message", [
    ("python:no_such_module_here:build", "cannot import `no_such_module_here`: "
     "ModuleNotFoundError"),
    ("python:c2f_factory", "`python:c2f_factory` does not name a function"),
    ("python:c2f_factory:missing", "`c2f_factory` has no function `missing`"),
    ("python:c2f_factory:not_a_model", "c2f_factory:not_a_model() gave a int, not an "
     "nn.Module"),
])
def test_a_bad_factory_is_a_clear_error(spec, message, tmp_path):
    (tmp_path / "c2f_factory.py").write_text(FACTORY)
    (tmp_path / "c2f.cnn").write_text(SPEC)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "tests"), str(ROOT)])}
    result = run_cli("compile", str(tmp_path / "c2f.cnn"), "--to", "onnx", "-o",
                     str(tmp_path / "x.onnx"), "--weights", spec, cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()
