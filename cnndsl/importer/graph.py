"""An ONNX file read into a small, checked graph: nodes in dependency order, constants as
numpy arrays, the inputs' shapes. Everything a hostile file could do wrong (truncated,
a cycle, a tensor larger than it holds, an input nobody makes, external data outside its
folder) is an `E-onnx` error at the file, before anything is allocated for it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..diagnostics import CnnError, Diagnostic

MAX_FILE_BYTES = 4 * 2**30
MAX_NODES = 200_000
MAX_TENSOR_ELEMENTS = 2**31  # 8 GiB of float32: more is not a CNN we can check
OPSETS = range(13, 22)
_DTYPES = {1: np.float32, 7: np.int64, 6: np.int32, 11: np.float64}


def import_error(where: str, message: str, help: str | None = None) -> CnnError:
    return CnnError([Diagnostic(code="E-onnx", message=f"{where}: {message}", help=help)])


@dataclass
class OnnxNode:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict


@dataclass
class Graph:
    path: str
    inputs: dict[str, tuple]  # name -> (C, H, W) or (F,): the batch axis dropped
    outputs: list[str]
    nodes: list[OnnxNode]
    constants: dict[str, np.ndarray]
    opset: int
    model: object = field(repr=False, default=None)  # the onnx.ModelProto, for running it
    # every value's size per sample (the batch axis dropped; None where not known), from
    # ONNX's shape inference: what Slice's open ends, Reshape's 0s and Shape nodes read
    shapes: dict[str, tuple] = field(default_factory=dict)


def read_graph(path: str | Path) -> Graph:
    import onnx
    from google.protobuf.message import DecodeError
    path = Path(path)
    where = str(path)
    from ..files import open_regular
    try:  # a regular file only: a FIFO or a device would block or never end
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise import_error(where, f"{size:,} bytes is more than the "
                                   f"{MAX_FILE_BYTES:,} an imported model may have")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CnnError([Diagnostic(code="E-io", message=f"cannot read {path}: "
                                   f"{exc.strerror or exc}")]) from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise import_error(where, f"not a readable ONNX file ({exc or 'truncated'})",
                           "export it again; a truncated download cannot be read") from None
    if not model.HasField("graph") or not model.graph.node:
        raise import_error(where, "not an ONNX model: it has no graph nodes")
    _load_external(model, path.parent, where)
    return build_graph(model, where)


def _load_external(model, folder: Path, where: str) -> None:
    """External data files, only from the model's own folder, each read within its size."""
    from onnx import external_data_helper as ext
    base = folder.resolve()
    for tensor in ext._get_all_tensors(model):
        if not ext.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = Path(info.get("location", ""))
        target = (base / location).resolve()
        if location.is_absolute() or base not in target.parents or not target.is_file():
            raise import_error(where, f"tensor {_shown(tensor.name)} keeps its data in "
                               f"{_shown(str(location))}, which is not a file in the model's "
                               "folder")
        expected = _elements(tensor, where) * np.dtype(_dtype(tensor, where)).itemsize
        offset, length = int(info.get("offset", 0)), int(info.get("length", expected))
        if length != expected or offset + length > target.stat().st_size:
            raise import_error(where, f"tensor {_shown(tensor.name)}: its external data "
                               f"({length:,} bytes at {offset:,}) does not hold its "
                               f"{expected:,} bytes")
        with open(target, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(length)
        del tensor.external_data[:]
        tensor.data_location = 0


def _shown(name: str) -> str:
    """A name from the file, safe to print: escapes, not control characters."""
    return repr(name)[:80]


def _elements(tensor, where: str) -> int:
    count = 1
    for d in tensor.dims:
        if d < 0:
            raise import_error(where, f"tensor {_shown(tensor.name)} has a negative size")
        count *= d
        if count > MAX_TENSOR_ELEMENTS:
            raise import_error(where, f"tensor {_shown(tensor.name)} declares "
                               f"{' x '.join(map(str, tensor.dims))} elements, more than "
                               f"{MAX_TENSOR_ELEMENTS:,}")
    return count


def _dtype(tensor, where: str):
    if tensor.data_type not in _DTYPES:
        raise import_error(where, f"tensor {_shown(tensor.name)} has ONNX data type "
                           f"{tensor.data_type}; float32 weights (and int64 shapes) are read")
    return _DTYPES[tensor.data_type]


def to_array(tensor, where: str) -> np.ndarray:
    """A TensorProto as an array, its declared size checked against what it holds."""
    from onnx import numpy_helper
    count, dtype = _elements(tensor, where), _dtype(tensor, where)
    held = (len(tensor.raw_data) // np.dtype(dtype).itemsize if tensor.raw_data else
            max(len(tensor.float_data), len(tensor.int64_data), len(tensor.int32_data),
                len(tensor.double_data)))
    if held != count:
        raise import_error(where, f"tensor {_shown(tensor.name)} declares "
                           f"{' x '.join(map(str, tensor.dims)) or 'a scalar'} ({count:,} "
                           f"elements) but holds {held:,}")
    return np.array(numpy_helper.to_array(tensor))


def build_graph(model, where: str) -> Graph:
    from onnx import helper
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset not in OPSETS:
        raise import_error(where, f"opset {opset}; ONNX opsets 13 to 21 are read",
                           "convert it: onnx.version_converter.convert_version(model, 18)")
    g = model.graph
    if len(g.node) > MAX_NODES:
        raise import_error(where, f"{len(g.node):,} nodes, more than {MAX_NODES:,}")
    constants = {t.name: to_array(t, where) for t in g.initializer}
    nodes = []
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        if n.domain not in ("", "ai.onnx"):
            nodes.append(OnnxNode(name, f"{n.domain}.{n.op_type}", list(n.input),
                                  list(n.output), {}))
            continue
        attrs = {}
        for a in n.attribute:
            if a.type == a.TENSOR:
                attrs[a.name] = to_array(a.t, where)
            elif a.type in (a.GRAPH, a.GRAPHS):
                attrs[a.name] = None  # subgraphs (If, Loop): not a layer of ours
            else:
                attrs[a.name] = helper.get_attribute_value(a)
                if isinstance(attrs[a.name], bytes):
                    attrs[a.name] = attrs[a.name].decode("utf-8", "replace")
        if n.op_type == "Constant":
            if "value" not in attrs or len(n.output) != 1:
                raise import_error(where, f"Constant node {_shown(name)} has no tensor value")
            constants[n.output[0]] = attrs["value"]
            continue
        if n.op_type == "Identity" and n.input and n.input[0] in constants:
            constants[n.output[0]] = constants[n.input[0]]  # torch's copies of a weight
            continue
        if n.op_type == "Transpose" and n.input and n.input[0] in constants:
            # torch's Linear inside a network kept channels-last: its weight, transposed
            constants[n.output[0]] = np.transpose(constants[n.input[0]], attrs.get("perm"))
            continue
        nodes.append(OnnxNode(name, n.op_type, list(n.input), list(n.output), attrs))
    inputs = {}
    for v in g.input:
        if v.name in constants:
            continue
        inputs[v.name] = _input_shape(v, where)
    if not inputs:
        raise import_error(where, "the graph has no input")
    outputs = [v.name for v in g.output]
    graph = Graph(where, inputs, outputs, _ordered(nodes, inputs, constants, outputs, where),
                  constants, opset, model, _shapes(model))
    return graph


def _shapes(model) -> dict[str, tuple]:
    """Sizes by ONNX's own shape inference (with its propagation of shape arithmetic);
    a model it cannot infer keeps what its file declares."""
    import onnx
    source, (model, ranges) = model, _without_ranges(model)
    with contextlib.suppress(Exception):  # inference is a help here, not a check
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes, types, full = {}, {}, {}
    g = model.graph
    for v in [*g.input, *g.value_info, *g.output]:
        if v.name in ranges:
            continue
        t = v.type.tensor_type
        if v.type.HasField("tensor_type"):
            types[v.name] = t.elem_type
        if v.type.HasField("tensor_type") and t.HasField("shape"):
            full[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                 for d in t.shape.dim)
        if v.type.HasField("tensor_type") and t.HasField("shape") and t.shape.dim:
            shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                   for d in t.shape.dim[1:])
    missing = [o for n in g.node for o in n.output
               if o and (o not in shapes or None in shapes[o]) and types.get(o) == 1]
    if missing:  # a size computed from the batch's (x.view(b, c, -1)): inferred at batch 1
        shapes.update(_at_batch_one(model, missing, ranges))
        missing = [o for o in missing if o not in shapes or None in shapes[o]]
    if missing and _bounded(source.graph, full):  # inference stops at a Reshape whose
        # shape is computed (Div): measured
        shapes.update(_measured(source, missing))
    return shapes


def _without_ranges(model):
    """The model for inference: ONNX's propagation of values makes a Range's whole output
    (10^12 numbers from a hostile file: memory until the process dies), so each Range is
    taken out and its output is an input of unknown length. With the names so made."""
    import onnx
    from onnx import TensorProto, helper
    ranges = [n for n in model.graph.node if n.op_type == "Range"]
    if not ranges:
        return model, set()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    kept = [n for n in probe.graph.node if n.op_type != "Range"]
    del probe.graph.node[:]
    probe.graph.node.extend(kept)
    types = {t.name: t.data_type for t in model.graph.initializer}
    types.update({n.output[0]: a.t.data_type for n in model.graph.node
                  if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    made = set()
    for k, n in enumerate(ranges):
        for o in n.output:
            made.add(o)
            probe.graph.input.append(helper.make_tensor_value_info(
                o, types.get(n.input[0], TensorProto.INT64), [f"range{k}"]))
    return probe, made


MAX_ROUNDS = 32  # a round per chain of sizes inference cannot follow (YOLOv8n at 64 x 64: 7)


def _at_batch_one(model, names: list[str], ranges: set[str]) -> dict[str, tuple]:
    """Sizes per sample that ONNX's inference leaves open, without running the file:
    inferred with the batch set to 1, and again after each round of size arithmetic it
    does not follow (Ultralytics' chunk: Slice ends from Shape -> Gather -> Add -> Div)
    is computed here (fold.py) and written into the inputs that read it."""
    import onnx
    from onnx import helper, numpy_helper
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for v in probe.graph.input:
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value") and v.name not in ranges:
            dims[0].dim_value = 1
    del probe.graph.value_info[:]
    for v in probe.graph.output:
        v.type.tensor_type.ClearField("shape")
    # the weights as inputs of their sizes: inference reads no values of theirs, and each
    # round copies the model
    weights = [t for t in probe.graph.initializer if _elements(t, "") > 64]
    probe.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in weights)
    small = {t.name: numpy_helper.to_array(t) for t in probe.graph.initializer
             if _elements(t, "") <= 64}
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in small.items())
    full: dict[str, tuple] = {}
    for _ in range(MAX_ROUNDS):
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
        except Exception:  # noqa: BLE001 - inference is a help here, not a check
            break
        full = _dims(inferred.graph)
        if not _write_sizes(probe.graph, small, full):
            break
    return {x: full[x][1:] for x in names if full.get(x) and None not in full[x] and
            full[x][0] == 1}


def _dims(graph) -> dict[str, tuple]:
    out = {}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        t = v.type.tensor_type
        if v.type.HasField("tensor_type") and t.HasField("shape"):
            out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                for d in t.shape.dim)
    return out


def _write_sizes(graph, small: dict, full: dict) -> bool:
    """Fold the size arithmetic the inference reached (at batch 1); each integer value so
    computed that a node reads becomes a stored tensor there. Whether any did."""
    from onnx import helper, numpy_helper

    from .fold import BATCH, fold, is_numbers
    known = dict(small)
    for n in graph.node:
        attrs = {a.name: numpy_helper.to_array(a.t) if a.type == a.TENSOR else
                 helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Constant" and "value" in attrs:
            known[n.output[0]] = attrs["value"]
            continue
        ins = [known.get(x) for x in n.input]
        shape = full.get(n.input[0]) if n.input else None
        out = fold(n.op_type, attrs, ins, lambda s=shape: None if s is None else s[1:])
        if out is not None and n.op_type == "Shape" and shape is not None:
            out = np.array([1 if v is BATCH else v for v in out], dtype=object)
        if out is not None and is_numbers(out) and out.size <= 64:
            known[n.output[0]] = out
    written = False
    for n in graph.node:
        for i, x in enumerate(n.input):
            value = known.get(x)
            if value is None or x in small or n.op_type == "Constant" or \
                    value.dtype.kind not in "iuO":
                continue
            name = f"{x}#size"
            if name not in small:
                small[name] = np.asarray(value, np.int64)
                graph.initializer.append(numpy_helper.from_array(small[name], name))
            n.input[i] = name
            written = True
    return written


MAX_MEASURED_INPUT = 2**24  # values per sample: a larger input is not run to measure
GROWING = frozenset({"Expand", "Tile", "ConstantOfShape", "Range", "Loop", "Scan", "If",
                     "Upsample", "Resize", "Pad", "ConvTranspose"})
MAX_GROWTH = 64  # a Pad's pads, a Resize's scale, a ConvTranspose's stride


def _bounded(g, shapes: dict[str, tuple]) -> bool:
    """Whether running the file cannot make a tensor far larger than its input and its
    weights (a hostile file could ask for terabytes): growing ops only with small,
    stored factors."""
    stored = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            return False
        if n.op_type not in GROWING or (n.op_type == "ConstantOfShape" and shapes.get(
                n.input[0]) == (1,)):  # a vector (torch's F.pad computes its pads so)
            continue
        if n.op_type == "ConvTranspose":
            strides = next((list(a.ints) for a in n.attribute if a.name == "strides"), [1])
            if max(strides) <= MAX_GROWTH:
                continue
            return False
        factor = {"Pad": 1, "Resize": 2}.get(n.op_type)
        if factor is None or len(n.input) <= factor:
            return False
        if n.input[factor] not in stored:
            continue  # computed (torch's F.pad): an allocation that large fails in the run
        # and the sizes are then not measured
        from onnx import numpy_helper
        values = numpy_helper.to_array(stored[n.input[factor]])
        if values.size > 16 or (values.size and float(np.max(np.abs(values))) > MAX_GROWTH):
            return False
    return True


def _measured(model, names: list[str]) -> dict[str, tuple]:
    """The sizes of float values, from one run at batch 1 (onnxruntime)."""
    import onnx
    import onnxruntime as ort
    try:
        feeds = {}
        for v in model.graph.input:
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim[1:]]
            if not dims or min(dims) <= 0 or int(np.prod(dims)) > MAX_MEASURED_INPUT:
                return {}
            feeds[v.name] = np.zeros((1, *dims), np.float32)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.helper.make_tensor_value_info(x, 1, None)
                                  for x in names)
        session = ort.InferenceSession(probe.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        feeds = {k: v for k, v in feeds.items()
                 if k in {i.name for i in session.get_inputs()}}
        return {x: tuple(a.shape[1:]) for x, a in zip(names, session.run(names, feeds),
                                                      strict=True)}
    except Exception:  # noqa: BLE001 - sizes are a help here; the checker decides
        return {}


def _input_shape(v, where: str) -> tuple:
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type") or t.elem_type != 1:
        raise import_error(where, f"input {_shown(v.name)} is not a float32 tensor")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(dims) not in (2, 4) or any(d is None or d <= 0 for d in dims[1:]):
        shown = " x ".join("?" if d is None else str(d) for d in dims)
        raise import_error(where, f"input {_shown(v.name)} has shape [{shown}]; an image "
                           "batch N x C x H x W (or N x features) with fixed C, H, W is read")
    return tuple(dims[1:])


def _ordered(nodes, inputs, constants, outputs, where: str) -> list[OnnxNode]:
    """Dependency order (Kahn); a missing input or a cycle is named."""
    made = {o: n for n in nodes for o in n.outputs if o}
    known = set(inputs) | set(constants)
    for n in nodes:
        for x in n.inputs:
            if x and x not in made and x not in known:
                raise import_error(where, f"node {_shown(n.name)} ({n.op_type}) reads "
                                   f"{_shown(x)}, which no node, input or initializer makes")
    for o in outputs:
        if o not in made and o not in inputs:
            raise import_error(where, f"output {_shown(o)} is made by no node")
    waiting = {id(n): sum(1 for x in n.inputs if x in made) for n in nodes}
    users: dict[str, dict[int, OnnxNode]] = {}
    for n in nodes:
        for x in n.inputs:
            if x in made:
                users.setdefault(x, {})[id(n)] = n
    ready = [n for n in nodes if waiting[id(n)] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for o in n.outputs:
            for u in users.get(o, {}).values():
                waiting[id(u)] -= sum(1 for x in u.inputs if x == o)
                if waiting[id(u)] == 0:
                    ready.append(u)
    if len(order) != len(nodes):
        stuck = [n.name for n in nodes if waiting[id(n)] > 0][:5]
        raise import_error(where, "the graph has a cycle through "
                           + ", ".join(_shown(s) for s in stuck))
    return order
