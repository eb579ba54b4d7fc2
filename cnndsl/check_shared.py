"""The checker's part for shared layers: a labelled layer or block call applied again to
another tensor with the same weights (RetinaNet's and FCOS's heads over the FPN levels):

    c3 = p3 -> head: retina_head(9, 80)
    c4 = p4 -> head                       # the same module, one set of weights

The second application is a node (or a block instance) of its own, so it has its own
shapes and MACs, and it names the node it shares (`Node.shares`, `Scope.shares`); the back
ends call the first application's module and read its tensors, so state_dict names stay
one. A mixin of cnndsl.checker.Checker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import ast
from .diagnostics import Label
from .layers import REGISTRY, fmt

if TYPE_CHECKING:
    from .checker import Frame, Tensor


@dataclass
class SharedModule:
    """A labelled step that later steps may apply again."""

    step: ast.Layer  # the call as written
    path: tuple[str, ...]  # the node's path (a layer) or the block instance's
    block: bool
    applied: list[str] = field(default_factory=list)


class SharedChecks:
    """Checker methods for applying a labelled layer or block again."""

    def remember_module(self, step: ast.Layer, path: tuple[str, ...], block: bool,
                        frame: Frame) -> None:
        if step.label is not None:
            frame.modules[step.label] = SharedModule(step, path, block)

    def apply_again(self, step: ast.Layer, x: Tensor | None, frame: Frame,
                    name: str | None) -> Tensor:
        """`p4 -> head`: the module labelled `head`, run on this input with its weights."""
        module = frame.modules[step.name]
        x = self.need_input(x, step.span)
        local = name or (self.claim(frame.prefix + step.label, step.span, frame, step.label)
                         if step.label else self.application_name(step.name, frame))
        first = module.step
        call = ast.Layer(first.name, first.args, first.kwargs, first.has_call, None,
                         step.span, step.name_span)
        start_nodes, start_scopes = len(self.nodes), len(self.scopes)
        if module.block:
            tensor = self.call_block(self.definitions[first.name], call, x, frame, local)
        else:
            tensor = self.primitive(REGISTRY[first.name], call, x, frame, local)
        if tensor.shape is None:
            return tensor
        path = frame.path + (local,)
        for i in range(start_nodes, len(self.nodes)):
            self.share_node(i, path, module, step)
        for i in range(start_scopes, len(self.scopes)):
            scope = self.scopes[i]
            if scope.path[:len(path)] == path:
                original = ".".join(module.path + scope.path[len(path):])
                self.scopes[i] = scope.model_copy(update={"shares": original})
        module.applied.append(".".join(path))
        if step.label is not None:
            frame.tensors.setdefault(step.label, tensor)
        return tensor

    def share_node(self, index: int, path: tuple[str, ...], module: SharedModule,
                   step: ast.Layer) -> None:
        node = self.nodes[index]
        rest = node.path[len(path):]
        original = self.by_name.get(".".join(module.path + rest))
        kind = REGISTRY[node.op]
        if original is None or original.op != node.op or [
                w.shape for w in kind.weights(original.attrs)] != [
                w.shape for w in kind.weights(node.attrs)]:
            where = original or self.by_name.get(".".join(module.path))
            raise self.fail(
                "E-shape", f"`{step.name}` cannot be applied to this input with its weights: "
                f"{node.name} would need other tensors than {'.'.join(module.path + rest)}",
                step.span, notes=(f"here the input is {fmt(node.in_shapes[0])}; the first "
                                  f"application got {fmt(original.in_shapes[0])}",)
                if original is not None else (),
                related=(Label(span=where.span, text="first applied here"),) if where else (),
                help="a shared layer needs inputs of the channels it was made for; "
                "project the input first (a 1x1 conv)")
        shared = node.model_copy(update={"shares": original.shares or original.name,
                                         "params": 0, "buffers": 0})
        self.nodes[index] = shared
        self.by_name[shared.name] = shared

    @staticmethod
    def application_name(label: str, frame: Frame) -> str:
        """`head_2`, `head_3`: the module path of a further application."""
        n = 2
        while f"{frame.prefix}{label}_{n}" in frame.taken:
            n += 1
        name = f"{frame.prefix}{label}_{n}"
        frame.taken.add(name)
        return name
