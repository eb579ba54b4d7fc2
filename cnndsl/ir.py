"""The checked IR: a DAG of concrete layers with every shape, count and source span.

Produced only by `cnndsl.checker`; consumed by every back end, which never re-derives a
shape, a padding or a channel count. Imports no torch, onnx or graphviz.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from .diagnostics import Diagnostic
from .source import Span

Shape = tuple[int, ...]
OUTPUT = "<output>"  # what Network.users gives for a network output


class Node(BaseModel):
    """One layer instance. `path` is its module path, e.g. ("layer1", "0", "conv1")."""

    model_config = ConfigDict(frozen=True)

    path: tuple[str, ...]
    op: str
    attrs: Any  # the op's frozen, typed record (cnndsl.layers.LayerKind.Attrs)
    inputs: tuple[str, ...]  # names (dotted paths) of producer nodes or network inputs
    in_shapes: tuple[Shape, ...]
    shape: Shape
    params: int
    buffers: int = 0
    macs: int
    span: Span
    derivations: dict[str, str] = {}  # argument -> how its value was computed
    # argument -> its expression (cnndsl.ast) over the enclosing block's parameters and
    # `in_channels`; lets the source back end write parametric block classes.
    syms: dict[str, Any] = {}
    # a shared layer applied again (`p4 -> head`): the node whose module and tensors this
    # application uses; its own params and buffers are 0, its MACs its own
    shares: str = ""

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def local(self) -> str:
        return self.path[-1]

    @property
    def output(self) -> str:
        return self.name


class Input(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    shape: Shape
    span: Span


class Scope(BaseModel):
    """A block instance or a labelled repeat: one nested module in the back ends."""

    model_config = ConfigDict(frozen=True)

    path: tuple[str, ...]
    block: str | None  # the block definition's name; None for a repeat container
    args: dict[str, Any] = {}
    span: Span
    inputs: tuple[str, ...] = ()  # the chain's input first, then tensor arguments (`skip=e1`)
    output: str = ""
    outputs: tuple[str, ...] = ()  # all of them, for a block with several outputs
    # the call's arguments (and "in_channels") as expressions of the caller's parameters
    arg_syms: dict[str, Any] = {}
    shares: str = ""  # a block applied again: the path (dotted) of the first application
    # a labelled repeat or group: each step's output, in order (`concat(a, each(m))`)
    collected: tuple[str, ...] = ()


class Network(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    file: str
    params: dict[str, Any]  # the network's parameters, as used
    inputs: tuple[Input, ...]
    nodes: tuple[Node, ...]  # topological order
    outputs: tuple[str, ...]
    # what the spec calls each output (`output logits, probs`); the last layer's name when
    # the spec names none
    output_names: tuple[str, ...] = ()
    scopes: tuple[Scope, ...] = ()
    # the spec's named tensors (`skip = ...`, labels, inputs) -> the value each names
    tensors: dict[str, str] = {}
    warnings: tuple[Diagnostic, ...] = ()
    _index: dict[str, Node] | None = PrivateAttr(default=None)
    _users: dict[str, tuple[str, ...]] | None = PrivateAttr(default=None)

    @property
    def total_params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def activations(self) -> int:
        """Values produced per image, inputs included (activation memory = 4 bytes each)."""
        from math import prod
        return sum(prod(i.shape) for i in self.inputs) + sum(prod(n.shape) for n in self.nodes)

    def node(self, name: str) -> Node:
        return self._by_name()[name]

    def producer(self, name: str) -> Node | None:
        """The node whose output `name` is; None for a network input."""
        return self._by_name().get(name)

    def shape_of(self, name: str) -> Shape:
        by_name = self._by_name()
        if name in by_name:
            return by_name[name].shape
        for i in self.inputs:
            if i.name == name:
                return i.shape
        for scope in self.scopes:  # a block call or a labelled repeat: its output
            if ".".join(scope.path) == name and scope.output in by_name:
                return by_name[scope.output].shape
        if name in self.tensors and self.tensors[name] != name:  # `logits = ...`
            return self.shape_of(self.tensors[name])
        from .suggest import did_you_mean
        hint = did_you_mean(name, [*by_name, *(i.name for i in self.inputs), *self.tensors])
        raise KeyError(f"no layer or input `{name}` in {self.name}" + (f"; {hint}" if hint
                                                                       else ""))

    def users(self, name: str) -> tuple[str, ...]:
        """Who reads a value: the nodes it feeds, and `<output>` once per network output
        it is."""
        if self._users is None:
            users: dict[str, list[str]] = {}
            for node in self.nodes:
                for source in node.inputs:
                    users.setdefault(source, []).append(node.name)
            for output in self.outputs:
                users.setdefault(output, []).append(OUTPUT)
            self._users = {k: tuple(v) for k, v in users.items()}
        return self._users.get(name, ())

    def _by_name(self) -> dict[str, Node]:
        if self._index is None:
            self._index = {n.name: n for n in self.nodes}
        return self._index


class ScopeTree:
    """The IR's nesting: block instances (and labelled repeats) holding layers and blocks,
    in the order they run. Built by `scope_tree`; read by the diagram, the summary and the
    generated source."""

    def __init__(self, scope: Scope | None, path: tuple[str, ...]):
        self.scope = scope
        self.path = path
        self.items: list[Node | ScopeTree] = []

    @property
    def local(self) -> str:
        return self.path[-1] if self.path else ""

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.scope.inputs if self.scope else ()

    @property
    def output(self) -> str:
        return self.scope.output if self.scope else ""

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.scope is None:
            return ()
        return self.scope.outputs or (self.scope.output,)

    def nodes(self) -> list[Node]:
        out: list[Node] = []
        for item in self.items:
            out.extend(item.nodes() if isinstance(item, ScopeTree) else [item])
        return out

    def depth(self) -> int:
        """How many levels of scopes lie below this one."""
        return max((1 + i.depth() for i in self.items if isinstance(i, ScopeTree)), default=0)


def scope_tree(ir: Network) -> ScopeTree:
    root = ScopeTree(None, ())
    trees = {(): root}
    scopes = {s.path: s for s in ir.scopes}

    def get(path: tuple[str, ...]) -> ScopeTree:
        if path not in trees:
            parent = get(path[:-1])
            trees[path] = ScopeTree(scopes.get(path), path)
            parent.items.append(trees[path])
        return trees[path]

    for node in ir.nodes:
        get(node.path[:-1]).items.append(node)
    return root
