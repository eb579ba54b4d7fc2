"""How each IR op becomes PyTorch: one handler per op, shared by the in-memory module
(torch_module.py) and the generated source (torch_source.py), so both always agree.

A handler returns a `TorchLayer`: an `nn` class with its arguments, or, for merges, a
functional join. Arguments equal to PyTorch's defaults are left out to keep source short.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ir import Node
from ..layers import short


@dataclass(frozen=True)
class TorchLayer:
    cls: str | None  # name in torch.nn; None for merges
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    pre_pad: tuple[int, int, int, int] | None = None  # F.pad order: left, right, top, bottom
    pad_value: float = 0.0
    # average over real input only, with F.pad emulating asymmetric padding: the pooled
    # input divided by the pooled map of ones (the divisors cancel, ceil_mode included)
    valid_count: bool = False
    join: str | None = None  # "add" | "concat" for merges


def _non_default(**pairs) -> dict[str, Any]:
    """Keyword arguments whose value differs from PyTorch's default (value, default)."""
    return {k: short(v) for k, (v, default) in pairs.items() if short(v) != default}


def _padding(node: Node, pad_value: float = 0.0):
    """Symmetric padding goes to the layer; asymmetric (`same` at stride 2) to F.pad."""
    top, bottom, left, right = node.attrs["padding"]
    if top == bottom and left == right:
        return (top, left), None
    return (0, 0), (left, right, top, bottom)


def conv(node: Node) -> TorchLayer:
    a = node.attrs
    padding, pre_pad = _padding(node)
    return TorchLayer("Conv2d", (a["in_channels"], a["out_channels"]),
                      {"kernel_size": short(a["kernel"]), **_non_default(
                          stride=(a["stride"], 1), padding=(padding, 0),
                          dilation=(a["dilation"], 1), groups=(a["groups"], 1),
                          bias=(a["bias"], True))}, pre_pad)


def conv_transpose(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("ConvTranspose2d", (a["in_channels"], a["out_channels"]),
                      {"kernel_size": short(a["kernel"]), **_non_default(
                          stride=(a["stride"], 1), padding=(a["padding"], 0),
                          output_padding=(a["output_padding"], 0), groups=(a["groups"], 1),
                          bias=(a["bias"], True), dilation=(a["dilation"], 1))})


def maxpool(node: Node) -> TorchLayer:
    a = node.attrs
    padding, pre_pad = _padding(node)
    return TorchLayer("MaxPool2d", (short(a["kernel"]),), _non_default(
        stride=(a["stride"], short(a["kernel"])), padding=(padding, 0),
        dilation=(a["dilation"], 1), ceil_mode=(a["ceil_mode"], False)),
        pre_pad, float("-inf"))


def avgpool(node: Node) -> TorchLayer:
    a = node.attrs
    padding, pre_pad = _padding(node)
    exclude_pad = pre_pad is not None and not a["count_include_pad"]
    return TorchLayer("AvgPool2d", (short(a["kernel"]),), _non_default(
        stride=(a["stride"], short(a["kernel"])), padding=(padding, 0),
        ceil_mode=(a["ceil_mode"], False),
        count_include_pad=(a["count_include_pad"] or exclude_pad, True)), pre_pad,
        valid_count=exclude_pad)


def batchnorm(node: Node) -> TorchLayer:
    a = node.attrs
    cls = "BatchNorm2d" if len(node.shape) == 3 else "BatchNorm1d"
    return TorchLayer(cls, (a["num_features"],), _non_default(
        eps=(a["eps"], 1e-5), momentum=(a["momentum"], 0.1)))


def upsample(node: Node) -> TorchLayer:
    a = node.attrs
    scale = tuple(float(s) for s in a["scale"])
    kwargs = {"scale_factor": short(scale), "mode": a["mode"]}
    if a["mode"] == "bilinear":
        kwargs["align_corners"] = False
    return TorchLayer("Upsample", (), kwargs)


def _simple(cls: str, *args: Callable[[Node], Any], **kwargs: Callable[[Node], Any]):
    def handler(node: Node) -> TorchLayer:
        return TorchLayer(cls, tuple(f(node) for f in args),
                          {k: f(node) for k, f in kwargs.items()})
    return handler


def _attr(name: str) -> Callable[[Node], Any]:
    return lambda node: short(node.attrs[name])


TORCH_OPS: dict[str, Callable[[Node], TorchLayer]] = {
    "conv": conv,
    "conv_transpose": conv_transpose,
    "maxpool": maxpool,
    "avgpool": avgpool,
    "global_avgpool": _simple("AdaptiveAvgPool2d", lambda n: 1),
    "global_maxpool": _simple("AdaptiveMaxPool2d", lambda n: 1),
    "adaptive_avgpool": _simple("AdaptiveAvgPool2d", _attr("size")),
    "batchnorm": batchnorm,
    "lrn": _simple("LocalResponseNorm", _attr("size"), alpha=_attr("alpha"),
                   beta=_attr("beta"), k=_attr("k")),
    "dropout": _simple("Dropout", _attr("p")),
    "flatten": _simple("Flatten"),
    "linear": lambda n: TorchLayer("Linear", (n.attrs["in_features"], n.attrs["out_features"]),
                                   _non_default(bias=(n.attrs["bias"], True))),
    "upsample": upsample,
    "pad": lambda n: TorchLayer("ConstantPad2d", ((n.attrs["padding"][2], n.attrs["padding"][3],
                                                   n.attrs["padding"][0], n.attrs["padding"][1]),
                                                  n.attrs["value"])),
    "relu": _simple("ReLU"),
    "relu6": _simple("ReLU6"),
    "leaky_relu": _simple("LeakyReLU", _attr("slope")),
    "elu": _simple("ELU", _attr("alpha")),
    "gelu": _simple("GELU"),
    "silu": _simple("SiLU"),
    "hardswish": _simple("Hardswish"),
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "softmax": _simple("Softmax", dim=lambda n: 1),
    "log_softmax": _simple("LogSoftmax", dim=lambda n: 1),
    "identity": _simple("Identity"),
    "add": lambda n: TorchLayer(None, join="add"),
    "concat": lambda n: TorchLayer(None, join="concat"),
    "mul": lambda n: TorchLayer(None, join="mul"),
}


def torch_layer(node: Node) -> TorchLayer:
    handler = TORCH_OPS.get(node.op)
    if handler is None:
        raise NotImplementedError(f"the PyTorch back end has no handler for `{node.op}`")
    return handler(node)
