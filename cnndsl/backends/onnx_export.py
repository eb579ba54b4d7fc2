"""ONNX back end: an ONNX model written directly from the checked IR (no tracing, no torch).

Node and initializer names come from the spec (initializers use state_dict names, e.g.
`layer1.0.conv1.weight`), the batch axis is dynamic, and batch norm that follows a conv is
folded into it (exact in eval mode) unless `fold_batchnorm=False`.

Opset 18 by default: every op here exists in it with the semantics PyTorch uses, and it is
read by onnxruntime >= 1.14 and TensorRT >= 8.6; `opset >= 20` writes GELU as one node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..diagnostics import CnnError, Diagnostic
from ..ir import Network, Node
from ..weights import Weights
from .onnx_ops import OnnxGenerator, _identity

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(13, 22)
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with room for the graph


class GraphBuilder:
    def __init__(self, ir: Network, weights: Weights, opset: int,
                 generator: type[OnnxGenerator] = OnnxGenerator):
        self.ir = ir
        self.weights = weights
        self.opset = opset
        self.generator = generator
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.value_of: dict[str, str] = {i.name: i.name for i in ir.inputs}
        self.known_shapes: list[onnx.ValueInfoProto] = []

    # ---- used by handlers -----------------------------------------------------------------

    def op(self, op_type: str, inputs: list[str], node: Node, output: str | None = None,
           **attrs) -> str:
        output = output or node.name
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def declare_shape(self, value: str, node: Node) -> str:
        """Give `value` the checked shape of `node` (batch first) in the graph, for ops
        whose output ONNX shape inference cannot name (a Resize to computed sizes loses
        the batch's name)."""
        self.known_shapes.append(helper.make_tensor_value_info(
            value, TensorProto.FLOAT, ["batch", *node.shape]))
        return value

    def alias(self, node: Node, value: str) -> str:
        return value

    def feeds(self, node: Node, ops: tuple[str, ...]) -> bool:
        """Whether the node's value reaches a node of one of `ops`, directly or through
        nodes that write no ONNX node of their own (dropout, identity)."""
        pending = [node.name]
        while pending:
            for name in self.ir.users(pending.pop()):
                user = self.ir.producer(name)
                if user is None:  # a network output
                    continue
                if user.op in ops:
                    return True
                if self.generator.TRANSFORMS.get(user.op) is _identity:  # writes no node
                    pending.append(user.name)
        return False

    def weight(self, node: Node, suffix: str) -> str:
        name = f"{node.shares or node.name}.{suffix}"
        if name not in self.initializers:  # a shared layer's second application reuses it
            self.constant(name, np.asarray(self.weights.pop(name), np.float32))
        return name

    def take(self, node: Node, suffix: str) -> tuple[str, np.ndarray | None]:
        """A tensor's name and its array, to be written in another form (None when a
        shared layer's first application wrote it already)."""
        name = f"{node.shares or node.name}.{suffix}"
        if name in self.initializers:
            return name, None
        return name, np.asarray(self.weights.pop(name), np.float32)

    def constant(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def reduce_mean(self, x: str, axes: list[int], node: Node, output: str) -> str:
        """ReduceMean keeping the axes (its `axes` became an input at opset 18)."""
        if self.opset >= 18:
            axes_value = self.constant(f"{output}.axes", np.array(axes, np.int64))
            return self.op("ReduceMean", [x, axes_value], node, output=output, keepdims=1)
        return self.op("ReduceMean", [x], node, output=output, axes=axes, keepdims=1)

    # ---- assembly -----------------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        for node in self.ir.nodes:
            xs = [self.value_of[i] for i in node.inputs]
            handler = self.generator.TRANSFORMS.get(node.op)
            if handler is None:  # tests/test_registry.py keeps this from happening
                raise NotImplementedError(f"the ONNX back end has no handler for `{node.op}`")
            self.value_of[node.name] = handler(self, node, xs)
        return self.model()

    def model(self) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, ["batch", *i.shape])
                  for i in self.ir.inputs]
        outputs, renames = [], []
        taken = {v for n in self.nodes for v in n.output} | {i.name for i in self.ir.inputs}
        for node_name, name in zip(self.ir.outputs, self.ir.output_names or self.ir.outputs):
            value = self.value_of[node_name]
            if name != value and name in taken:  # the spec's name is another value's
                name = node_name
            if value != name:  # a spec name, or a trailing dropout, which emits nothing
                renames.append(helper.make_node("Identity", [value], [name], name=name))
            taken.add(name)
            outputs.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["batch", *self.ir.shape_of(node_name)]))
        graph = helper.make_graph(self.nodes + renames, self.ir.name, inputs, outputs,
                                  list(self.initializers.values()),
                                  value_info=self.known_shapes)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="cnndsl",
                                  producer_version=__version__,
                                  doc_string=f"{self.ir.name} from {_utf8(self.ir.file)}")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model


def to_onnx(ir: Network, weights: Weights, opset: int = DEFAULT_OPSET,
            fold_batchnorm: bool = True, generator: type[OnnxGenerator] = OnnxGenerator
            ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The model, and for each IR node the ONNX value that holds its output (batch norm
    folded into the conv before it, by the IR pass cnndsl.passes.fold_batchnorm, unless
    `fold_batchnorm=False`).

    Takes `weights` over: each array leaves the dict as it becomes an initializer, so the
    weights are held about once, not twice (pass a copy to keep yours)."""
    if opset not in SUPPORTED_OPSETS:
        raise CnnError([Diagnostic(code="E-arg", message=f"opset {opset} is not supported",
                                   help=f"use {SUPPORTED_OPSETS.start}..."
                                   f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})")])
    folded: dict[str, str] = {}
    if fold_batchnorm:
        from ..passes import fold_batchnorm as fold
        ir, weights, folded = fold(ir, weights)
    builder = GraphBuilder(ir, weights, opset, generator)
    model = builder.build()
    values = dict(builder.value_of)
    values.update({bn: values[conv] for bn, conv in folded.items()})
    return model, values


def save(model: onnx.ModelProto, path: str | Path,
         external_over: int = EXTERNAL_DATA_BYTES) -> None:
    """Write atomically; a model whose weights pass `external_over` bytes keeps them in a
    data file beside it (protobuf cannot hold more than 2 GB).

    The graph and its data are one unit: the data goes to a new file of its own name
    (`m.onnx.<random>.data`), the graph that names it replaces the old graph last (the
    commit), and only then is the old data removed. A crash at any point leaves the old
    pair or the new one, never a mix; what a killed run left is removed by the next."""
    from ..atomic import atomic_path, check_target
    path = Path(path)
    check_target(path)
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size <= external_over:
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp))
        _remove_data_files(path, keep=None)
        return
    try:
        _save_with_data(model, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _save_with_data(model: onnx.ModelProto, path: Path) -> None:
    import os
    import secrets
    import tempfile

    from ..atomic import _mode_for, adopt
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    data = f"{path.name}.{secrets.token_hex(4)}.data"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving with external data rewrites the proto it is given
    mode = _mode_for(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as work:
        graph = os.path.join(work, path.name)
        onnx.save_model(copy, graph, save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data, size_threshold=1024)
        for name in (data, path.name):
            with open(os.path.join(work, name), "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(os.path.join(work, name), mode)
        adopt(graph, path)  # the old graph's owner too
        os.replace(os.path.join(work, data), path.parent / data)
        os.replace(graph, path)  # the commit: from here on the new pair is the file
    _fsync_dir(path.parent)
    _remove_data_files(path, keep=data)


def _data_files(path: Path) -> list[Path]:
    legacy = path.parent / f"{path.name}.data"
    return [p for p in path.parent.glob(f"{glob_escape(path.name)}.*.data")] + (
        [legacy] if legacy.exists() else [])


def glob_escape(name: str) -> str:
    import glob
    return glob.escape(name)


def _remove_data_files(path: Path, keep: str | None) -> None:
    """Data files of earlier saves of this graph (a pair is replaced, not added to)."""
    for data in _data_files(path):
        if data.name != keep and data.is_file():
            data.unlink(missing_ok=True)


def _remove_leftovers(path: Path) -> None:
    """Work folders of a run that was killed, and data no graph names any more."""
    import shutil
    for work in path.parent.glob(f".{glob_escape(path.name)}.*"):
        if work.is_dir():
            shutil.rmtree(work, ignore_errors=True)
    named = _referenced_data(path)
    for data in _data_files(path):
        if data.name not in named:
            data.unlink(missing_ok=True)


def _referenced_data(path: Path) -> set[str]:
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - no graph yet, or not ours
        return set()
    return {entry.value for t in graph.graph.initializer for entry in t.external_data
            if entry.key == "location"}


def _fsync_dir(folder: Path) -> None:
    import os
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utf8(text: str) -> str:
    """A path as protobuf can hold it: undecodable bytes of a file name escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
