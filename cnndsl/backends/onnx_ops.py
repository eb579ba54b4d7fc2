"""How each IR op becomes ONNX: one handler per op (`ONNX_OPS`), writing plain standard
operators. A handler gets the graph builder, the node and its input value names, and
returns the name of its output value.

Dropout is the identity at inference and emits nothing; batch norm after a conv is folded
into it by the exporter (onnx_export.py) where that is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..ir import Node

if TYPE_CHECKING:
    from .onnx_export import GraphBuilder


def _pads(node: Node) -> list[int]:
    top, bottom, left, right = node.attrs["padding"]
    return [top, left, bottom, right]  # ONNX: all begins, then all ends


def conv(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    weight, bias = g.conv_weights(node)
    return g.op("Conv", [xs[0], weight, *([bias] if bias else [])], node,
                kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=_pads(node),
                dilations=list(a["dilation"]), group=a["groups"])


def conv_transpose(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    weight, bias = g.conv_weights(node)
    ph, pw = a["padding"]
    return g.op("ConvTranspose", [xs[0], weight, *([bias] if bias else [])], node,
                kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                pads=[ph, pw, ph, pw], output_padding=list(a["output_padding"]),
                dilations=list(a["dilation"]), group=a["groups"])


def maxpool(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    return g.op("MaxPool", xs, node, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                pads=_pads(node), dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


def avgpool(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    a = node.attrs
    return g.op("AveragePool", xs, node, kernel_shape=list(a["kernel"]),
                strides=list(a["stride"]), pads=_pads(node), ceil_mode=int(a["ceil_mode"]),
                count_include_pad=int(a["count_include_pad"]))


def adaptive_avgpool(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    (_, h, w), (oh, ow) = node.in_shapes[0], node.attrs["size"]
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
    return g.op("BatchNormalization", [xs[0], *names], node, epsilon=node.attrs["eps"])


def linear(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    weight = g.weight(node, "weight")
    bias = [g.weight(node, "bias")] if node.attrs["bias"] else []
    return g.op("Gemm", [xs[0], weight, *bias], node, transB=1)


def upsample(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    sh, sw = node.attrs["scale"]
    scales = g.constant(f"{node.name}.scales", np.array([1, 1, sh, sw], np.float32))
    if node.attrs["mode"] == "nearest":  # PyTorch's nearest: floor(out * in / out_size)
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor"}
    else:
        mode = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    return g.op("Resize", [xs[0], "", scales], node, **mode)


def pad(g: GraphBuilder, node: Node, xs: list[str]) -> str:
    pads = g.constant(f"{node.name}.pads", np.array([0, 0, *_pads(node)[:2], 0, 0,
                                                     *_pads(node)[2:]], np.int64))
    value = node.attrs["value"]
    if value == 0 and g.feeds(node, ("maxpool", "avgpool")):
        # onnxruntime's PadFusion folds a zero Pad into the pool's own padding, which a
        # max ignores and which may then exceed the kernel; it checks the value's bytes,
        # so -0.0 (equal to 0 in every result) keeps the Pad a node of its own
        value = -0.0
    value = g.constant(f"{node.name}.value", np.array(value, np.float32))
    return g.op("Pad", [xs[0], pads, value], node, mode="constant")


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


def _join(op_type: str):
    def handler(g: GraphBuilder, node: Node, xs: list[str]) -> str:
        if op_type == "Concat":
            return g.op("Concat", xs, node, axis=1)
        out = xs[0]
        for i, other in enumerate(xs[1:], 1):
            last = i == len(xs) - 1
            out = g.op(op_type, [out, other], node, output=None if last else f"{node.name}.{i}")
        return out
    return handler


ONNX_OPS: dict[str, Callable[[GraphBuilder, Node, list[str]], str]] = {
    "conv": conv,
    "conv_transpose": conv_transpose,
    "maxpool": maxpool,
    "avgpool": avgpool,
    "global_avgpool": _simple("GlobalAveragePool"),
    "global_maxpool": _simple("GlobalMaxPool"),
    "adaptive_avgpool": adaptive_avgpool,
    "batchnorm": batchnorm,
    "lrn": _simple("LRN", size=lambda n: n.attrs["size"], alpha=lambda n: n.attrs["alpha"],
                   beta=lambda n: n.attrs["beta"], bias=lambda n: n.attrs["k"]),
    "dropout": lambda g, node, xs: g.alias(node, xs[0]),
    "flatten": _simple("Flatten", axis=lambda n: 1),
    "linear": linear,
    "upsample": upsample,
    "pad": pad,
    "relu": _simple("Relu"),
    "relu6": relu6,
    "leaky_relu": _simple("LeakyRelu", alpha=lambda n: n.attrs["slope"]),
    "elu": _simple("Elu", alpha=lambda n: n.attrs["alpha"]),
    "gelu": gelu,
    "silu": silu,
    "hardswish": hardswish,
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "softmax": _simple("Softmax", axis=lambda n: 1),
    "log_softmax": _simple("LogSoftmax", axis=lambda n: 1),
    "identity": lambda g, node, xs: g.alias(node, xs[0]),
    "add": _join("Add"),
    "mul": _join("Mul"),
    "concat": _join("Concat"),
}
