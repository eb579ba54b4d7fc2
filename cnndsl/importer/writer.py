"""Recognised layers -> .cnn text. A run of layers where each alone reads the one before
is one chain; conv -> batchnorm -> activation share a line; tensors are named only where
the graph branches or joins. Every name comes from the source file through `identifier`:
letters, digits and `_` only, never a keyword, so nothing from the file reaches the spec
as it was written there."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..layers import REGISTRY
from ..names import name_problem
from .recognise import Layer

LABELLED = frozenset({"conv", "conv_transpose", "linear"})
STARTS_LINE = frozenset({"conv", "conv_transpose", "linear", "maxpool", "avgpool",
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
    """`/layer1/layer1.0/conv1/Conv` -> `layer1.0/conv1`: the op's own tail dropped."""
    parts = [p for p in source.strip("/").split("/") if p]
    if len(parts) > 1 and parts[-1][:1].isupper():
        parts = parts[:-1]
    return "_".join(parts[-2:]) if len(parts) > 1 else (parts[0] if parts else "")


@dataclass
class Line:
    text: str
    layers: list[Layer] = field(default_factory=list)
    indent: int = 1


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
        joins = len(layer.inputs) > 1 or layer.op in ("add", "mul", "concat")
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
    """The spec's text, and its lines (each with the layers on it, for shape comments)."""
    tensor = {}
    for value in inputs:
        tensor[value] = names.identifier(value, "tensor", "input")
    groups = chains(layers, list(inputs), outputs)
    read_later = {x for c in groups for layer in c.layers for x in layer.inputs}
    simple = (len(groups) == 1 and len(inputs) == 1 and len(outputs) == 1
              and groups[0].layers[-1].output == outputs[0])
    lines = [Line(f"# {h}" if h else "#", indent=0) for h in header]
    lines.append(Line(f"network {name}() {{", indent=0))
    for value, shape in inputs.items():
        lines.append(Line(f"input {tensor[value]}: {' x '.join(map(str, shape))}"))
    for chain in groups:
        last = chain.layers[-1].output
        if not simple and (last in read_later or last in outputs):
            chain.name = tensor[last] = names.identifier(
                layer_label(chain.layers[-1].source) or last, "tensor", "t")
        steps = []
        for layer in chain.layers:
            call = layer.call()
            if layer.op in ("add", "mul", "concat"):
                call = f"{layer.op}({', '.join(tensor[x] for x in layer.inputs)})"
            elif layer.op in LABELLED:
                call = f"{names.identifier(layer_label(layer.source), 'label', layer.op)}: {call}"
            steps.append((layer, call))
        lines.extend(_chain_lines(chain, steps, None if simple else tensor))
    if not simple:
        lines.append(Line("output " + ", ".join(tensor[o] for o in outputs)))
    lines.append(Line("}", indent=0))
    return render(lines), lines


def _chain_lines(chain: Chain, steps, tensor) -> list[Line]:
    lines: list[Line] = []
    for layer, call in steps:
        if not lines or (layer.op in STARTS_LINE and lines[-1].layers[-1].op not in
                         ("flatten",)):
            joined = lines and tensor is not None
            lines.append(Line(f"-> {call}" if joined else call, [layer],
                              indent=2 if joined else 1))
        else:
            lines[-1].text += f" -> {call}"
            lines[-1].layers.append(layer)
    if tensor is not None:
        start = f"{chain.name} = " if chain.name else ""
        source = f"{tensor[chain.source]} -> " if chain.source is not None else ""
        lines[0].text = start + source + lines[0].text
    return lines


def render(lines: list[Line]) -> str:
    return "".join("    " * line.indent + line.text + "\n" for line in lines)
