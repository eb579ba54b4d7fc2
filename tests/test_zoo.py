"""Every spec in specs/: exact counts, and the checker's shapes equal PyTorch's."""

from __future__ import annotations

import pytest
import torch

import cnndsl
from conftest import REFERENCE, SPECS, ZOO_SPECS, import_file

torch.set_num_threads(2)


@pytest.fixture(scope="module", params=ZOO_SPECS)
def model(request):
    return cnndsl.load(SPECS / request.param)


def test_every_spec_has_a_reference_or_is_listed():
    for name in ZOO_SPECS:
        stem = name.removesuffix(".cnn")
        assert stem in REFERENCE or stem in NO_REFERENCE, f"{name}: add its reference figures"


NO_REFERENCE = {"unet_small", "yolo_small"}  # our own networks: no published figures


def test_parameters_and_macs_match_references(model):
    params, macs = REFERENCE.get(model.name, (None, None))
    if params is None:
        pytest.skip(f"{model.name} has no reference figures")
    assert model.params == params
    if macs is not None:
        assert model.macs == macs


def _random_input(model, batch=2):
    torch.manual_seed(0)
    return [torch.randn(batch, *i.shape) for i in model.inputs]


def _hooked_shapes(module: torch.nn.Module, model, inputs) -> dict[str, tuple]:
    """Per-layer output shapes seen by forward hooks (batch axis dropped). A shared
    layer's module runs once per application: its node is the first."""
    seen: dict[str, tuple] = {}
    modules = dict(module.named_modules())
    handles = []
    for node in model.layers:
        if node.name in modules:
            def hook(mod, args, out, name=node.name):
                seen.setdefault(name, tuple(out.shape[1:]))
            handles.append(modules[node.name].register_forward_hook(hook))
    with torch.no_grad():
        module.eval()(*inputs)
    for h in handles:
        h.remove()
    return seen


def test_checker_shapes_equal_torch_module(model):
    module = model.to_torch()
    inputs = _random_input(model)
    seen = _hooked_shapes(module, model, inputs)
    with torch.no_grad():
        values = module.run_all(*inputs)
    for node in model.layers:
        assert tuple(values[node.name].shape[1:]) == node.shape, node.name
        if node.name in seen:
            assert seen[node.name] == node.shape, node.name
    assert sum(p.numel() for p in module.parameters()) == model.params


def test_generated_source_matches_module(model, tmp_path):
    path = tmp_path / f"{model.name}.py"
    path.write_text(model.to_torch_source())
    generated = import_file(path, f"gen_{model.name}").build()
    module = model.to_torch()
    ours, theirs = module.state_dict(), generated.state_dict()
    assert list(theirs) == list(ours)
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}
    generated.load_state_dict(ours)
    inputs = _random_input(model)
    seen = _hooked_shapes(generated, model, inputs)
    for node in model.layers:
        if node.name in seen:
            assert seen[node.name] == node.shape, node.name
    with torch.no_grad():
        expected = module.eval()(*inputs)
        actual = generated.eval()(*inputs)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
