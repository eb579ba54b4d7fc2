"""Every layer kind through every piece: its example checks, its initial weights are
PyTorch's, the in-memory module, the generated source and onnxruntime (at every supported
opset) compute the same, the diagram and the summary show it. A kind missing a piece fails
by name. And adding a kind is one class plus one handler per back end (proved below)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.backends.diagram import to_dot
from cnndsl.backends.onnx_export import SUPPORTED_OPSETS, to_onnx
from cnndsl.backends.onnx_ops import OnnxGenerator
from cnndsl.backends.torch_module import build_module
from cnndsl.backends.torch_ops import TorchGenerator, TorchLayer
from cnndsl.backends.torch_source import generate_source
from cnndsl.layers import REGISTRY, Arg, LayerKind, Record, image, number
from cnndsl.runtime import create_session
from conftest import ROOT, import_file

torch.set_num_threads(2)
KINDS = sorted(REGISTRY)


def sample(op: str) -> cnndsl.Model:
    example = REGISTRY[op].example
    lines = ["network sample() {", "    input x: 8 x 8 x 8"]
    if "y" in example.replace("y_", ""):
        lines.append("    y = x -> conv(8, 1)")
    lines += [f"    {line}" for line in example.splitlines()] + ["}"]
    return cnndsl.loads("\n".join(lines))


def random_state(model: cnndsl.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor random (running variances positive), so a wrongly read one shows."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, array in model.weights().items():
        if array.dtype.kind in "iu":
            state[name] = array
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, array.shape).astype(np.float32)
        else:
            state[name] = rng.uniform(-0.5, 0.5, array.shape).astype(np.float32)
    return state


def test_every_kind_has_every_piece():
    for backend, table in (("torch", TorchGenerator.TRANSFORMS),
                           ("onnx", OnnxGenerator.TRANSFORMS)):
        assert set(table) == set(REGISTRY), (
            f"{backend}: missing {sorted(set(REGISTRY) - set(table))}, "
            f"unknown {sorted(set(table) - set(REGISTRY))}")
    for op, kind in REGISTRY.items():
        assert kind.doc and kind.family and kind.example, f"{op}: doc, family and example"


@pytest.mark.parametrize("op", KINDS)
def test_the_example_has_the_kind(op):
    model = sample(op)
    nodes = [n for n in model.layers if n.op == op]
    assert nodes, f"{op}'s example makes no {op}"
    node = nodes[-1]
    assert isinstance(node.attrs, REGISTRY[op].Attrs), f"{op}: attrs are not its record"
    with pytest.raises((AttributeError, TypeError)):
        node.attrs.__setattr__("x", 1)  # frozen


@pytest.mark.parametrize("op", KINDS)
def test_initial_weights_are_pytorchs(op):
    """Names and shapes as the module's state_dict, counts as the IR's; constants exactly
    PyTorch's; drawn tensors within PyTorch's bound and spread like it."""
    model = sample(op)
    ours = model.weights()
    torch.manual_seed(0)
    theirs = {k: v.numpy() for k, v in model.to_torch().state_dict().items()}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    params = sum(v.size for k, v in ours.items()
                 if k in dict(model.to_torch().named_parameters()))
    assert params == model.params
    modules = dict(model.to_torch().named_modules())
    for name, array in ours.items():
        reference = theirs[name]
        assert array.dtype == reference.dtype, name
        if reference.size == 1 or np.all(reference == reference.flat[0]):
            np.testing.assert_array_equal(array, reference, err_msg=name)
            continue
        layer, _, _ = name.rpartition(".")
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(modules[layer].weight)
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)), and the bias's
        assert float(np.abs(array).max()) <= bound, name
        assert float(np.abs(array).max()) > (0.9 if array.size >= 50 else 0.2) * bound, name


def _outputs(module, x):
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(x))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("op", KINDS)
def test_module_source_and_onnxruntime_agree_at_every_opset(op, tmp_path):
    model = sample(op)
    state = random_state(model)
    module = build_module(model.ir, state)
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 8)).astype(np.float32)
    expected = _outputs(module, x)
    source = tmp_path / f"sample_{op}.py"
    source.write_text(generate_source(model.ir, model.program.definitions))
    generated = import_file(source, f"sample_{op}").build()
    generated.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    for a, b in zip(_outputs(generated, x), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg="generated source")
    for opset in SUPPORTED_OPSETS:
        proto, _ = to_onnx(model.ir, dict(state), opset)
        session = create_session(proto.SerializeToString(), "cpu")
        for a, b in zip(session.run(x), expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"opset {opset}")


@pytest.mark.parametrize("op", KINDS)
def test_onnx_shape_inference_agrees_with_the_checker(op):
    """Every value ONNX shape inference types has the checker's shape, the batch dynamic:
    a shape of any rank (4 x 16 x 525 as much as 3 x 8 x 8) is the checker's to know."""
    import onnx
    model = sample(op)
    proto, value_of = to_onnx(model.ir, random_state(model))
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output)}
    node = [n for n in model.layers if n.op == op][-1]
    if value_of[node.name] == value_of[node.inputs[0]]:
        return  # an alias (a dropout): no node of its own
    assert shapes[value_of[node.name]] == ["batch", *node.shape], op


@pytest.mark.parametrize("op", KINDS)
def test_diagram_and_summary_show_it(op):
    model = sample(op)
    node = [n for n in model.layers if n.op == op][-1]
    label = REGISTRY[op].label(node.attrs)
    assert label in to_dot(model.ir, depth=9)
    assert f"({op})" in model.summary()


def test_readme_layer_reference_is_the_registry():
    sys.path.insert(0, str(ROOT / "tools"))
    import layer_reference
    readme = (ROOT / "README.md").read_text()
    assert layer_reference.updated(readme) == readme, "run python tools/layer_reference.py"
    reference = readme.split("### Layer reference", 1)[1].split("\n## ", 1)[0]
    for op in REGISTRY:
        assert f"| `{op}" in reference, f"README's layer reference lacks {op}"


# ---- adding a layer: one class and one handler per back end -----------------------------


@dataclass(frozen=True, slots=True)
class SoftplusAttrs(Record):
    beta: float


def _softplus_kind() -> None:
    """Registers `softplus_test` (defining the class is all it takes)."""
    class Softplus(LayerKind):
        op, family, Attrs = "softplus_test", "activation", SoftplusAttrs
        doc = "log(1 + e^(beta x)) / beta"
        example = "x -> softplus_test(beta=2)"
        args = (Arg("beta", number, 1.0),)

        def infer(self, a, xs, warn):
            image(xs[0], self.op)
            return xs[0]


class MyTorch(TorchGenerator):
    TRANSFORMS = {**TorchGenerator.TRANSFORMS,
                  "softplus_test": lambda n: TorchLayer("Softplus", (n.attrs.beta,))}


def _softplus(g, node, xs):
    beta = g.constant(f"{node.name}.beta", np.array(node.attrs.beta, np.float32))
    scaled = g.op("Mul", [xs[0], beta], node, output=f"{node.name}.scaled")
    soft = g.op("Softplus", [scaled], node, output=f"{node.name}.softplus")
    return g.op("Div", [soft, beta], node)


class MyOnnx(OnnxGenerator):
    TRANSFORMS = {**OnnxGenerator.TRANSFORMS, "softplus_test": _softplus}


def test_a_new_layer_is_one_class_and_a_handler_per_back_end(tmp_path):
    _softplus_kind()
    try:
        model = sample("softplus_test")
        assert model.layers[-1].op == "softplus_test" and model.summary()
        x = np.random.default_rng(2).standard_normal((2, 8, 8, 8)).astype(np.float32)
        expected = torch.nn.functional.softplus(torch.from_numpy(x), beta=2).numpy()
        out = _outputs(build_module(model.ir, model.weights(), MyTorch), x)[0]
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        source = tmp_path / "softplus.py"
        source.write_text(generate_source(model.ir, {}, MyTorch))
        np.testing.assert_allclose(_outputs(import_file(source, "softplus").build(), x)[0],
                                   expected, rtol=1e-6)
        proto, _ = to_onnx(model.ir, model.weights(), generator=MyOnnx)
        got = create_session(proto.SerializeToString(), "cpu").run(x)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert "softplus_test" in to_dot(model.ir)
        with pytest.raises(NotImplementedError, match="softplus_test"):
            build_module(model.ir)  # the stock back end has no handler: said by name
    finally:
        del REGISTRY["softplus_test"]


def test_layer_reference_rewrites_only_its_own_table():
    sys.path.insert(0, str(ROOT / "tools"))
    import layer_reference
    text = ("### Layer reference\n\nintro\n\n| layer | what it does |\n|---|---|\n| `old` | x |\n"
            "\n## Next section\n\n| other | table |\n|---|---|\n| a | b |\n\nafter\n")
    rewritten = layer_reference.updated(text)
    assert rewritten.endswith("\n## Next section\n\n| other | table |\n|---|---|\n| a | b |\n\n"
                              "after\n")
    assert "| `old` |" not in rewritten and "| `conv(" in rewritten
