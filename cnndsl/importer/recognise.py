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
    inner: list[Layer] = field(default_factory=list)  # a library block's layers, written
    # as one call (squeeze_excite), the join it ends in last; or a shared module's layers
    # where a label applies it again
    tensors: tuple[str, ...] = ()  # the initializers its weights are (shared.py)
    label: str | None = None  # a label to write, set where the spec applies it again
    shared: bool = False  # an application again: its weights are an earlier layer's

    def flat(self) -> list[Layer]:
        """The source layers this step stands for, in the order the spec's IR has them."""
        if self.inner:
            return list(self.inner)
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
    """A number as the language writes it: ints plain, floats by float32's shortest form;
    the language has no NaN or infinity (an epsilon, a slope or a pad value of NaN)."""
    if not np.isfinite(np.float32(value)):
        raise Inexpressible(f"the number {float(value)} (as float32, not finite)")
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
        self.folded: dict[str, np.ndarray] = {}  # shape arithmetic, computed (fold.py)
        # values the source holds channels-last (after a Transpose to N x H x W x C) that
        # our layer holds as C x H x W: per-pixel ops on them are written on channels
        self.nhwc: dict[str, str] = {}  # value -> the Transpose node that made it
        self.fused: dict[int, tuple[str, str, str]] = {}  # first node -> (op, input, output)
        self._at: dict | None = None  # a stored tensor's memory address -> its name
        # a folded value -> the network tensors whose sizes it was computed from, in order
        self.measured: dict[str, list[str]] = {}
        self.grids: dict[str, str] = {}  # a folded grid -> the network tensor written for it
        self.grid_elements = 0
        _find_gelus(self)

    def run(self) -> tuple[list[Layer], list[Unsupported]]:
        from .fold import MAX_ELEMENTS, MAX_FOLDED, fold
        for n in self.g.nodes:
            if id(n) in self.absorbed:
                continue
            if n.op_type in FOLDED:
                ins = [self.known(x) for x in n.inputs]
                if n.op_type == "Shape" and ins[0] is not None:  # of a stored tensor
                    ins = [np.array(ins[0].shape, np.int64)]
                    out = fold("Gather", {}, [ins[0], np.arange(len(ins[0]))], None)
                    out = out[n.attrs.get("start", 0):n.attrs.get("end", len(out))]
                else:  # a long stored tensor (a weight) is not arithmetic on sizes
                    ins = [None if x in self.g.constants and self.g.constants[x].size >
                           MAX_ELEMENTS else v for x, v in zip(n.inputs, ins, strict=True)]
                    out = fold(n.op_type, n.attrs, ins,
                               lambda n=n: self.g.shapes.get(n.inputs[0]))
                if out is not None and out.size > MAX_ELEMENTS:  # a grid: bounded in all
                    self.grid_elements += out.size
                    out = out if self.grid_elements <= MAX_FOLDED else None
                if out is not None:
                    self.folded[n.outputs[0]] = out
                    self.measured[n.outputs[0]] = self._measured_from(n)
                    continue
            handler = HANDLERS.get(n.op_type)
            try:
                if id(n) in self.fused:
                    op, x, output = self.fused[id(n)]
                    self.add(n, op, inputs=[x], output=output)
                    self._keep_layout(x, output)
                    continue
                if handler is None:
                    raise Inexpressible("no cnndsl layer is this ONNX op")
                if any(x and self.value(x) is None for x in n.inputs[:1]) and \
                        n.op_type not in ("Concat", "Add", "Mul", "Sub", "Div"):
                    raise Inexpressible("its input is a constant, not a tensor of the network")
                if n.op_type not in CHANNELS_LAST_OK:
                    for x in n.inputs:
                        if x in self.nhwc:
                            self._materialise(x)
                handler(self, n)
                if n.op_type in ELEMENTWISE and n.outputs:
                    self._keep_layout(n.inputs[0], n.outputs[0])
            except Inexpressible as why:
                self.unsupported.append(Unsupported(n.name, n.op_type, str(why)))
        return self.layers, self.unsupported

    # --- helpers -------------------------------------------------------------
    def value(self, name: str) -> str | None:
        """The network tensor a value is (through aliases), None for constants."""
        name = self.alias.get(name, name)
        return None if name in self.g.constants or name in self.folded else name

    def known(self, name: str) -> np.ndarray | None:
        if name in self.g.constants:
            return self.g.constants[name]
        return self.folded.get(name)

    def const(self, n: OnnxNode, i: int, what: str) -> np.ndarray | None:
        from .fold import is_numbers
        if i >= len(n.inputs) or not n.inputs[i]:
            return None
        name = n.inputs[i]
        if name in self.folded:
            if not is_numbers(self.folded[name]):
                raise Inexpressible(f"its {what} depends on the batch size")
            folded = self.folded[name]
            return folded if folded.dtype.kind == "f" else folded.astype(np.int64)
        if name not in self.g.constants:
            raise Inexpressible(f"its {what} is computed, not a stored tensor")
        return self.g.constants[name]

    def shape(self, name: str) -> tuple[int, ...] | None:
        """A value's size per sample, as the source holds it (None: not known)."""
        shape = self.g.shapes.get(name)
        return shape if shape is not None and None not in shape else None

    def _keep_layout(self, x: str, output: str) -> None:
        if x in self.nhwc:
            self.nhwc[output] = self.nhwc[x]

    def _materialise(self, name: str) -> None:
        """A channels-last value read by an op that needs it so: permuted, as the source."""
        source = self.nhwc.pop(name)
        x, output = self.value(name), name + "#nhwc"
        self.alias[name] = output
        self.layers.append(Layer("permute", ["(1, 2, 0)"], {}, [x], output, source))
        self.rank[output] = 4

    def only_user(self, value: str) -> OnnxNode | None:
        users = self.consumers.get(value, [])
        if len(users) == 1 and value not in self.g.outputs:
            return users[0]
        return None

    def add(self, n: OnnxNode, op: str, args=(), kwargs=None, inputs=None, weights=None,
            rank: int | None = None, output: str | None = None) -> None:
        inputs = [self.value(x) for x in (inputs or n.inputs[:1])]
        output = output or n.outputs[0]
        weights = weights or {}
        self.layers.append(Layer(op, list(args), dict(kwargs or {}), inputs, output, n.name,
                                 {k: np.ascontiguousarray(v, np.float32)
                                  for k, v in weights.items()},
                                 tensors=self._initializers(weights.values())))
        self.rank[output] = rank if rank is not None else self.rank.get(inputs[0], 4)
        if op in ("global_avgpool", "global_maxpool") or (
                inputs[0] in self.pooled and len(inputs) == 1 and op != "flatten"):
            self.pooled.add(output)  # 1 x 1 per channel: a gate

    def _measured_from(self, n: OnnxNode) -> list[str]:
        if n.op_type == "Shape" and self.value(n.inputs[0]) is not None:
            return [self.value(n.inputs[0])]
        return list(dict.fromkeys(t for x in n.inputs for t in self.measured.get(x, [])))

    def _initializers(self, arrays) -> tuple[str, ...]:
        """The stored tensors these weights are views of (found by their memory: a
        transposed or reshaped view starts where its tensor does); () where one is not."""
        if self._at is None:  # one array under two names (torch's Identity copies of
            # equal initializers, which are separate parameters): not known as either
            self._at = {}
            for k, a in self.g.constants.items():
                if a.size:
                    self._at[_address(a)] = None if _address(a) in self._at else k
        names = tuple(self._at.get(_address(a)) for a in arrays if a.size)
        return names if names and None not in names else ()

    def in_rank(self, n: OnnxNode) -> int:
        shape = self.g.shapes.get(n.inputs[0])
        if shape is not None and n.inputs[0] not in self.nhwc:
            return len(shape) + 1
        return self.rank.get(self.value(n.inputs[0]), 4)


def _address(array: np.ndarray) -> tuple:
    return (array.__array_interface__["data"][0], array.dtype.str)


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


def _target(r: Recogniser, n: OnnxNode) -> tuple[int, ...]:
    """A Reshape's size per sample: its first entry must keep the batch (0, the batch
    itself, or -1 with every other size given)."""
    from .fold import BATCH
    name = n.inputs[1]
    shape = r.folded.get(name)
    if shape is None:
        shape = r.const(n, 1, "shape")
    shape = list(shape)
    first, rest = shape[0], shape[1:]
    if not (first is BATCH or (isinstance(first, (int, np.integer)) and (
            first == 0 or (first == -1 and -1 not in rest)))):
        raise Inexpressible("a Reshape that does not keep the batch axis")
    if not all(isinstance(v, (int, np.integer)) for v in rest):
        raise Inexpressible("a Reshape whose sizes depend on the batch size")
    given = r.shape(n.inputs[0])
    out = r.shape(n.outputs[0])
    if out is not None:
        return out
    if given is None or (0 in rest and n.attrs.get("allowzero", 0)):
        raise Inexpressible("a Reshape of a tensor of unknown size")
    return tuple(given[i] if v == 0 else int(v) for i, v in enumerate(rest))


def reshape(r: Recogniser, n: OnnxNode) -> None:
    target = _target(r, n)
    given = r.shape(n.inputs[0])
    if len(target) == 1 and given is not None and len(given) == 3:
        r.add(n, "flatten", rank=2)
        return
    if _channel_shuffle(r, n, given, target) or _spread(r, n, given, target) or \
            _group_norm(r, n, given, target):
        return
    r.add(n, "reshape", [_tuple(target)], rank=len(target) + 1)


def _tuple(values) -> str:
    values = [str(int(v)) for v in values]
    return f"({values[0]},)" if len(values) == 1 else f"({', '.join(values)})"


def _channel_shuffle(r: Recogniser, n: OnnxNode, given, target) -> bool:
    """Reshape to G x C/G x H x W, swap the first two, reshape back: channel_shuffle(G)."""
    if given is None or len(given) != 3 or len(target) != 4 or \
            target[0] * target[1] != given[0] or tuple(target[2:]) != tuple(given[1:]):
        return False
    swap = r.only_user(n.outputs[0])
    if swap is None or swap.op_type != "Transpose" or list(swap.attrs.get("perm", [])) != \
            [0, 2, 1, 3, 4]:
        return False
    back = r.only_user(swap.outputs[0])
    if back is None or back.op_type != "Reshape" or r.shape(back.outputs[0]) != given:
        return False
    r.absorbed.update((id(swap), id(back)))
    r.add(n, "channel_shuffle", [str(target[0])], output=back.outputs[0])
    return True


def _group_norm(r: Recogniser, n: OnnxNode, given, target) -> bool:
    """Reshape to G x C/G*H*W, (x - mean) / sqrt(var + eps) over the last axis, reshape
    back, times a weight plus a bias per channel: groupnorm(G), as cnndsl writes it out."""
    if given is None or len(given) != 3 or len(target) != 2 or \
            target[0] * target[1] != given[0] * given[1] * given[2]:
        return False
    grouped = n.outputs[0]
    users = {u.op_type: u for u in r.consumers.get(grouped, [])}
    mean, centred = users.get("ReduceMean"), users.get("Sub")
    if len(users) != 2 or mean is None or centred is None or not _over_last(r, mean) or \
            list(centred.inputs) != [grouped, mean.outputs[0]]:
        return False
    users = {u.op_type: u for u in r.consumers.get(centred.outputs[0], [])}
    square, divide = users.get("Mul"), users.get("Div")
    if len(users) != 2 or square is None or divide is None or \
            list(square.inputs) != [centred.outputs[0]] * 2:
        return False
    chain, x = [], square
    for op in ("ReduceMean", "Add", "Sqrt"):
        x = r.only_user(x.outputs[0])
        if x is None or x.op_type != op:
            return False
        chain.append(x)
    var, shift, root = chain
    eps = next((r.g.constants[v] for v in shift.inputs if v in r.g.constants), None)
    if not _over_last(r, var) or eps is None or eps.size != 1 or \
            list(divide.inputs) != [centred.outputs[0], root.outputs[0]]:
        return False
    back = r.only_user(divide.outputs[0])
    if back is None or back.op_type != "Reshape" or r.shape(back.outputs[0]) != given:
        return False
    fused = [mean, centred, square, var, shift, root, divide, back]
    output, weights = back.outputs[0], {}
    scale = r.only_user(output)
    bias = r.only_user(scale.outputs[0]) if scale is not None else None
    if scale is not None and bias is not None and (scale.op_type, bias.op_type) == (
            "Mul", "Add"):
        w = next((r.g.constants[v] for v in scale.inputs if v in r.g.constants), None)
        b = next((r.g.constants[v] for v in bias.inputs if v in r.g.constants), None)
        if w is not None and b is not None and w.size == b.size == given[0]:
            weights = {"weight": w.reshape(-1), "bias": b.reshape(-1)}
            fused += [scale, bias]
            output = bias.outputs[0]
    kw = {} if np.float32(eps.reshape(-1)[0]) == np.float32(1e-5) else {
        "eps": num(float(eps.reshape(-1)[0]))}
    if not weights:
        kw["affine"] = "false"
    r.absorbed.update(id(f) for f in fused)
    r.add(n, "groupnorm", [str(int(target[0]))], kw, weights=weights, output=output)
    return True


def _over_last(r: Recogniser, n: OnnxNode) -> bool:
    """A ReduceMean over the last axis of a 3-axis value, keeping it."""
    axes = n.attrs.get("axes")
    if axes is None and len(n.inputs) > 1 and n.inputs[1] in r.g.constants:
        axes = list(r.g.constants[n.inputs[1]])
    return axes is not None and [int(a) % 3 for a in axes] == [2] and \
        n.attrs.get("keepdims", 1) == 1


def _spread(r: Recogniser, n: OnnxNode, given, target) -> bool:
    """Reshape to C x H x 1 x W x 1, Expand by s on the 1s, reshape to C x sH x sW: nearest
    upsampling by s (cnndsl's own ONNX for it)."""
    if given is None or len(given) != 3 or tuple(target) != (given[0], given[1], 1,
                                                              given[2], 1):
        return False
    expand = r.only_user(n.outputs[0])
    if expand is None or expand.op_type != "Expand" or expand.inputs[1] not in r.g.constants:
        return False
    repeats = [int(v) for v in r.g.constants[expand.inputs[1]]]
    back = r.only_user(expand.outputs[0])
    if len(repeats) != 6 or repeats[:3] != [1, 1, 1] or repeats[4] != 1 or \
            repeats[3] != repeats[5] or back is None or back.op_type != "Reshape":
        return False
    s = repeats[3]
    if r.shape(back.outputs[0]) != (given[0], given[1] * s, given[2] * s):
        return False
    r.absorbed.update((id(expand), id(back)))
    r.add(n, "upsample", [str(s)], output=back.outputs[0])
    return True


def resize(r: Recogniser, n: OnnxNode) -> None:
    scales = r.const(n, 2, "scales")
    a = n.attrs
    if a.get("mode", "nearest") == "linear":
        return _bilinear(r, n)
    if a.get("mode", "nearest") != "nearest" or scales is None or scales.size != 4 or \
            list(scales[:2]) != [1, 1] or scales[2] != scales[3] or \
            not float(scales[2]).is_integer() or len(n.inputs) > 3 and n.inputs[3]:
        raise Inexpressible("a Resize other than nearest upsampling by a whole factor")
    if a.get("coordinate_transformation_mode", "half_pixel") not in ("asymmetric",
                                                                       "half_pixel") or \
            a.get("nearest_mode", "round_prefer_floor") not in ("floor",
                                                                "round_prefer_floor"):
        raise Inexpressible("a nearest Resize that does not repeat each pixel")
    r.add(n, "upsample", [str(int(scales[2]))])


# how PyTorch's align_corners reads in ONNX (F.interpolate's export)
ALIGN_CORNERS = {"half_pixel": False, "pytorch_half_pixel": False, "align_corners": True}


def _bilinear(r: Recogniser, n: OnnxNode) -> None:
    """A linear Resize of a C x H x W map to a known size: `upsample(size=..., mode=bilinear)`,
    the size taken from the shapes (the checker derives the same from the spec)."""
    given, made = r.shape(n.inputs[0]), r.shape(n.outputs[0])
    align = ALIGN_CORNERS.get(n.attrs.get("coordinate_transformation_mode", "half_pixel"))
    if given is None or made is None or len(given) != 3 or len(made) != 3 or \
            made[0] != given[0] or align is None or n.attrs.get("antialias", 0):
        raise Inexpressible("a linear Resize other than bilinear resizing of a C x H x W map")
    kwargs = {"size": f"({made[1]}, {made[2]})", "mode": "bilinear"}
    if align:
        kwargs["align_corners"] = "true"
    r.add(n, "upsample", kwargs=kwargs)


def _anchors(r: Recogniser, n: OnnxNode) -> bool:
    """An empty Slice of a feature map, reshaped, padded with zeros, plus a constant grid:
    cnndsl's own ONNX for anchor_points(offset) or anchor_strides(stride) of that map."""
    chain, x = [], n
    for op in ("Reshape", "Pad", "Reshape", "Add"):
        x = r.only_user(x.outputs[0])
        if x is None or x.op_type != op:
            return False
        chain.append(x)
    grid = next((r.g.constants[v] for v in chain[-1].inputs if v in r.g.constants), None)
    given = r.shape(n.inputs[0])
    if grid is None or given is None or len(given) != 3 or grid.ndim != 3 or \
            grid.shape[2] != given[1] * given[2] or grid.shape[1] not in (1, 2):
        return False
    h, w = given[1:]
    if grid.shape[1] == 2:
        offset = float(grid[0, 0, 0])
        cols, rows = np.meshgrid(np.arange(w), np.arange(h))
        expected = np.stack([cols.ravel() + offset, rows.ravel() + offset])
        if not np.allclose(grid[0], expected):
            return False
        op, args = "anchor_points", {} if offset == 0.5 else {"offset": num(offset)}
        r.absorbed.update(id(c) for c in chain)
        r.add(n, op, [], args, output=chain[-1].outputs[0])
        return True
    stride = float(grid[0, 0, 0])
    if not np.all(grid == stride):
        return False
    r.absorbed.update(id(c) for c in chain)
    r.add(n, "anchor_strides", [num(stride)], output=chain[-1].outputs[0])
    return True


def _grid(r: Recogniser, n: OnnxNode, name: str, other: str) -> str:
    """A constant the file computes from feature maps' sizes (Ultralytics' make_anchors:
    Range, Expand, ConstantOfShape), as the language writes it: each map's
    `anchor_points(offset)` (2 x H*W, cells' centres) or `anchor_strides(s)` (1 x H*W),
    joined along the cells. The tensor written for it; Inexpressible where the numbers
    are not that grid of the maps they were measured from."""
    if name in r.grids:
        return r.grids[name]
    grid = r.folded[name]
    rank = r.in_rank(OnnxNode(n.name, n.op_type, [other], [], {}))
    maps = [m for m in r.measured.get(name, []) if r.shape(m) is not None and
            len(r.shape(m)) == 3]
    cells = [r.shape(m)[1] * r.shape(m)[2] for m in maps]
    per_sample = grid.shape[1:] if grid.ndim == rank else (1,) * (rank - 1 - grid.ndim) + \
        grid.shape
    what = f"a {' x '.join(map(str, grid.shape))} constant computed from the sizes of " \
        f"{len(maps)} feature map(s)"
    if grid.dtype.kind != "f" or grid.ndim > rank or (grid.ndim == rank and grid.shape[0] != 1) \
            or len(per_sample) != 2 or not maps or per_sample[1] != sum(cells):
        raise Inexpressible(f"{what}, not a grid of their cells")
    values = grid.reshape(per_sample).astype(np.float64)
    layers = []
    if per_sample[0] == 2:  # the cells' centres, (x, y) on each map in turn
        offset = float(values[0, 0])
        expected = []
        for m in maps:
            h, w = r.shape(m)[1:]
            cols, rows = np.meshgrid(np.arange(w), np.arange(h))
            expected.append(np.stack([cols.ravel(), rows.ravel()]) + offset)
        if not np.array_equal(values, np.concatenate(expected, axis=1)):
            raise Inexpressible(f"{what}, not the centres of their cells")
        layers = [("anchor_points", [], {} if offset == 0.5 else {"offset": num(offset)})
                  for _ in maps]
    elif per_sample[0] == 1:  # one number per map: its stride
        starts = np.cumsum([0, *cells])
        parts = [values[0, a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
        if not all(p.size and np.all(p == p[0]) and p[0] > 0 for p in parts):
            raise Inexpressible(f"{what}, not one stride per map")
        layers = [("anchor_strides", [num(p[0])], {}) for p in parts]
    else:
        raise Inexpressible(f"{what}, not a grid of their cells")
    made = []
    for k, (m, (op, args, kwargs)) in enumerate(zip(maps, layers, strict=True)):
        made.append(f"{name}#grid{k}")
        r.add(n, op, args, kwargs, inputs=[m], output=made[-1], rank=3)
    if len(made) > 1:
        r.add(n, "concat", [], {"axis": "1"}, inputs=made, output=f"{name}#grid", rank=3)
        made.append(f"{name}#grid")
    r.grids[name] = made[-1]
    return made[-1]


def transpose(r: Recogniser, n: OnnxNode) -> None:
    perm = [int(p) for p in n.attrs.get("perm", [])]
    x = n.inputs[0]
    if x in r.nhwc and perm == [0, 3, 1, 2]:  # back to channels first: nothing to write
        r.alias[n.outputs[0]] = r.value(x)
        r.nhwc.pop(x)
        return
    if x in r.nhwc:
        r._materialise(x)
    if perm == [0, 2, 3, 1] and r.in_rank(n) == 4:  # channels-last: see Recogniser.nhwc
        r.alias[n.outputs[0]] = r.value(x)
        r.nhwc[n.outputs[0]] = n.name
        return
    if not perm or perm[0] != 0:
        raise Inexpressible("a Transpose that moves the batch axis")
    dims = [p - 1 for p in perm[1:]]
    swapped = [i for i, d in enumerate(dims) if i != d]
    if len(swapped) == 2:
        r.add(n, "transpose", [str(swapped[0]), str(swapped[1])])
    else:
        r.add(n, "permute", [_tuple(dims)])


def _axis(r: Recogniser, n: OnnxNode, axis: int) -> int:
    """An ONNX axis as cnndsl's (per sample: 0 is the channels)."""
    rank = r.in_rank(n)
    axis = int(axis) % rank
    if axis == 0:
        raise Inexpressible("along the batch axis")
    return axis - 1


def _slice_layer(r, n, start: int, stop: int, axis: int, output: str) -> None:
    kw = {"axis": str(axis)} if axis else {}
    r.add(n, "slice", [str(start), str(stop)], kw, output=output)


def slice_(r: Recogniser, n: OnnxNode) -> None:
    starts, ends = r.const(n, 1, "starts"), r.const(n, 2, "ends")
    axes, steps = r.const(n, 3, "axes"), r.const(n, 4, "steps")
    given = r.shape(n.inputs[0])
    if given is None or starts.size != 1 or (steps is not None and int(steps[0]) != 1):
        raise Inexpressible("a Slice of more than one axis, with a step, or of unknown size")
    axis = _axis(r, n, int(axes[0]) if axes is not None else 0)
    size = given[axis]
    start, stop = (max(0, min(size, int(v) + size if v < 0 else int(v)))
                   for v in (starts[0], ends[0]))
    if start >= stop:
        if _anchors(r, n):
            return
        raise Inexpressible("an empty Slice")
    _slice_layer(r, n, start, stop, axis, n.outputs[0])


def split(r: Recogniser, n: OnnxNode) -> None:
    given = r.shape(n.inputs[0])
    if given is None:
        raise Inexpressible("a Split of a tensor of unknown size")
    axis = _axis(r, n, n.attrs.get("axis", 0))
    sizes = r.const(n, 1, "sizes") if len(n.inputs) > 1 and n.inputs[1] else None
    if sizes is None and "split" in n.attrs:
        sizes = n.attrs["split"]
    if sizes is None:
        parts = len(n.outputs)
        size = -(-given[axis] // parts)
        sizes = [min(size, given[axis] - k * size) for k in range(parts)]
    sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    if len(sizes) != len(n.outputs) or min(sizes) < 1 or sum(sizes) != given[axis]:
        raise Inexpressible(f"a Split into {sizes} of an axis of {given[axis]}")
    start = 0
    for size, output in zip(sizes, n.outputs, strict=True):
        if output:
            _slice_layer(r, n, start, start + int(size), axis, output)
        start += int(size)


def pad(r: Recogniser, n: OnnxNode) -> None:
    pads = r.const(n, 1, "pads")
    value = r.const(n, 2, "value")
    if n.attrs.get("mode", "constant") != "constant" or len(n.inputs) > 3 and n.inputs[3]:
        raise Inexpressible("a Pad other than constant padding of all axes")
    pads = [int(p) for p in pads]
    if r.in_rank(n) != 4 or len(pads) != 8 or pads[:2] != [0, 0] or pads[4:6] != [0, 0] \
            or pads[2:4] != pads[6:8] or min(pads) < 0:
        raise Inexpressible(f"padding {pads} (cnndsl pads rows and columns evenly)")
    value = 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])
    r.add(n, "pad", [pair(pads[2:4])], {"value": num(value)} if value else {})


def layer_norm(r: Recogniser, n: OnnxNode) -> None:
    x = n.inputs[0]
    rank = r.in_rank(n)
    if n.attrs.get("axis", -1) % rank != rank - 1 or not (x in r.nhwc or rank == 2):
        raise Inexpressible("a LayerNormalization other than over channels (channels-last) "
                            "or over features")
    scale, bias = r.const(n, 1, "scale"), r.const(n, 2, "bias")
    eps = n.attrs.get("epsilon", 1e-5)
    kw = {} if np.float32(eps) == np.float32(1e-5) else {"eps": num(eps)}
    weights = {"weight": scale}
    if bias is None:
        raise Inexpressible("a LayerNormalization without a shift")
    weights["bias"] = bias
    r.add(n, "layernorm", [], kw, weights=weights)
    r._keep_layout(x, n.outputs[0])


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
    if _adaptive_pool(r, n):
        return
    w = r.const(n, 1, "weight")
    channels_last = n.inputs[0] in r.nhwc
    if w.ndim != 2 or (r.in_rank(n) != 2 and not channels_last):
        raise Inexpressible("not a fully connected layer")
    user = r.only_user(n.outputs[0])
    bias, output = None, None
    if user is not None and user.op_type == "Add":
        other = [x for x in user.inputs if x != n.outputs[0]]
        if len(other) == 1 and other[0] in r.g.constants:
            bias, output = r.g.constants[other[0]], user.outputs[0]
            r.absorbed.add(id(user))
    if not channels_last:
        _linear(r, n, w.T, bias, output)
        return
    # a Linear over the channels of each pixel: a 1x1 convolution on C x H x W
    if bias is not None and np.asarray(bias).size != w.shape[1]:
        raise Inexpressible("a bias that is not one per output feature")
    weights = {"weight": w.T.reshape(*w.T.shape, 1, 1)}
    if bias is not None:
        weights["bias"] = np.asarray(bias).reshape(-1)
    r.add(n, "conv", [str(w.shape[1]), "1"], {} if bias is not None else {"bias": "false"},
          weights=weights, output=output)
    r._keep_layout(n.inputs[0], output or n.outputs[0])


def _pool_matrix(size: int, out: int) -> np.ndarray:
    """PyTorch's adaptive average pooling along one axis, as a size x out matrix."""
    m = np.zeros((size, out), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
        m[lo:hi, i] = 1.0 / (hi - lo)
    return m


def _adaptive_pool(r: Recogniser, n: OnnxNode) -> bool:
    """x @ columns, then rows @ that: cnndsl's own ONNX for adaptive_avgpool(size)."""
    given = r.shape(n.inputs[0])
    cols = r.g.constants.get(n.inputs[1]) if len(n.inputs) > 1 else None
    user = r.only_user(n.outputs[0])
    if given is None or len(given) != 3 or cols is None or cols.ndim != 2 or \
            user is None or user.op_type != "MatMul" or user.inputs[1] != n.outputs[0]:
        return False
    rows = r.g.constants.get(user.inputs[0])
    h, w = given[1:]
    if rows is None or rows.ndim != 2 or cols.shape[0] != w or rows.shape[1] != h:
        return False
    size = (rows.shape[0], cols.shape[1])
    if not (np.allclose(cols, _pool_matrix(w, size[1]), atol=1e-7) and
            np.allclose(rows, _pool_matrix(h, size[0]).T, atol=1e-7)):
        return False
    r.absorbed.add(id(user))
    r.add(n, "adaptive_avgpool", [pair(size)], output=user.outputs[0])
    return True


def _scalar(r: Recogniser, name: str) -> float | None:
    value = r.g.constants.get(name)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(-1)[0])


def arithmetic(op: str):
    """A tensor with a number (`add(0.5)`), a per-channel learnt factor (`scale`), or
    tensors of the network joined (`add(a, b)`)."""
    def handler(r: Recogniser, n: OnnxNode) -> None:
        xs = [r.value(x) for x in n.inputs]
        if len(xs) == 2 and (xs[0] is None) != (xs[1] is None):
            i = 0 if xs[0] is not None else 1
            number = _scalar(r, n.inputs[1 - i])
            if number is not None and (i == 0 or op in ("add", "mul")):
                r.add(n, op, [num(number)], inputs=[n.inputs[i]])
                return
            if op == "mul" and _scale(r, n, n.inputs[i], r.g.constants.get(n.inputs[1 - i])):
                return
            if n.inputs[1 - i] in r.folded:  # a grid computed from the maps' sizes
                inputs = list(n.inputs)
                inputs[1 - i] = _grid(r, n, n.inputs[1 - i], n.inputs[i])
                n = OnnxNode(n.name, n.op_type, inputs, n.outputs, n.attrs)
                (mul if op == "mul" else _join(op))(r, n)
                return
            raise Inexpressible(f"a {n.op_type} with a stored tensor that is not a number or "
                                "one factor per channel")
        if op == "mul":
            mul(r, n)
        else:
            _join(op)(r, n)
    return handler


def _scale(r: Recogniser, n: OnnxNode, x: str, factor) -> bool:
    given = r.shape(x)
    if factor is None or given is None or factor.dtype.kind != "f":
        return False
    c = given[0]
    if factor.size != c or factor.shape not in ((c, 1, 1), (1, c, 1, 1), (c,), (1, c)) or \
            (len(given) == 3 and factor.shape in ((c,), (1, c))):
        return False
    image = len(given) == 3
    r.add(n, "scale", [], inputs=[x], weights={
        "weight": factor.reshape((c, 1, 1) if image else (c,))})
    return True


def _find_gelus(r: Recogniser) -> None:
    """0.5 * x * (1 + erf(x / sqrt 2)), as exporters write GELU before opset 20."""
    made = {o: n for n in r.g.nodes for o in n.outputs}
    order = {id(n): i for i, n in enumerate(r.g.nodes)}

    def number(n: OnnxNode, value: float):
        for i in (0, 1):
            v = _scalar(r, n.inputs[1 - i]) if len(n.inputs) == 2 else None
            if v is not None and np.isclose(v, value, rtol=1e-5):
                return n.inputs[i]
        return None

    for erf in r.g.nodes:
        if erf.op_type != "Erf" or erf.inputs[0] not in made:
            continue
        pre = made[erf.inputs[0]]
        x = (number(pre, np.sqrt(2)) if pre.op_type == "Div" and
             _scalar(r, pre.inputs[1]) is not None else
             number(pre, 1 / np.sqrt(2)) if pre.op_type == "Mul" else None)
        add1 = r.only_user(erf.outputs[0])
        if x is None or r.only_user(pre.outputs[0]) is not erf or add1 is None or \
                add1.op_type != "Add" or number(add1, 1.0) != erf.outputs[0]:
            continue
        m = r.only_user(add1.outputs[0])
        if m is None or m.op_type != "Mul":
            continue
        other = next((v for v in m.inputs if v != add1.outputs[0]), None)
        group = [pre, erf, add1, m]
        if other == x:
            last = r.only_user(m.outputs[0])
            if last is None or last.op_type != "Mul" or number(last, 0.5) != m.outputs[0]:
                continue
            group.append(last)
            output = last.outputs[0]
        else:
            half = made.get(other)
            if half is None or half.op_type != "Mul" or number(half, 0.5) != x or \
                    r.only_user(half.outputs[0]) is not m:
                continue
            group.append(half)
            output = m.outputs[0]
        first = min(group, key=lambda g: order[id(g)])
        r.absorbed.update(id(g) for g in group if g is not first)
        r.fused[id(first)] = ("gelu", x, output)


def _join(op: str):
    def handler(r: Recogniser, n: OnnxNode) -> None:
        xs = [r.value(x) for x in n.inputs]
        if any(x is None for x in xs):
            raise Inexpressible(f"a {n.op_type} with a stored tensor (only tensors of the network "
                       "are joined)")
        kw = {}
        if op == "concat":
            axis = _axis(r, n, n.attrs.get("axis"))
            kw = {"axis": str(axis)} if axis else {}
        r.add(n, op, [], kw, inputs=list(n.inputs))
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
    if r.in_rank(n) != 4 or sorted(a % 4 for a in (axes or [])) != [2, 3]:
        raise Inexpressible("a ReduceMean other than a global average pool")
    if n.attrs.get("keepdims", 1):
        r.add(n, "global_avgpool")
        return
    r.add(n, "global_avgpool", output=n.outputs[0] + "#pooled")  # then C x 1 x 1 -> C
    r.add(n, "flatten", inputs=[n.outputs[0] + "#pooled"], rank=2)


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
    "Add": arithmetic("add"),
    "Sub": arithmetic("sub"),
    "Div": arithmetic("div"),
    "Mul": arithmetic("mul"),
    "Transpose": transpose,
    "Slice": slice_,
    "Split": split,
    "Pad": pad,
    "Resize": resize,
    "LayerNormalization": layer_norm,
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


FOLDED = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Add", "Sub",
                    "Range", "Expand",
                    "Mul", "Div", "ConstantOfShape", "Slice", "Transpose", "Reshape"})
# ops that read a channels-last value as they are (per pixel, or the way back)
ELEMENTWISE = frozenset({"Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip",
                         "LeakyRelu", "Elu", "Gelu", "Identity", "Dropout"})
CHANNELS_LAST_OK = ELEMENTWISE | {"Transpose", "LayerNormalization", "MatMul"}


def recognise(graph: Graph) -> tuple[list[Layer], list[Unsupported], list[str]]:
    """The layers, the nodes not expressed, and the graph's outputs as layers' outputs
    (an output an Identity makes is the value it copies)."""
    r = Recogniser(graph)
    layers, unsupported = r.run()
    return layers, unsupported, [r.alias.get(o, o) for o in graph.outputs]
