"""IR -> IR passes that back ends may run: each takes a checked network (and its weights)
and gives another network, leaving the one it was given as it was."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .diagnostics import CnnError, Diagnostic
from .ir import Network
from .layers import REGISTRY
from .weights import Weights


def fold_batchnorm(ir: Network, weights: Weights) -> tuple[Network, Weights, dict[str, str]]:
    """Every batch norm on images that follows a layer it can fold into (its kind's
    `folds_into`), which feeds nothing else, folded into that layer's weight and bias:
    exact in eval mode. Returns the network without them, its weights and, for each removed
    node, the node whose output now holds its value. Takes `weights` over: they are
    rewritten in place (the batch norms' gone, the folded layers' changed), so that large
    networks are held once."""
    folded: dict[str, str] = {}  # batch norm -> the layer it folds into
    # a shared layer's tensors serve every application: folding one would change them all
    shared = {n.shares for n in ir.nodes if n.shares} | {n.name for n in ir.nodes if n.shares}
    for node in ir.nodes:
        kind = REGISTRY[node.op]
        if not kind.folds_into or len(node.shape) != 3 or node.name in shared:
            continue
        producer = ir.producer(node.inputs[0])
        if producer is not None and producer.op in kind.folds_into and \
                producer.name not in shared and ir.users(producer.name) == (node.name,):
            folded[node.name] = producer.name
    if not folded:
        return ir, weights, {}
    into = {conv: bn for bn, conv in folded.items()}
    nodes = []
    for node in ir.nodes:
        if node.name in folded:
            continue
        inputs = tuple(folded.get(i, i) for i in node.inputs)
        if node.name in into:
            node = _fold_into(node, ir.node(into[node.name]), weights)
        nodes.append(node.model_copy(update={"inputs": inputs}))
    scopes = tuple(s.model_copy(update={"output": folded.get(s.output, s.output),
                                        "inputs": tuple(folded.get(i, i) for i in s.inputs)})
                   for s in ir.scopes)
    network = ir.model_copy(update={"nodes": tuple(nodes), "scopes": scopes,
                                    "outputs": tuple(folded.get(o, o) for o in ir.outputs)})
    return network, weights, folded


def _fold_into(conv, bn, weights: Weights):
    w = weights[f"{conv.name}.weight"].astype(np.float64)
    b = weights.get(f"{conv.name}.bias", np.zeros(w.shape[0])).astype(np.float64)
    gamma, beta, mean, var = (weights[f"{bn.name}.{k}"].astype(np.float64) for k in
                              ("weight", "bias", "running_mean", "running_var"))
    scale = gamma / np.sqrt(var + bn.attrs.eps)
    folded_w = w * scale.reshape(-1, *[1] * (w.ndim - 1))
    folded_b = (b - mean) * scale + beta
    limit = np.finfo(np.float32).max
    if not (np.abs(folded_w).max(initial=0) <= limit and np.abs(folded_b).max() <= limit):
        raise CnnError([Diagnostic(
            code="E-weights", message=f"folding `{bn.name}` into `{conv.name}` gives weights "
            "too large for float32", span=conv.span,
            notes=(f"{bn.name}.weight / sqrt({bn.name}.running_var + eps) reaches "
                   f"{np.abs(scale).max():.3g}",),
            help="check the batch-norm statistics, or keep them: --keep-batchnorm")])
    for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        weights.pop(f"{bn.name}.{key}", None)
    weights[f"{conv.name}.weight"] = folded_w.astype(np.float32)
    weights[f"{conv.name}.bias"] = folded_b.astype(np.float32)
    added = 0 if conv.attrs.bias else conv.attrs.out_channels
    return conv.model_copy(update={"attrs": replace(conv.attrs, bias=True),
                                   "params": conv.params + added})


def keep_outputs(ir: Network, names: tuple[str, ...]) -> Network:
    """The network with only these outputs (by the spec's names, `output fc, aux1`), and
    only the layers they need: auxiliary heads used in training, left out of a deployed
    model as torchvision's GoogLeNet drops them in eval mode. The inputs stay."""
    spec_names = list(ir.output_names or ir.outputs)
    unknown = [n for n in names if n not in spec_names]
    if unknown or not names:
        from .suggest import did_you_mean
        hint = did_you_mean(unknown[0], spec_names) if unknown else None
        raise CnnError([Diagnostic(
            code="E-name", message=f"{ir.name} has no output `{unknown[0]}`" if unknown
            else "keep at least one output", help=(hint + " " if hint else "") +
            "its outputs: " + ", ".join(spec_names))])
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:  # an output given twice would come out under two names
        raise CnnError([Diagnostic(code="E-name", message=f"the output `{twice}` is "
                                   "named twice", help="name each output once")])
    chosen = [spec_names.index(n) for n in names]
    outputs = tuple(ir.outputs[i] for i in chosen)
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        node = ir.producer(name)
        if node is not None and name not in needed:
            needed.add(name)
            stack.extend(node.inputs)
    nodes = tuple(n for n in ir.nodes if n.name in needed)
    prefixes = {n.path[:i] for n in nodes for i in range(1, len(n.path))}
    scopes = tuple(s for s in ir.scopes if s.path in prefixes)
    return ir.model_copy(update={"nodes": nodes, "scopes": scopes, "outputs": outputs,
                                 "output_names": tuple(names)})
