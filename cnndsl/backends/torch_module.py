"""PyTorch back end (a): an `nn.Module` built in memory from the IR.

Module paths follow the spec's names (block instances and labelled repeats nest), so the
state_dict is stable and equal to that of the generated source.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import Network
from ..layers import REGISTRY
from .torch_extra import CLASSES
from .torch_ops import TorchGenerator, TorchLayer


class CnnModule(nn.Module):
    """Runs the IR's nodes in order; each layer lives at its spec path."""

    def __init__(self, ir: Network, generator: type[TorchGenerator] = TorchGenerator):
        super().__init__()
        self.network_name = ir.name
        self.input_names = [i.name for i in ir.inputs]
        self.output_names = list(ir.outputs)
        self._steps: list[tuple[str, tuple[str, ...], TorchLayer, nn.Module | None]] = []
        for node in ir.nodes:
            spec = generator.layer(node)
            module = None
            if spec.cls is not None and node.shares:  # one module, applied again
                module = self.get_submodule(node.shares)
            elif spec.cls is not None:
                cls = CLASSES.get(spec.cls) or getattr(nn, spec.cls)
                module = cls(*spec.args, **spec.kwargs)
                _fix(module, node)
                self._container(node.path[:-1]).add_module(node.local, module)
            self._steps.append((node.name, node.inputs, spec, module))

    def _container(self, path: tuple[str, ...]) -> nn.Module:
        parent: nn.Module = self
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        return parent

    def forward(self, *inputs: torch.Tensor):
        values = self.run_all(*inputs)
        outs = tuple(values[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def run_all(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every named value of the network, inputs included (for inspection and tests)."""
        if len(inputs) != len(self.input_names):
            raise TypeError(f"{self.network_name} takes {len(self.input_names)} input(s) "
                            f"({', '.join(self.input_names)}), got {len(inputs)}")
        values = dict(zip(self.input_names, inputs))
        for name, sources, spec, module in self._steps:
            args = [values[s] for s in sources]
            if spec.join == "concat":
                out = torch.cat(args, dim=spec.axis)
            elif spec.join is not None:
                out = _arithmetic(spec, args)
            else:
                x = args[0]
                if spec.pre_pad is not None:
                    x = F.pad(x, spec.pre_pad, value=spec.pad_value)
                out = module(x)
                if spec.valid_count:
                    out = out / module(F.pad(torch.ones_like(args[0][:, :1]), spec.pre_pad))
            values[name] = out
        return values


def _fix(module: nn.Module, node) -> None:
    """Tensors the spec gives (`weight=...`) and parameters it keeps from training."""
    for weight in REGISTRY[node.op].weights(node.attrs):
        tensor = getattr(module, weight.suffix)
        if weight.init.values is not None:
            with torch.no_grad():
                tensor.copy_(torch.tensor(weight.init.values).reshape(weight.shape))
        if not weight.trainable:
            tensor.requires_grad_(False)


_OPERATORS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
              "div": operator.truediv}


def _arithmetic(spec: TorchLayer, args: list[torch.Tensor]) -> torch.Tensor:
    apply = _OPERATORS[spec.join]
    if spec.constant is not None:
        x = args[0]
        return apply(spec.constant, x) if spec.constant_first else apply(x, spec.constant)
    out = args[0]
    for other in args[1:]:
        out = apply(out, other)
    return out


def build_module(ir: Network, state: dict | None = None,
                 generator: type[TorchGenerator] = TorchGenerator) -> CnnModule:
    """The module; with `state` (arrays or tensors by state_dict name) built on the meta
    device and made real with those tensors, so nothing is initialised only to be
    overwritten (VGG-16's initialisation alone takes seconds)."""
    if state is None:
        return CnnModule(ir, generator)
    import numpy as np
    with torch.device("meta"):
        module = CnnModule(ir, generator)
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(
        v if v.flags.writeable and v.flags.c_contiguous else np.array(v))
        for k, v in state.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module
