"""Weights by state_dict name (`layer1.0.conv1.weight`), as numpy arrays.

`initial_weights` draws them the way PyTorch's default initialisers do (so a fresh ONNX
model behaves like a fresh PyTorch one); `load_weights` reads a state_dict saved from the
compiled module (`torch.save(m.state_dict(), p)`, loaded with weights_only=True) or a
.safetensors file, and checks every name and shape against the IR. No torch import here
except for reading .pt files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .diagnostics import CnnError, Diagnostic
from .ir import Network
from .layers import REGISTRY

Weights = dict[str, np.ndarray]


def expected_shapes(ir: Network) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for node in ir.nodes:
        kind = REGISTRY[node.op]
        for suffix, shape in {**kind.param_shapes(node.attrs),
                              **kind.buffer_shapes(node.attrs)}.items():
            shapes[f"{node.name}.{suffix}"] = shape
    return shapes


def initial_weights(ir: Network, seed: int = 0) -> Weights:
    """PyTorch's defaults: kaiming_uniform(a=sqrt(5)) weights and U(+-1/sqrt(fan_in)) biases
    for conv and linear layers (bound = 1/sqrt(fan_in)); batch norm 1, 0, mean 0, var 1."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for name, shape in expected_shapes(ir).items():
        suffix = name.rsplit(".", 1)[1]
        if suffix in ("running_var",):
            weights[name] = np.ones(shape, np.float32)
        elif suffix in ("running_mean",):
            weights[name] = np.zeros(shape, np.float32)
        elif suffix == "num_batches_tracked":
            weights[name] = np.zeros(shape, np.int64)
        elif len(shape) == 1 and _is_norm(ir, name):
            weights[name] = (np.ones if suffix == "weight" else np.zeros)(shape, np.float32)
        else:
            fan_in = _fan_in(ir, name, shape)
            bound = 1 / math.sqrt(fan_in) if fan_in else 0
            weights[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return weights


def _is_norm(ir: Network, name: str) -> bool:
    return ir.node(name.rsplit(".", 1)[0]).op == "batchnorm"


def _fan_in(ir: Network, name: str, shape: tuple[int, ...]) -> int:
    node = ir.node(name.rsplit(".", 1)[0])
    weight = REGISTRY[node.op].param_shapes(node.attrs)["weight"]
    return weight[1] * math.prod(weight[2:])  # as torch's _calculate_fan_in_and_fan_out


def load_weights(path: str | Path, ir: Network) -> Weights:
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file
            raw = load_file(str(path))
        else:
            import torch
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("the file does not hold a state_dict")
            raw = {k: v.detach().cpu().numpy() for k, v in state.items()}
    except (OSError, ValueError, RuntimeError) as exc:
        raise CnnError([Diagnostic(code="E-weights", message=f"cannot read weights from "
                                   f"{path}: {exc}")]) from None
    return check_weights(raw, ir, str(path))


def check_weights(raw: Weights, ir: Network, origin: str) -> Weights:
    expected = expected_shapes(ir)
    problems = [f"missing `{k}`" for k in expected if k not in raw]
    problems += [f"`{k}` is not in the network" for k in raw if k not in expected]
    problems += [f"`{k}` has shape {tuple(raw[k].shape)}, the network needs {shape}"
                 for k, shape in expected.items() if k in raw and tuple(raw[k].shape) != shape]
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise CnnError([Diagnostic(code="E-weights", message=f"the weights in {origin} do not "
                                   f"fit {ir.name}", notes=tuple(shown),
                                   help="save them from this spec's compiled module")])
    return {k: np.asarray(raw[k]) for k in expected}
