"""Recognised layers -> .cnn text. A run of layers where each alone reads the one before
is one chain; conv -> batchnorm -> activation share a line; tensors are named only where
the graph branches or joins. Every name comes from the source file through `identifier`:
letters, digits and `_` only, never a keyword, so nothing from the file reaches the spec
as it was written there."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..layers import REGISTRY
from ..names import name_problem
from .recognise import Layer

LABELLED = frozenset({"conv", "conv_transpose", "linear"})
STARTS_LINE = frozenset({"conv", "conv_transpose", "linear",
                         "global_avgpool", "global_maxpool", "flatten", "lrn"})
MAX_NAME = 40


class Names:
    """Identifiers from the source's names, unique in the spec."""

    def __init__(self) -> None:
        from ..syntax import keywords
        self.reserved = set(keywords()) | set(REGISTRY) | {"x"}
        self.used: set[str] = set()

    def identifier(self, raw: str, role: str, fallback: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_]+", "_", raw).strip("_")[:MAX_NAME].strip("_")
        name = name.lower() if name.isupper() else name
        if not name or not re.match(r"[A-Za-z]", name):
            name = f"{fallback}_{name}".strip("_")
        problem = name_problem(name, role)
        if problem:
            name = re.sub(r"[^A-Za-z0-9_]+", "_", problem[1]).strip("_") or fallback
        numbered = re.fullmatch(r"([a-z_]+?)\d+", name)
        if name in self.reserved or (numbered and numbered.group(1) in self.reserved):
            name += "_"  # `conv3` is the name the checker gives an unnamed layer
        base, k = name, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def layer_label(source: str) -> str:
    """`/layer1/layer1.0/conv1/Conv` -> `conv1`, `layer1.basic1.conv1` -> `basic1_conv1`:
    the op's own tail dropped, the last two parts of a dotted path."""
    parts = [p for p in source.strip("/").split("/") if p]
    if len(parts) > 1 and parts[-1][:1].isupper():
        parts = parts[:-1]
    parts = [q for p in parts[-1:] for q in p.split(".") if q]
    return "_".join(parts[-2:])


@dataclass
class Line:
    text: str
    layers: list[Layer] = field(default_factory=list)
    indent: int = 1
    calls: int = 0  # block calls on this line


@dataclass
class Chain:
    layers: list[Layer]
    source: str | None  # the tensor read (None: a join reads its own)
    name: str | None = None  # the tensor it makes, when it is read elsewhere


def chains(layers: list[Layer], inputs: list[str], outputs: list[str]) -> list[Chain]:
    readers: dict[str, int] = {}
    for layer in layers:
        for x in set(layer.inputs):
            readers[x] = readers.get(x, 0) + 1
    made = {layer.output: layer for layer in layers}
    open_chain: dict[str, Chain] = {}  # the value a chain ends in -> the chain
    result = []
    for layer in layers:
        x = layer.inputs[0]
        joins = len(layer.inputs) > 1
        chain = open_chain.pop(x, None)
        if (joins or chain is None or readers.get(x, 0) != 1 or x in outputs
                or x not in made):
            chain = Chain([], None if joins else x)
            result.append(chain)
        chain.layers.append(layer)
        open_chain[layer.output] = chain
    return result


def write_network(name: str, layers: list[Layer], inputs: dict[str, tuple],
                  outputs: list[str], names: Names, header: list[str]) -> tuple[str, list[Line]]:
    """The spec's text, and its lines (each with the source layers it stands for, in the
    IR's order: for the weights and the shape comments)."""
    from .structure import find_blocks
    tensor = {}
    for value in inputs:
        tensor[value] = names.identifier(value, "tensor", "input")
    groups = chains(layers, list(inputs), outputs)
    read_later = {x for c in groups for layer in c.layers for x in layer.inputs}
    simple = (len(groups) == 1 and len(inputs) == 1 and len(outputs) == 1
              and groups[0].layers[-1].output == outputs[0])
    lines: list[Line] = []
    if simple:
        blocks, steps = find_blocks(groups[0].layers, names)
    else:
        from .shared import share
        blocks = share(groups, names)
    if blocks:
        for block in blocks:
            params = ", ".join(f"{p}: int" for p in block.params)
            lines.append(Line(f"block {block.name}({params}) {{", indent=0))
            for line in _step_lines(block.steps, 1, names, labels=False):
                line.layers = []  # the calls stand for the source's layers
                lines.append(line)
            lines.append(Line("}", indent=0))
    if simple:
        groups[0].layers = steps
    lines.append(Line(f"network {name}() {{" + "".join(f"  # {h}" for h in header[:1]),
                      indent=0))
    for value, shape in inputs.items():
        lines.append(Line(f"input {tensor[value]}: {' x '.join(map(str, shape))}"))
    for chain in groups:
        last = chain.layers[-1].output
        if not simple and (last in read_later or last in outputs):
            chain.name = tensor[last] = names.identifier(
                layer_label(chain.layers[-1].source) or last, "tensor", "t")
        if simple:
            lines.extend(_step_lines(chain.layers, 1, names, labels=True))
        else:
            lines.extend(_chain_lines(chain, chain.layers, tensor, names))
    if not simple:
        lines.append(Line("output " + ", ".join(tensor[o] for o in outputs)))
    lines.append(Line("}", indent=0))
    return render(lines), lines


def _call(layer: Layer, names: Names, labels: bool, tensor=None) -> str:
    if layer.block is not None:
        args = f"({', '.join(layer.args)})" if layer.args else ""
        call = f"{layer.op}{args}" + (f" * {layer.count}" if layer.count > 1 else "")
        return f"{layer.label}: {call}" if layer.label else call
    if layer.shared:  # a shared module applied again: its label
        return layer.op
    if layer.label:  # a shared layer's first application
        return f"{layer.label}: {layer.call()}"
    if len(layer.inputs) > 1:
        kw = [f"{k}={v}" for k, v in layer.kwargs.items()]
        return f"{layer.op}({', '.join([*(tensor[x] for x in layer.inputs), *kw])})"
    call = layer.call()
    label = re.sub(r"[^A-Za-z0-9_]+", "_", layer_label(layer.source)).strip("_")
    numbered = re.fullmatch(r"([a-z_]+?)\d+", label)
    if numbered and numbered.group(1) in REGISTRY:
        return call  # `conv1`: what the checker calls it anyway
    if labels and layer.op in LABELLED and 0 < len(label) <= 24 and label[0].isalpha():
        call = f"{names.identifier(layer_label(layer.source), 'label', layer.op)}: {call}"
    return call


def _step_lines(steps: list[Layer], indent: int, names: Names, labels: bool) -> list[Line]:
    """Steps as statements, one after the other (a body, or a single-chain network)."""
    lines: list[Line] = []
    closed = True  # the last line ends a compound or a call: the next step starts a line
    for step in steps:
        if step.parts and step.block is None:
            lines.extend(_compound_lines(step, indent, names, labels))
            closed = True
            continue
        text = _call(step, names, labels)
        flat = [step] if step.block is not None else step.flat()
        if step.block is not None:
            last = lines[-1].layers[-1] if lines and lines[-1].calls else None
            if (last is not None and lines[-1].calls == 1 and not closed
                    and last.block is not step.block and last.count == 1):
                lines[-1].text += f" -> {text}"
                lines[-1].layers.extend(flat)
                lines[-1].calls += 1
            else:
                lines.append(Line(text, flat, indent, calls=1))
            closed = False
            continue
        if closed or not lines or (lines[-1].calls and step.op in STARTS_LINE) or (
                step.op in STARTS_LINE and lines[-1].layers[-1].op != "flatten"
                and not (step.op == "flatten" and lines[-1].layers[-1].op.startswith("global"))):
            lines.append(Line(text, flat, indent))
        else:
            lines[-1].text += f" -> {text}"
            lines[-1].layers.extend(flat)
        closed = False
    return lines


def _compound_lines(step: Layer, indent: int, names: Names, labels: bool) -> list[Line]:
    if step.op == "residual":
        lines = [Line("residual {", [], indent)]
        lines += _step_lines(step.parts[0], indent + 1, names, labels)
        if len(step.parts) > 1 and step.implicit_shortcut:
            lines[-1].layers.extend(step.parts[1])  # written by the checker, in this order
        elif len(step.parts) > 1:
            lines.append(Line("} shortcut {", [], indent))
            lines += _step_lines(step.parts[1], indent + 1, names, labels)
        lines.append(Line("}", [replace(step, parts=[])], indent))  # the join itself
        return lines
    lines = [Line("branch concat {", [], indent)]
    for path in step.parts:  # a path is one chain: its lines joined by `->`
        body = _step_lines(path, indent + 1, names, labels)
        for more in body[1:]:  # each step of the path's own level continues it
            if more.indent == indent + 1 and not more.text.startswith("}"):
                more.text = f"-> {more.text}"
        lines.extend(body)
    lines.append(Line("}", [replace(step, parts=[])], indent))
    return lines


def _chain_lines(chain: Chain, steps: list[Layer], tensor, names: Names) -> list[Line]:
    lines: list[Line] = []
    closed = False
    for layer in steps:
        if layer.parts and layer.block is None:  # `t = x -> residual {` ... `}`
            compound = _compound_lines(layer, 2 if lines else 1, names, True)
            if lines:
                compound[0].text = f"-> {compound[0].text}"
            lines.extend(compound)
            closed = True
            continue
        call = _call(layer, names, True, tensor)
        if not lines or closed or (layer.op in STARTS_LINE
                                   and lines[-1].layers[-1].op != "flatten"):
            lines.append(Line(f"-> {call}" if lines else call, [layer],
                              indent=2 if lines else 1))
        else:
            lines[-1].text += f" -> {call}"
            lines[-1].layers.append(layer)
        closed = False
    start = f"{chain.name} = " if chain.name else ""
    source = f"{tensor[chain.source]} -> " if chain.source is not None else ""
    lines[0].text = start + source + lines[0].text
    return lines


def render(lines: list[Line]) -> str:
    return "".join("    " * line.indent + line.text + "\n" for line in lines)
