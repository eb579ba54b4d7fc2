"""Weights shared between parts of a graph, written as the language shares them: one head
applied to every FPN level (RetinaNet, FCOS) reads the same stored tensors from each
level's subgraph. The first application becomes a labelled step (a block call where it is
more than one layer) and every later one names that label, `p4 -> head`, so the spec
holds the weights once, as the source does.

A run is a stretch of a chain whose layers, at the same offsets in every later
application, are the same layers reading the same stored tensors (layers without weights:
the same call). Only layers whose every tensor is found in the source (`Layer.tensors`)
take part; a later use of a tensor not covered by a run stays a layer of its own (and the
parameter count check reports it)."""

from __future__ import annotations

import re
from dataclasses import replace

from .recognise import Layer
from .structure import Block
from .writer import Chain, Names, layer_label


def share(groups: list[Chain], names: Names) -> list[Block]:
    """Rewrite the chains so that each later application names the first; the blocks
    the first applications call."""
    first: dict[tuple, tuple[int, int]] = {}
    uses: dict[tuple[int, int], set[tuple[int, int]]] = {}  # first -> {(chain, shift)}
    for c, chain in enumerate(groups):
        for i, layer in enumerate(chain.layers):
            if not _plain(layer) or not layer.tensors:
                continue
            if layer.tensors in first:
                c0, j = first[layer.tensors]
                uses.setdefault((c0, j), set()).add((c, i - j))
            else:
                first[layer.tensors] = (c, i)
    runs = _runs(groups, uses)
    blocks = []
    # replaced from the end of each chain, so that earlier positions stay valid
    edits: list[tuple[int, int, int, Layer]] = []
    for c0, j, length, apps in runs:
        steps = groups[c0].layers[j:j + length]
        label = _label(names, min((_run_name(groups[c].layers[j + shift:j + shift + length])
                                   for c, shift in [(c0, 0), *apps]), key=len), len(apps))
        if length == 1:
            steps[0].label = label
        else:
            block = Block(names.identifier(f"{label}_block", "block", "block"), [],
                          [replace(s, source="") for s in steps])
            blocks.append(block)
            edits.append((c0, j, length, Layer(
                block.name, [], {}, [steps[0].inputs[0]], steps[-1].output, steps[0].source,
                parts=[steps], block=block, label=label)))
        for c, shift in apps:
            again = groups[c].layers[j + shift:j + shift + length]
            for layer in again:
                layer.shared = True
            edits.append((c, j + shift, length, Layer(
                label, [], {}, [again[0].inputs[0]], again[-1].output, again[0].source,
                inner=again, shared=True)))
    for c, i, length, layer in sorted(edits, key=lambda e: (e[0], -e[1])):
        groups[c].layers[i:i + length] = [layer]
    return blocks


def _plain(layer: Layer) -> bool:
    return not (layer.parts or layer.inner or layer.block is not None) and \
        len(layer.inputs) == 1


def _same(a: Layer, b: Layer) -> bool:
    return _plain(a) and _plain(b) and (a.op, a.args, a.kwargs, a.tensors) == (
        b.op, b.args, b.kwargs, b.tensors)


def _runs(groups: list[Chain], uses) -> list[tuple[int, int, int, list]]:
    """(chain, start, length, applications as (chain, shift)) of each shared run."""
    runs = []
    claimed: set[tuple[int, int]] = set()
    for (c0, j), apps in sorted(uses.items()):
        if (c0, j) in claimed:
            continue
        apps = sorted(apps)
        chain = groups[c0].layers
        length = 0
        while j + length < len(chain):
            k = j + length
            layer = chain[k]
            if (c0, k) in claimed or (layer.weights and not layer.tensors) or (
                    layer.tensors and uses.get((c0, k)) != set(apps)):
                break
            if not all(_fits(groups, c, k + shift, layer, claimed) and
                       (c != c0 or shift >= length + 1) for c, shift in apps):
                break
            length += 1
        if length == 0:
            continue
        claimed.update((c0, j + k) for k in range(length))
        claimed.update((c, j + shift + k) for c, shift in apps for k in range(length))
        runs.append((c0, j, length, apps))
    return runs


def _fits(groups, c: int, i: int, layer: Layer, claimed) -> bool:
    return 0 <= i < len(groups[c].layers) and (c, i) not in claimed and \
        _same(groups[c].layers[i], layer)


def _label(names: Names, raw: str, again: int) -> str:
    """A label whose applications' own names (`head_2`, `head_3` ...: the checker gives
    them) are free too, and kept free."""
    for k in range(1, 100):
        label = names.identifier(raw if k == 1 else f"{raw}_{chr(96 + k)}", "label", "shared")
        taken = [f"{label}_{n}" for n in range(2, again + 2)]
        if not names.used & set(taken):
            names.used.update(taken)
            return label
    raise RuntimeError(f"no free label for {raw}")


def _run_name(steps: list[Layer]) -> str:
    """The source's name for the run: the last meaningful part of the path its layers'
    names have in common, else the first layer's first part (not a layer kind, a
    number or an ONNX op type)."""
    if len(steps) == 1:
        return layer_label(steps[0].source) or "shared"
    paths = [[p for p in re.split(r"[/.]", s.source) if _meaningful(p)] for s in steps]
    common = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return common[-1] if common else (paths[0] or ["head"])[0]


def _meaningful(part: str) -> bool:
    from ..layers import REGISTRY
    return bool(part) and not part[0].isupper() and not part.isdigit() and \
        re.sub(r"_?\d+$", "", part) not in REGISTRY
