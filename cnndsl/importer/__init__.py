"""`cnndsl import`: an ONNX file (or a PyTorch model, exported to ONNX first) becomes a
checked .cnn spec with its weights, proved equal in function before anything is written.

graph.py reads and checks the file; recognise.py maps ONNX nodes to layers; writer.py
writes the text; this module checks it, maps the weights, verifies and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..diagnostics import CnnError, Diagnostic
from .graph import Graph, import_error, read_graph
from .recognise import Layer, recognise
from .structure import fold_gates, fold_joins
from .writer import Names, write_network

TOLERANCE = 1e-4  # relative to the largest output magnitude
LEARNT = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
          "BatchNormalization": (1, 2), "PRelu": (1,), "LayerNormalization": (1, 2)}


@dataclass
class Imported:
    text: str
    weights: dict[str, np.ndarray]
    params: int
    source_params: int
    max_error: float
    unsupported: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def source_params(graph: Graph, layers: list[Layer]) -> int:
    """The source's learnt numbers, counted from the ONNX nodes, not from our layers:
    weights and biases of convolutions and fully connected layers, batch norm's scale
    and shift (not its running statistics), a bias added after a MatMul, a factor per
    channel that multiplies a tensor (ConvNeXt's layer scale; a `scale` layer here)."""
    names = set()
    layers = [x for layer in layers for x in layer.flat()]
    # cnndsl's own adaptive pooling is a MatMul by a fixed matrix: not learnt
    fixed = {layer.source for layer in layers if layer.op == "adaptive_avgpool"}
    for n in graph.nodes:
        for i in LEARNT.get(n.op_type, ()) if n.name not in fixed else ():
            if i < len(n.inputs) and n.inputs[i] in graph.constants:
                names.add(n.inputs[i])
    matmuls = {n.outputs[0] for n in graph.nodes if n.op_type == "MatMul"}
    for n in graph.nodes:
        if n.op_type == "Add" and set(n.inputs) & matmuls:
            names.update(x for x in n.inputs if x in graph.constants)
    scales = {layer.source for layer in layers if layer.op == "scale"}
    for n in graph.nodes:
        if n.op_type == "Mul" and n.name in scales:
            names.update(x for x in n.inputs if x in graph.constants)
    names.update(_group_norm_affine(graph))
    return sum(int(graph.constants[k].size) for k in names)


def _group_norm_affine(graph: Graph) -> set[str]:
    """A group norm written out (Div, Reshape back, then Mul and Add by constants): its
    scale and shift per channel."""
    made_by = {out: n for n in graph.nodes for out in n.outputs}
    used_by: dict[str, list] = {}
    for n in graph.nodes:
        for x in n.inputs:
            used_by.setdefault(x, []).append(n)
    names = set()
    for n in graph.nodes:
        back = made_by.get(n.inputs[0]) if n.op_type == "Mul" and n.inputs else None
        divide = made_by.get(back.inputs[0]) if back is not None and \
            back.op_type == "Reshape" else None
        shift = used_by.get(n.outputs[0], [])
        if divide is None or divide.op_type != "Div" or len(shift) != 1 or \
                shift[0].op_type != "Add":
            continue
        names.update(x for x in (*n.inputs, *shift[0].inputs) if x in graph.constants)
    return names


def import_graph(graph: Graph, name: str, partial: bool = False,
                 header: list[str] | None = None) -> Imported:
    layers, unsupported, outputs = recognise(graph)
    if unsupported and not partial:
        raise CnnError([Diagnostic(
            code="E-onnx", message=f"{graph.path}: node {u.node!r} ({u.op_type}): {u.why}",
            help="--partial writes the part before the first of these") for u in unsupported])
    source_outputs = list(graph.outputs)
    if unsupported:
        layers, outputs = _prefix(graph, layers, {u.node for u in unsupported})
        source_outputs = outputs
    layers = fold_joins(fold_gates(layers, outputs), outputs)
    names = Names()
    text, lines = write_network(names.identifier(name, "network", "imported"), layers,
                                graph.inputs, outputs, names, header or [])
    model = _check(text, graph.path)
    weights = _map_weights(model, [x for line in lines for layer in line.layers
                                    for x in layer.flat()])
    text = _formatted(_with_shapes(model, lines, graph), graph.path)
    model = _check(text, graph.path)
    error = verify(graph, model, weights, source_outputs)
    result = Imported(text, weights, model.params, source_params(graph, layers), error,
                      unsupported)
    if not unsupported and result.params != result.source_params:
        raise import_error(graph.path, f"the spec has {result.params:,} parameters, the "
                           f"source {result.source_params:,}")
    if any(n.op_type == "Conv" for n in graph.nodes) and not any(
            n.op_type == "BatchNormalization" for n in graph.nodes):
        result.notes.append("no batch norm in the file: batch norm folded into a conv "
                            "stays a conv with bias")
    return result


def _prefix(graph: Graph, layers: list[Layer], bad: set[str]):
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    first = min(order[b] for b in bad)
    kept = [layer for layer in layers if order[layer.source] < first]
    if not kept:
        raise import_error(graph.path, "not even the first node can be expressed: nothing "
                           "to write")
    return kept, [kept[-1].output]


def _check(text: str, where: str):
    from ..api import loads
    try:
        return loads(text, name=where.removesuffix(".onnx") + ".cnn")
    except CnnError as exc:
        limits = [d for d in exc.diagnostics if d.code == "E-limit"]
        if limits:  # the source's sizes, not our text: say so at the file
            raise import_error(where, limits[0].message) from None
        # a spec we wrote that does not check otherwise is our bug
        raise RuntimeError(f"the imported spec does not check:\n{exc}\n{text}") from None


def _map_weights(model, layers: list[Layer]) -> dict[str, np.ndarray]:
    """The source's tensors under the spec's state_dict names: the spec's layers with
    weights come in the order they were written (`layers`: in that order)."""
    from ..layers import REGISTRY
    from ..weights import tensors
    state = {name: np.zeros(w.shape, w.dtype) for name, w in tensors(model.ir)
             if not w.shape or name.endswith("num_batches_tracked")}
    nodes = [n for n in model.ir.nodes if REGISTRY[n.op].weights(n.attrs) and not n.shares]
    shapes = {name: tuple(w.shape) for name, w in tensors(model.ir)}
    weighted = [layer for layer in layers if layer.weights and not layer.shared]
    if len(nodes) != len(weighted):
        raise RuntimeError(f"{len(nodes)} layers with weights in the spec, "
                           f"{len(weighted)} in the source")
    for node, layer in zip(nodes, weighted, strict=True):  # noqa: B007
        if node.op != layer.op:
            raise RuntimeError(f"{node.name} is a {node.op}, its source a {layer.op}")
        for suffix, array in layer.weights.items():
            key = f"{node.name}.{suffix}"
            if shapes[key] != array.shape:
                if int(np.prod(shapes[key])) != array.size:
                    raise RuntimeError(f"{key}: {shapes[key]} vs {array.shape}")
                array = array.reshape(shapes[key])
            state[key] = np.ascontiguousarray(array, np.float32)
    if set(state) != set(shapes):
        raise RuntimeError(f"no source tensor for {sorted(set(shapes) - set(state))[:3]}")
    return state


def _with_shapes(model, lines, graph: Graph) -> str:
    """A comment with the shape after each line whose layers change it."""
    from .writer import render
    shapes = {}
    nodes = model.ir.nodes
    written = [x for line in lines for layer in line.layers for x in layer.flat()]
    if len(nodes) == len(written):
        shapes = {id(layer): node.shape for layer, node in zip(written, nodes, strict=True)}
    before = next(iter(graph.inputs.values()))
    for line in lines:
        last = line.layers[-1].flat()[-1] if line.layers else None
        if id(last) not in shapes:
            continue
        shape = shapes[id(last)]
        if shape != before:
            line.text += "  # " + " x ".join(map(str, shape))
        before = shape
    return render(lines)


def _formatted(text: str, where: str) -> str:
    from ..fmt import format_text
    return format_text(text, name=where)


def verify(graph: Graph, model, weights, outputs: list[str], seed: int = 0) -> float:
    """The largest difference between the source and the spec on one random input, as a
    fraction of the largest output magnitude; above TOLERANCE is an error."""
    import onnx

    from ..runtime import create_session
    rng = np.random.default_rng(seed)
    feeds = {k: rng.standard_normal((1, *shape)).astype(np.float32)
             for k, shape in graph.inputs.items()}
    source = onnx.ModelProto()
    source.CopyFrom(graph.model)
    if outputs != list(graph.outputs):  # --partial: the source cut where the spec ends
        del source.graph.output[:]
        source.graph.output.extend(onnx.helper.make_tensor_value_info(o, 1, None)
                                   for o in outputs)
    ref = create_session(source.SerializeToString(), "cpu").session.run(outputs, feeds)
    ours_model = model.to_onnx(weights=weights)
    session = create_session(ours_model.SerializeToString(), "cpu").session
    ins = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(ins, feeds.values(), strict=True)))
    worst = 0.0
    for a, b in zip(ref, got, strict=True):
        if a.shape != b.shape:
            raise import_error(graph.path, f"the spec's output is {b.shape}, the source's "
                               f"{a.shape}")
        worst = max(worst, float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))),
                                                                1e-12)))
    if worst > TOLERANCE:
        raise import_error(graph.path, f"the spec's output differs from the source's by "
                           f"{worst:.2e} of its magnitude (more than {TOLERANCE})")
    return worst


def import_file(path: str | Path, name: str | None = None, partial: bool = False) -> Imported:
    path = Path(path)
    graph = read_graph(path)
    return import_graph(graph, name or path.stem, partial,
                        [f"imported from {path.name} by cnndsl import"])





def parse_shape(text: str, where: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.lower().split("x")]
    if not all(p.isdigit() and 0 < int(p) <= 65536 for p in parts) or len(parts) not in (1, 3):
        raise import_error(where, f"--shape {text!r}: write C x H x W, e.g. 3x224x224")
    return tuple(int(p) for p in parts)


def import_source(source: str, output: Path, weights_out: Path, *, partial: bool = False,
                  shape: str = "3x224x224", opset: int = 18) -> Imported:
    """Import, verify, then write the spec and its weights (atomically, both or neither)."""
    from ..atomic import atomic_path, check_target, write_bytes, write_text
    check_target(output)  # before the weights are written, so that neither is
    if output.suffix != ".cnn":
        raise import_error(str(output), "the spec to write must end in .cnn")
    if source.startswith(("torchvision:", "python:")):
        import onnx

        from .graph import build_graph
        from .torch_source import build_module, to_onnx_bytes
        module = build_module(source)
        model = onnx.load_from_string(to_onnx_bytes(module, parse_shape(shape, source),
                                                    opset))
        graph = build_graph(model, source)
        name = source.rpartition(":")[2]
        result = import_graph(graph, name, partial, [f"imported from {source} by cnndsl "
                                                     "import"])
    else:
        result = import_file(source, output.stem, partial)
    from safetensors.numpy import save
    data = save({k: np.array(v, order="C") for k, v in result.weights.items()})  # 0-d stays 0-d
    # both files or neither, and a failure keeps the old ones: each is written beside its
    # target, and the weights replace theirs only once the spec has replaced its own
    with atomic_path(weights_out) as weights_tmp:
        write_bytes(weights_tmp, data)
        write_text(output, result.text)
    return result

__all__ = ["Imported", "import_file", "import_graph", "import_source", "read_graph", "verify"]


def build_graph_from_model(model, where: str) -> Graph:
    """A `onnx.ModelProto` in memory (as `Model.to_onnx` returns it) as a graph."""
    from .graph import build_graph
    return build_graph(model, where)
