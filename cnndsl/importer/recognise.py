"""ONNX nodes -> cnndsl layers. One handler per ONNX op type (`HANDLERS`); a few fused
patterns (x * sigmoid(x) as silu, MatMul + Add as linear, Clip(0, 6) as relu6) are found
by looking at the node that alone consumes a value. A node no handler expresses is
collected with the reason, so that every one is reported at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .graph import Graph, OnnxNode


@dataclass
class Layer:
    op: str                      # the cnndsl layer kind
    args: list[str]              # positional arguments, as written
    kwargs: dict[str, str]       # keyword arguments, as written (defaults left out)
    inputs: list[str]            # graph values read
    output: str                  # the graph value made
    source: str                  # the ONNX node's name
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # by state_dict suffix
    parts: list[list[Layer]] = field(default_factory=list)  # residual, branch, block call
    block: object = None  # the Block a call calls
    count: int = 1  # `* count`
    implicit_shortcut: bool = False  # a residual whose shortcut the checker would write

    def flat(self) -> list[Layer]:
        """The source layers this step stands for, in the order the spec's IR has them."""
        if not self.parts:
            return [self]
        inner = [x for part in self.parts for s in part for x in s.flat()]
        return inner if self.block is not None else [*inner, self]

    def call(self) -> str:
        parts = [*self.args, *(f"{k}={v}" for k, v in self.kwargs.items())]
        return f"{self.op}({', '.join(parts)})" if parts else self.op


@dataclass
class Unsupported:
    node: str
    op_type: str
    why: str


class Inexpressible(Exception):  # noqa: N818 - a reason, not a failure
    """A node this importer cannot express, with the reason."""


def num(value) -> str:
    """A number as the language writes it: ints plain, floats by float32's shortest form."""
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) < 2**31:
        return str(int(value))
    return str(np.float32(value))


def pair(values) -> str:
    values = [int(v) for v in values]
    if len(values) == 2 and values[0] != values[1]:
        return f"({values[0]}, {values[1]})"
    return str(values[0])


class Recogniser:
    def __init__(self, graph: Graph):
        self.g = graph
        self.consumers: dict[str, list[OnnxNode]] = {}
        for n in graph.nodes:
            for x in set(n.inputs):
                self.consumers.setdefault(x, []).append(n)
        self.rank = {name: len(shape) + 1 for name, shape in graph.inputs.items()}
        self.alias: dict[str, str] = {}
        self.pooled: set[str] = set()
        self.absorbed: set[int] = set()  # nodes fused into an earlier layer
        self.layers: list[Layer] = []
        self.unsupported: list[Unsupported] = []

    def run(self) -> tuple[list[Layer], list[Unsupported]]:
        for n in self.g.nodes:
            if id(n) in self.absorbed:
                continue
            handler = HANDLERS.get(n.op_type)
            try:
                if handler is None:
                    raise Inexpressible("no cnndsl layer is this ONNX op")
                if any(x and self.value(x) is None for x in n.inputs[:1]) and \
                        n.op_type not in ("Concat", "Add", "Mul"):
                    raise Inexpressible("its input is a constant, not a tensor of the network")
                handler(self, n)
            except Inexpressible as why:
                self.unsupported.append(Unsupported(n.name, n.op_type, str(why)))
        return self.layers, self.unsupported

    # --- helpers -------------------------------------------------------------
    def value(self, name: str) -> str | None:
        """The network tensor a value is (through aliases), None for constants."""
        name = self.alias.get(name, name)
        return None if name in self.g.constants else name

    def const(self, n: OnnxNode, i: int, what: str) -> np.ndarray | None:
        if i >= len(n.inputs) or not n.inputs[i]:
            return None
        name = n.inputs[i]
        if name not in self.g.constants:
            raise Inexpressible(f"its {what} is computed, not a stored tensor")
        return self.g.constants[name]

    def only_user(self, value: str) -> OnnxNode | None:
        users = self.consumers.get(value, [])
        if len(users) == 1 and value not in self.g.outputs:
            return users[0]
        return None

    def add(self, n: OnnxNode, op: str, args=(), kwargs=None, inputs=None, weights=None,
            rank: int | None = None, output: str | None = None) -> None:
        inputs = [self.value(x) for x in (inputs or n.inputs[:1])]
        output = output or n.outputs[0]
        self.layers.append(Layer(op, list(args), dict(kwargs or {}), inputs, output, n.name,
                                 {k: np.ascontiguousarray(v, np.float32)
                                  for k, v in (weights or {}).items()}))
        self.rank[output] = rank if rank is not None else self.rank.get(inputs[0], 4)
        if op in ("global_avgpool", "global_maxpool") or (
                inputs[0] in self.pooled and len(inputs) == 1 and op != "flatten"):
            self.pooled.add(output)  # 1 x 1 per channel: a gate

    def in_rank(self, n: OnnxNode) -> int:
        return self.rank.get(self.value(n.inputs[0]), 4)


def _window(n: OnnxNode, kernel_dims: int = 2) -> dict:
    a = n.attrs
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Inexpressible(f"auto_pad={a['auto_pad']} (write explicit pads)")
    pads = list(a.get("pads", [0] * 2 * kernel_dims))
    if len(pads) != 4:
        raise Inexpressible("only 2-D windows are layers of cnndsl")
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise Inexpressible(f"asymmetric padding {pads}")
    return {"pads": pads[:2], "strides": list(a.get("strides", [1, 1])),
            "dilations": list(a.get("dilations", [1, 1]))}


def conv(r: Recogniser, n: OnnxNode) -> None:
    w, b = r.const(n, 1, "weight"), r.const(n, 2, "bias")
    if w is None or w.ndim != 4:
        raise Inexpressible("only 2-D convolutions are layers of cnndsl")
    win = _window(n)
    kernel = n.attrs.get("kernel_shape", list(w.shape[2:]))
    kw = _conv_kwargs(win, int(n.attrs.get("group", 1)), b is None)
    weights = {"weight": w, **({"bias": b} if b is not None else {})}
    r.add(n, "conv", [str(w.shape[0]), pair(kernel)], kw, weights=weights)


def _conv_kwargs(win: dict, groups: int, no_bias: bool) -> dict:
    kw = {}
    if win["strides"] != [1, 1]:
        kw["stride"] = pair(win["strides"])
    if win["pads"] != [0, 0]:
        kw["padding"] = pair(win["pads"])
    if win["dilations"] != [1, 1]:
        kw["dilation"] = pair(win["dilations"])
    if groups != 1:
        kw["groups"] = str(groups)
    if no_bias:
        kw["bias"] = "false"
    return kw


def conv_transpose(r: Recogniser, n: OnnxNode) -> None:
    w, b = r.const(n, 1, "weight"), r.const(n, 2, "bias")
    if w is None or w.ndim != 4:
        raise Inexpressible("only 2-D transposed convolutions are layers of cnndsl")
    if "output_shape" in n.attrs:
        raise Inexpressible("output_shape (write output_padding)")
    win = _window(n)
    groups = int(n.attrs.get("group", 1))
    kw = _conv_kwargs(win, groups, b is None)
    out_pad = list(n.attrs.get("output_padding", [0, 0]))
    if out_pad != [0, 0]:
        kw = {**kw, "output_padding": pair(out_pad)}
        kw = {k: kw[k] for k in ("stride", "padding", "output_padding", "dilation", "groups",
                                 "bias") if k in kw}
    kernel = n.attrs.get("kernel_shape", list(w.shape[2:]))
    weights = {"weight": w, **({"bias": b} if b is not None else {})}
    r.add(n, "conv_transpose", [str(w.shape[1] * groups), pair(kernel)], kw, weights=weights)


def batchnorm(r: Recogniser, n: OnnxNode) -> None:
    if n.attrs.get("training_mode", 0):
        raise Inexpressible("training_mode=1")
    scale, bias, mean, var = (r.const(n, i, k) for i, k in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    eps = n.attrs.get("epsilon", 1e-5)
    kw = {} if np.float32(eps) == np.float32(1e-5) else {"eps": num(eps)}
    r.add(n, "batchnorm", [], kw, weights={"weight": scale, "bias": bias,
                                          "running_mean": mean, "running_var": var})


def _pool(op: str) -> Callable[[Recogniser, OnnxNode], None]:
    def handler(r: Recogniser, n: OnnxNode) -> None:
        win = _window(n)
        kernel = list(n.attrs["kernel_shape"])
        kw = {"stride": pair(win["strides"])} if win["strides"] != kernel else {}
        if win["pads"] != [0, 0]:
            kw["padding"] = pair(win["pads"])
        if op == "maxpool" and win["dilations"] != [1, 1]:
            kw["dilation"] = pair(win["dilations"])
        if n.attrs.get("ceil_mode", 0):
            kw["ceil_mode"] = "true"
        if op == "avgpool" and win["pads"] != [0, 0] and not n.attrs.get("count_include_pad"):
            kw["count_include_pad"] = "false"
        if op == "maxpool" and len(n.outputs) > 1 and n.outputs[1]:
            raise Inexpressible("MaxPool's indices output")
        r.add(n, op, [pair(kernel)], kw)
    return handler


def _plain(op: str, rank: int | None = None, *, ranks=(2, 4)):
    def handler(r: Recogniser, n: OnnxNode) -> None:
        if r.in_rank(n) not in ranks:
            raise Inexpressible(f"on a rank-{r.in_rank(n)} tensor")
        r.add(n, op, rank=rank)
    return handler


def _softmax(op: str):
    def handler(r: Recogniser, n: OnnxNode) -> None:
        axis = n.attrs.get("axis", -1)
        rank = r.in_rank(n)
        if axis % rank != 1:
            raise Inexpressible(f"over axis {axis} of a rank-{rank} tensor (cnndsl's "
                                "is over channels)")
        r.add(n, op)
    return handler


def flatten(r: Recogniser, n: OnnxNode) -> None:
    if n.attrs.get("axis", 1) != 1:
        raise Inexpressible("Flatten from an axis other than 1")
    r.add(n, "flatten", rank=2)


def reshape(r: Recogniser, n: OnnxNode) -> None:
    shape = r.const(n, 1, "shape")
    if shape is None or list(shape) not in ([0, -1], [1, -1]) or r.in_rank(n) != 4:
        raise Inexpressible("a Reshape other than a flatten")
    r.add(n, "flatten", rank=2)


def gemm(r: Recogniser, n: OnnxNode) -> None:
    a = n.attrs
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise Inexpressible("Gemm with transA, alpha or beta")
    w, b = r.const(n, 1, "weight"), r.const(n, 2, "bias")
    if w.ndim != 2 or r.in_rank(n) != 2:
        raise Inexpressible("not a fully connected layer")
    w = w if a.get("transB", 0) else w.T
    _linear(r, n, w, b)


def _linear(r: Recogniser, n: OnnxNode, w, b, output: str | None = None) -> None:
    if b is not None:
        b = np.asarray(b).reshape(-1)
        if b.shape != (w.shape[0],):
            raise Inexpressible("a bias that is not one per output feature")
    kw = {} if b is not None else {"bias": "false"}
    weights = {"weight": w, **({"bias": b} if b is not None else {})}
    r.add(n, "linear", [str(w.shape[0])], kw, weights=weights, rank=2, output=output)


def matmul(r: Recogniser, n: OnnxNode) -> None:
    w = r.const(n, 1, "weight")
    if w.ndim != 2 or r.in_rank(n) != 2:
        raise Inexpressible("not a fully connected layer")
    user = r.only_user(n.outputs[0])
    bias, output = None, None
    if user is not None and user.op_type == "Add":
        other = [x for x in user.inputs if x != n.outputs[0]]
        if len(other) == 1 and other[0] in r.g.constants:
            bias, output = r.g.constants[other[0]], user.outputs[0]
            r.absorbed.add(id(user))
    _linear(r, n, w.T, bias, output)


def _join(op: str):
    def handler(r: Recogniser, n: OnnxNode) -> None:
        xs = [r.value(x) for x in n.inputs]
        if any(x is None for x in xs):
            raise Inexpressible(f"a {n.op_type} with a stored tensor (only tensors of the network "
                       "are joined)")
        if op == "concat" and n.attrs.get("axis") % r.in_rank(n) != 1:
            raise Inexpressible("Concat along an axis other than channels")
        r.add(n, op, [], inputs=list(n.inputs))
    return handler


def mul(r: Recogniser, n: OnnxNode) -> None:
    """A gate (1 x 1 per channel, from a global pool) goes last: cnndsl's mul broadcasts
    the later tensors."""
    if len(n.inputs) == 2 and r.value(n.inputs[0]) in r.pooled:
        n = OnnxNode(n.name, n.op_type, n.inputs[::-1], n.outputs, n.attrs)
    _join("mul")(r, n)


def sigmoid(r: Recogniser, n: OnnxNode) -> None:
    _gated(r, n, "silu") or r.add(n, "sigmoid")


def hardsigmoid(r: Recogniser, n: OnnxNode) -> None:
    if not (np.isclose(n.attrs.get("alpha", 0.2), 1 / 6) and n.attrs.get("beta", 0.5) == 0.5):
        raise Inexpressible("HardSigmoid with other constants than relu6(x + 3) / 6")
    _gated(r, n, "hardswish") or r.add(n, "hardsigmoid")


def _gated(r: Recogniser, n: OnnxNode, op: str) -> bool:
    """x * f(x) as one activation, where f(x) is used by that product alone."""
    user = r.only_user(n.outputs[0])
    if user is None or user.op_type != "Mul" or sorted(user.inputs) != sorted(
            [n.inputs[0], n.outputs[0]]):
        return False
    r.absorbed.add(id(user))
    r.add(n, op, output=user.outputs[0])
    return True


def clip(r: Recogniser, n: OnnxNode) -> None:
    low = r.const(n, 1, "minimum")
    high = r.const(n, 2, "maximum")
    low = None if low is None else float(low)
    high = None if high is None else float(high)
    if low == 0 and high == 6:
        r.add(n, "relu6")
    elif low == 0 and high is None:
        r.add(n, "relu")
    else:
        raise Inexpressible(f"Clip to [{low}, {high}] (relu6 and relu are layers)")


def leaky_relu(r: Recogniser, n: OnnxNode) -> None:
    slope = n.attrs.get("alpha", 0.01)
    r.add(n, "leaky_relu", kwargs={} if np.float32(slope) == np.float32(0.01) else
          {"slope": num(slope)})


def elu(r: Recogniser, n: OnnxNode) -> None:
    alpha = n.attrs.get("alpha", 1.0)
    r.add(n, "elu", kwargs={} if alpha == 1.0 else {"alpha": num(alpha)})


def gelu(r: Recogniser, n: OnnxNode) -> None:
    if n.attrs.get("approximate", "none") != "none":
        raise Inexpressible("tanh-approximated GELU")
    r.add(n, "gelu")


def reduce_mean(r: Recogniser, n: OnnxNode) -> None:
    axes = n.attrs.get("axes")
    if axes is None and len(n.inputs) > 1:
        axes = list(r.const(n, 1, "axes"))
    if r.in_rank(n) != 4 or sorted(a % 4 for a in (axes or [])) != [2, 3] or \
            not n.attrs.get("keepdims", 1):
        raise Inexpressible("a ReduceMean other than a global average pool")
    r.add(n, "global_avgpool")


def lrn(r: Recogniser, n: OnnxNode) -> None:
    a = n.attrs
    kw = {"size": str(a["size"])}
    for key, name, default in (("alpha", "alpha", 1e-4), ("beta", "beta", 0.75),
                               ("bias", "k", 1.0)):
        if np.float32(a.get(key, default)) != np.float32(default):
            kw[name] = num(a[key])
    r.add(n, "lrn", kwargs=kw)


def alias(r: Recogniser, n: OnnxNode) -> None:
    if n.op_type == "Dropout" and len(n.outputs) > 1 and n.outputs[1]:
        raise Inexpressible("Dropout's mask output")
    r.alias[n.outputs[0]] = r.value(n.inputs[0])


HANDLERS: dict[str, Callable[[Recogniser, OnnxNode], None]] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "BatchNormalization": batchnorm,
    "MaxPool": _pool("maxpool"),
    "AveragePool": _pool("avgpool"),
    "GlobalAveragePool": _plain("global_avgpool", ranks=(4,)),
    "GlobalMaxPool": _plain("global_maxpool", ranks=(4,)),
    "ReduceMean": reduce_mean,
    "Flatten": flatten,
    "Reshape": reshape,
    "Gemm": gemm,
    "MatMul": matmul,
    "Add": _join("add"),
    "Mul": mul,
    "Concat": _join("concat"),
    "Relu": _plain("relu"),
    "Sigmoid": sigmoid,
    "Tanh": _plain("tanh"),
    "HardSigmoid": hardsigmoid,
    "HardSwish": _plain("hardswish"),
    "Clip": clip,
    "LeakyRelu": leaky_relu,
    "Elu": elu,
    "Gelu": gelu,
    "Softmax": _softmax("softmax"),
    "LogSoftmax": _softmax("log_softmax"),
    "LRN": lrn,
    "Identity": alias,
    "Dropout": alias,
}


def recognise(graph: Graph) -> tuple[list[Layer], list[Unsupported], list[str]]:
    """The layers, the nodes not expressed, and the graph's outputs as layers' outputs
    (an output an Identity makes is the value it copies)."""
    r = Recogniser(graph)
    layers, unsupported = r.run()
    return layers, unsupported, [r.alias.get(o, o) for o in graph.outputs]
