"""How each IR op becomes ONNX: one table of handlers (`OnnxGenerator.TRANSFORMS`),
writing plain standard operators at every supported opset (13-21). A handler gets the
graph builder, the node and its input value names, and returns its output value's name.

Dropouts are the identity at inference and emit nothing; batch norm after a conv is folded
into it beforehand by the IR pass cnndsl.passes.fold_batchnorm, where that is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..ir import Node
from ..layers import REGISTRY

if TYPE_CHECKING:
    from .onnx_export import GraphBuilder


def conv(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    bias = [g.weight(node, "bias")] if a.bias else []
    return g.op("Conv", [xs[0], g.weight(node, "weight"), *bias], node,
                kernel_shape=list(a.kernel), strides=list(a.stride), pads=a.padding.onnx(),
                dilations=list(a.dilation), group=a.groups)


def conv_transpose(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    bias = [g.weight(node, "bias")] if a.bias else []
    return g.op("ConvTranspose", [xs[0], g.weight(node, "weight"), *bias], node,
                kernel_shape=list(a.kernel), strides=list(a.stride), pads=a.padding.onnx(),
                output_padding=list(a.output_padding), dilations=list(a.dilation),
                group=a.groups)


def maxpool(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    return g.op("MaxPool", xs, node, kernel_shape=list(a.kernel), strides=list(a.stride),
                pads=a.padding.onnx(), dilations=list(a.dilation), ceil_mode=int(a.ceil_mode))


def avgpool(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    return g.op("AveragePool", xs, node, kernel_shape=list(a.kernel),
                strides=list(a.stride), pads=a.padding.onnx(), ceil_mode=int(a.ceil_mode),
                count_include_pad=int(a.count_include_pad))


def adaptive_avgpool(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    (_, h, w), (oh, ow) = node.in_shapes[0], node.attrs.size
    if (h, w) == (oh, ow):
        return g.alias(node, xs[0])
    if h % oh or w % ow:  # PyTorch's windows overlap unevenly: a mean is a linear map
        rows = g.constant(f"{node.name}.rows", _adaptive_means(h, oh))
        columns = g.constant(f"{node.name}.columns", _adaptive_means(w, ow).T.copy())
        across = g.op("MatMul", [xs[0], columns], node, output=f"{node.name}.columns_mean")
        return g.op("MatMul", [rows, across], node)
    kernel = [h // oh, w // ow]
    return g.op("AveragePool", xs, node, kernel_shape=kernel, strides=kernel)


def _adaptive_means(size: int, out: int) -> np.ndarray:
    """out x size: row i averages PyTorch's adaptive window i, [floor(i*size/out),
    ceil((i+1)*size/out)); the mean over a window of rows and columns is the mean over
    rows of means over columns."""
    matrix = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = i * size // out, -(-(i + 1) * size // out)
        matrix[i, start:end] = 1 / (end - start)
    return matrix


def batchnorm(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    names = [g.weight(node, k) for k in ("weight", "bias", "running_mean", "running_var")]
    return g.op("BatchNormalization", [xs[0], *names], node, epsilon=node.attrs.eps)


def _per_channel(g: GraphBuilder, node: Node, suffix: str) -> str:
    """A (C,) tensor as (C, 1, 1) for images, to broadcast over H x W."""
    name, array = g.take(node, suffix)
    if array is None:
        return name
    if len(node.shape) == 3:
        array = array.reshape(-1, 1, 1)
    return g.constant(name, array)


def _affine(g: GraphBuilder, node: Node, normalised: str) -> str:
    if not node.attrs.affine:
        return g.alias(node, normalised)
    scaled = g.op("Mul", [normalised, _per_channel(g, node, "weight")], node,
                  output=f"{node.name}.scaled")
    return g.op("Add", [scaled, _per_channel(g, node, "bias")], node)


def _normalise(g: GraphBuilder, node: Node, x: str, axes: list[int], tag: str) -> str:
    """(x - mean) / sqrt(var + eps) over `axes` (biased variance, as PyTorch)."""
    mean = g.reduce_mean(x, axes, node, f"{node.name}.{tag}mean")
    centred = g.op("Sub", [x, mean], node, output=f"{node.name}.{tag}centred")
    square = g.op("Mul", [centred, centred], node, output=f"{node.name}.{tag}square")
    var = g.reduce_mean(square, axes, node, f"{node.name}.{tag}var")
    eps = g.constant(f"{node.name}.eps", np.array(node.attrs.eps, np.float32))
    shifted = g.op("Add", [var, eps], node, output=f"{node.name}.{tag}shifted")
    root = g.op("Sqrt", [shifted], node, output=f"{node.name}.{tag}std")
    return g.op("Div", [centred, root], node, output=f"{node.name}.{tag}normalised")


def layernorm(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    """Over channels (axis 1); LayerNormalization (opset 17) takes the last axes only, so
    images go through it channels-last; earlier opsets write it out."""
    if g.opset < 17:
        return _affine(g, node, _normalise(g, node, xs[0], [1], ""))
    scale = (g.weight(node, "weight") if node.attrs.affine else
             g.constant(f"{node.name}.ones", np.ones(node.attrs.channels, np.float32)))
    bias = [g.weight(node, "bias")] if node.attrs.affine else []
    if len(node.shape) == 1:
        return g.op("LayerNormalization", [xs[0], scale, *bias], node, axis=-1,
                    epsilon=node.attrs.eps)
    last = g.op("Transpose", xs, node, output=f"{node.name}.nhwc", perm=[0, 2, 3, 1])
    normed = g.op("LayerNormalization", [last, scale, *bias], node,
                  output=f"{node.name}.normed", axis=-1, epsilon=node.attrs.eps)
    return g.op("Transpose", [normed], node, perm=[0, 3, 1, 2])


def groupnorm(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    """Written out at every opset (GroupNormalization changed meaning at 21): the groups
    as an axis of their own, normalised over it, back to C x H x W."""
    a = node.attrs
    grouped = g.op("Reshape", [xs[0], g.constant(f"{node.name}.grouped_shape", np.array(
        [0, a.groups, -1], np.int64))], node, output=f"{node.name}.grouped")
    normed = _normalise(g, node, grouped, [2], "grouped_")
    back = g.op("Reshape", [normed, g.constant(f"{node.name}.shape", np.array(
        [0, *node.shape], np.int64))], node, output=f"{node.name}.ungrouped")
    return _affine(g, node, back)


def instancenorm(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    if a.affine:
        scale, bias = g.weight(node, "weight"), g.weight(node, "bias")
    else:
        scale = g.constant(f"{node.name}.ones", np.ones(a.channels, np.float32))
        bias = g.constant(f"{node.name}.zeros", np.zeros(a.channels, np.float32))
    return g.op("InstanceNormalization", [xs[0], scale, bias], node, epsilon=a.eps)


def linear(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    weight = g.weight(node, "weight")
    bias = [g.weight(node, "bias")] if node.attrs.bias else []
    return g.op("Gemm", [xs[0], weight, *bias], node, transB=1)


def upsample(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    if a.mode == "nearest":  # PyTorch's nearest: floor(out * in / out_size)
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor"}
    else:
        mode = {"mode": "linear", "coordinate_transformation_mode":
                "align_corners" if a.align_corners else "half_pixel"}
    if a.scale is not None and a.mode == "nearest":
        return _repeat_pixels(g, node, xs[0])
    if a.scale is not None:
        scales = g.constant(f"{node.name}.scales", np.array([1, 1, *a.scale], np.float32))
        return g.declare_shape(g.op("Resize", [xs[0], "", scales], node, **mode), node)
    if a.mode == "nearest":  # Resize divides by out/in in float: 2/14 gives 6.99.. for 7
        return _nearest_to_size(g, node, xs[0])
    # to a size: the batch and channels as they come, then H x W (the batch is dynamic)
    shape = g.op("Shape", xs, node, output=f"{node.name}.in_shape")
    start, stop = (g.constant(f"{node.name}.{k}", np.array([v], np.int64))
                   for k, v in (("keep_from", 0), ("keep_to", 2)))
    kept = g.op("Slice", [shape, start, stop], node, output=f"{node.name}.batch_channels")
    hw = g.constant(f"{node.name}.size", np.array(a.size, np.int64))
    sizes = g.op("Concat", [kept, hw], node, output=f"{node.name}.sizes", axis=0)
    return g.declare_shape(g.op("Resize", [xs[0], "", "", sizes], node, **mode), node)


def _repeat_pixels(g: GraphBuilder, node: Node, x: str) -> str:
    """Nearest by an integer factor: every pixel repeated sh x sw times (exactly PyTorch's),
    written as reshapes around an Expand, so that shape inference keeps the batch axis
    (Resize with scales loses it)."""
    (c, h, w), (sh, sw) = node.in_shapes[0], node.attrs.scale
    spread = g.op("Reshape", [x, g.constant(f"{node.name}.spread_shape", np.array(
        [0, c, h, 1, w, 1], np.int64))], node, output=f"{node.name}.spread")
    repeated = g.op("Expand", [spread, g.constant(f"{node.name}.repeats", np.array(
        [1, 1, 1, sh, 1, sw], np.int64))], node, output=f"{node.name}.repeated")
    return g.op("Reshape", [repeated, g.constant(f"{node.name}.out_shape", np.array(
        [0, c, h * sh, w * sw], np.int64))], node)


def _nearest_to_size(g: GraphBuilder, node: Node, x: str) -> str:
    """Rows, then columns, gathered at the indices PyTorch computes: floor(i * in / out) in
    float32 (its nearest_idx), so every size gives the same pixels."""
    axes = [(axis, n_in, n_out) for axis, n_in, n_out in
            zip((2, 3), node.in_shapes[0][1:], node.attrs.size) if n_in != n_out]
    if not axes:
        return g.alias(node, x)
    for k, (axis, n_in, n_out) in enumerate(axes):
        source = np.floor(np.arange(n_out, dtype=np.float32) * (np.float32(n_in) / n_out))
        index = g.constant(f"{node.name}.rows" if axis == 2 else f"{node.name}.columns",
                           np.minimum(source.astype(np.int64), n_in - 1))
        last = k == len(axes) - 1
        x = g.op("Gather", [x, index], node, axis=axis,
                 **({} if last else {"output": f"{node.name}.gathered_rows"}))
    return x


def pad(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    top, left, bottom, right = node.attrs.padding.onnx()
    pads = g.constant(f"{node.name}.pads", np.array([0, 0, top, left, 0, 0, bottom, right],
                                                    np.int64))
    value = node.attrs.value
    if value == 0 and g.feeds(node, ("maxpool", "avgpool")):
        # onnxruntime's PadFusion folds a zero Pad into the pool's own padding, which a
        # max ignores and which may then exceed the kernel; it checks the value's bytes,
        # so -0.0 (equal to 0 in every result) keeps the Pad a node of its own
        value = -0.0
    value = g.constant(f"{node.name}.value", np.array(value, np.float32))
    return g.op("Pad", [xs[0], pads, value], node, mode="constant")


def _slice(g: GraphBuilder, node: Node, x: str, starts, ends, axes) -> str:
    consts = [g.constant(f"{node.name}.{k}", np.array(v, np.int64))
              for k, v in (("starts", starts), ("ends", ends), ("axes", axes))]
    return g.op("Slice", [x, *consts], node)


def crop(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    return _slice(g, node, xs[0], [a.top, a.left], [a.top + a.height, a.left + a.width],
                  [2, 3])


def channel_shuffle(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    c, h, w = node.shape
    groups = node.attrs.groups
    split = g.op("Reshape", [xs[0], g.constant(f"{node.name}.split", np.array(
        [0, groups, c // groups, h, w], np.int64))], node, output=f"{node.name}.grouped")
    swapped = g.op("Transpose", [split], node, output=f"{node.name}.swapped",
                   perm=[0, 2, 1, 3, 4])
    return g.op("Reshape", [swapped, g.constant(f"{node.name}.shape", np.array(
        [0, c, h, w], np.int64))], node)


def scale(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    return g.op("Mul", [xs[0], g.weight(node, "weight")], node)


def prelu(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    return g.op("PRelu", [xs[0], _per_channel(g, node, "weight")], node)


def relu6(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    low = g.constant("relu6.min", np.array(0, np.float32))
    high = g.constant("relu6.max", np.array(6, np.float32))
    return g.op("Clip", [xs[0], low, high], node)


def silu(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    gate = g.op("Sigmoid", xs, node, output=f"{node.name}.sigmoid")
    return g.op("Mul", [xs[0], gate], node)


def gelu(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    if g.opset >= 20:
        return g.op("Gelu", xs, node)
    # 0.5 * x * (1 + erf(x / sqrt(2))): PyTorch's exact GELU
    root2 = g.constant("gelu.sqrt2", np.array(np.sqrt(2.0), np.float32))
    one = g.constant("gelu.one", np.array(1.0, np.float32))
    half = g.constant("gelu.half", np.array(0.5, np.float32))
    scaled = g.op("Div", [xs[0], root2], node, output=f"{node.name}.scaled")
    erf = g.op("Erf", [scaled], node, output=f"{node.name}.erf")
    shifted = g.op("Add", [erf, one], node, output=f"{node.name}.shifted")
    halved = g.op("Mul", [xs[0], half], node, output=f"{node.name}.half")
    return g.op("Mul", [halved, shifted], node)


def hardswish(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    if g.opset >= 14:
        return g.op("HardSwish", xs, node)
    # HardSwish is opset 14: before it, x * hardsigmoid(x) with relu6(x + 3) / 6's constants
    gate = g.op("HardSigmoid", xs, node, output=f"{node.name}.gate", alpha=1 / 6, beta=0.5)
    return g.op("Mul", [xs[0], gate], node)


def _simple(op_type: str, **attrs: Callable[[Node], object]):
    def handler(g: GraphBuilder, node: Node, xs: list[str]) -> str:
        return g.op(op_type, xs, node, **{k: f(node) for k, f in attrs.items()})
    return handler


def _attr(name: str) -> Callable[[Node], object]:
    return lambda node: getattr(node.attrs, name)


_JOINS = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "concat": "Concat"}


def _join(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    """A merge, as its kind says its inputs combine."""
    op_type = _JOINS[REGISTRY[node.op].combine]
    if op_type == "Concat":
        return g.op("Concat", xs, node, axis=node.attrs.axis + 1)
    if node.attrs.constant is not None:
        number = g.constant(f"{node.name}.constant", np.array(node.attrs.constant, np.float32))
        pair = [number, xs[0]] if node.attrs.constant_first else [xs[0], number]
        return g.op(op_type, pair, node)
    out = xs[0]
    for i, other in enumerate(xs[1:], 1):
        last = i == len(xs) - 1
        out = g.op(op_type, [out, other], node, output=None if last else f"{node.name}.{i}")
    return out


def flatten(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    if node.attrs.whole:
        return g.op("Flatten", xs, node, axis=1)
    return reshape(g, node, xs)


def reshape(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    """To the checker's shape, the batch axis copied (0) from the input."""
    shape = g.constant(f"{node.name}.shape", np.array([0, *node.shape], np.int64))
    return g.op("Reshape", [xs[0], shape], node)


def permute(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    return g.op("Transpose", xs, node, perm=[0, *(d + 1 for d in node.attrs.dims)])


def axis_slice(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    return _slice(g, node, xs[0], [a.start], [a.stop], [a.axis + 1])


def anchor_points(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    """The grid as a constant, expanded to the input's batch."""
    from ..tensor_layers import AnchorPoints
    grid = np.array(AnchorPoints.grid(node.attrs), np.float32)[None]
    return _per_image(g, node, xs, grid)


def anchor_strides(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    return _per_image(g, node, xs, np.full((1, 1, a.height * a.width), a.stride, np.float32))


def _per_image(g: GraphBuilder, node: Node, xs: list[str], grid: np.ndarray) -> str:
    """A constant (1 x ...) for every image of the batch. The batch comes from an empty
    slice of the input, padded with zeros: no input value is read (a NaN stays out), and
    shape inference keeps the batch axis, which Expand to a computed shape would lose."""
    consts = [g.constant(f"{node.name}.{k}", np.array(v, np.int64))
              for k, v in (("empty_from", [0]), ("empty_to", [0]), ("empty_axis", [1]))]
    empty = g.op("Slice", [xs[0], *consts], node, output=f"{node.name}.empty")
    flat = g.op("Reshape", [empty, g.constant(f"{node.name}.flat_shape", np.array(
        [0, 0], np.int64))], node, output=f"{node.name}.flat")  # batch x 0
    size = int(np.prod(grid.shape[1:]))
    zeros = g.op("Pad", [flat, g.constant(f"{node.name}.pads", np.array(
        [0, 0, 0, size], np.int64))], node, output=f"{node.name}.zeros", mode="constant")
    shaped = g.op("Reshape", [zeros, g.constant(f"{node.name}.grid_shape", np.array(
        [0, *grid.shape[1:]], np.int64))], node, output=f"{node.name}.shaped")
    return g.op("Add", [shaped, g.constant(f"{node.name}.grid", grid)], node)


def _along(op_type: str):
    return _simple(op_type, axis=lambda n: n.attrs.axis + 1)


def _identity(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    return g.alias(node, xs[0])


class OnnxGenerator:
    """op -> handler(graph builder, node, input values) -> output value. A variant extends
    TRANSFORMS in a subclass and passes itself to `to_onnx(..., generator=...)`."""

    TRANSFORMS: ClassVar[dict[str, Callable[[GraphBuilder, Node, list[str]], str]]] = {
        "conv": conv,
        "conv_transpose": conv_transpose,
        "maxpool": maxpool,
        "avgpool": avgpool,
        "global_avgpool": _simple("GlobalAveragePool"),
        "global_maxpool": _simple("GlobalMaxPool"),
        "adaptive_avgpool": adaptive_avgpool,
        "batchnorm": batchnorm,
        "layernorm": layernorm,
        "groupnorm": groupnorm,
        "instancenorm": instancenorm,
        "lrn": _simple("LRN", size=_attr("size"), alpha=_attr("alpha"), beta=_attr("beta"),
                       bias=_attr("k")),
        "dropout": _identity,  # inference: dropouts are the identity
        "dropout2d": _identity,
        "stochastic_depth": _identity,
        "flatten": flatten,
        "linear": linear,
        "upsample": upsample,
        "pad": pad,
        "crop": crop,
        "center_crop": crop,
        "channel_shuffle": channel_shuffle,
        "slice": axis_slice,
        "scale": scale,
        "relu": _simple("Relu"),
        "relu6": relu6,
        "leaky_relu": _simple("LeakyRelu", alpha=_attr("slope")),
        "elu": _simple("Elu", alpha=_attr("alpha")),
        "prelu": prelu,
        "gelu": gelu,
        "silu": silu,
        "hardswish": hardswish,
        "hardsigmoid": _simple("HardSigmoid", alpha=lambda n: 1 / 6, beta=lambda n: 0.5),
        "sigmoid": _simple("Sigmoid"),
        "tanh": _simple("Tanh"),
        "softmax": _along("Softmax"),
        "log_softmax": _along("LogSoftmax"),
        "exp": _simple("Exp"),
        "log": _simple("Log"),
        "reshape": reshape,
        "permute": permute,
        "transpose": permute,
        "anchor_points": anchor_points,
        "anchor_strides": anchor_strides,
        "identity": _identity,
        "add": _join,
        "sub": _join,
        "mul": _join,
        "div": _join,
        "concat": _join,
    }
