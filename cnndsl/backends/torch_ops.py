"""How each IR op becomes PyTorch: one table of handlers (`TorchGenerator.TRANSFORMS`),
shared by the in-memory module (torch_module.py) and the generated source
(torch_source.py), so both always agree. A variant extends the table in a subclass:

    class MyTorch(TorchGenerator):
        TRANSFORMS = {**TorchGenerator.TRANSFORMS, "gelu": lambda n: TorchLayer("Mish")}

A handler returns a `TorchLayer`: a module class (torch.nn's, or one of torch_extra's)
with its arguments, or, for merges, the way the inputs combine. Arguments equal to
PyTorch's defaults are left out to keep the source short.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..ir import Node
from ..layers import REGISTRY, short


@dataclass(frozen=True)
class TorchLayer:
    cls: str | None  # a torch.nn class, or one of torch_extra.CLASSES; None for merges
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    pre_pad: tuple[int, int, int, int] | None = None  # F.pad order: left, right, top, bottom
    pad_value: float = 0.0
    # average over real input only, with F.pad emulating asymmetric padding: the pooled
    # input divided by the pooled map of ones (the divisors cancel, ceil_mode included)
    valid_count: bool = False
    join: str | None = None  # "add" | "sub" | "mul" | "div" | "concat" for merges
    axis: int = 1  # concat's, with the batch axis
    constant: float | None = None  # arithmetic with a number: `mul(x, 0.5)`
    constant_first: bool = False  # `sub(1, x)`

    @property
    def extra(self) -> bool:
        """Whether the class is cnndsl's own (torch_extra), not torch.nn's."""
        from .torch_extra import CLASSES
        return self.cls in CLASSES


def _non_default(**pairs) -> dict[str, Any]:
    """Keyword arguments whose value differs from PyTorch's default (value, default)."""
    return {k: short(v) for k, (v, default) in pairs.items() if short(v) != default}


def _padding(padding):
    """Symmetric padding goes to the layer; asymmetric (`same` at stride 2) to F.pad."""
    if padding.symmetric:
        return padding.pair, None
    return (0, 0), padding.torch_pad()


def conv(node: Node) -> TorchLayer:
    a = node.attrs
    padding, pre_pad = _padding(a.padding)
    return TorchLayer("Conv2d", (a.in_channels, a.out_channels),
                      {"kernel_size": short(a.kernel), **_non_default(
                          stride=(a.stride, 1), padding=(padding, 0),
                          dilation=(a.dilation, 1), groups=(a.groups, 1),
                          bias=(a.bias, True))}, pre_pad)


def conv_transpose(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("ConvTranspose2d", (a.in_channels, a.out_channels),
                      {"kernel_size": short(a.kernel), **_non_default(
                          stride=(a.stride, 1), padding=(a.padding.pair, 0),
                          output_padding=(a.output_padding, 0), groups=(a.groups, 1),
                          bias=(a.bias, True), dilation=(a.dilation, 1))})


def maxpool(node: Node) -> TorchLayer:
    a = node.attrs
    padding, pre_pad = _padding(a.padding)
    return TorchLayer("MaxPool2d", (short(a.kernel),), _non_default(
        stride=(a.stride, short(a.kernel)), padding=(padding, 0),
        dilation=(a.dilation, 1), ceil_mode=(a.ceil_mode, False)),
        pre_pad, float("-inf"))


def avgpool(node: Node) -> TorchLayer:
    a = node.attrs
    padding, pre_pad = _padding(a.padding)
    exclude_pad = pre_pad is not None and not a.count_include_pad
    return TorchLayer("AvgPool2d", (short(a.kernel),), _non_default(
        stride=(a.stride, short(a.kernel)), padding=(padding, 0),
        ceil_mode=(a.ceil_mode, False),
        count_include_pad=(a.count_include_pad or exclude_pad, True)), pre_pad,
        valid_count=exclude_pad)


def batchnorm(node: Node) -> TorchLayer:
    a = node.attrs
    cls = "BatchNorm2d" if len(node.shape) == 3 else "BatchNorm1d"
    return TorchLayer(cls, (a.num_features,), _non_default(
        eps=(a.eps, 1e-5), momentum=(a.momentum, 0.1)))


def layernorm(node: Node) -> TorchLayer:
    a = node.attrs
    cls = "LayerNorm2d" if len(node.shape) == 3 else "LayerNorm"
    return TorchLayer(cls, (a.channels,), _non_default(
        eps=(a.eps, 1e-5), elementwise_affine=(a.affine, True)))


def groupnorm(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("GroupNorm", (a.groups, a.channels), _non_default(
        eps=(a.eps, 1e-5), affine=(a.affine, True)))


def instancenorm(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("InstanceNorm2d", (a.channels,), _non_default(
        eps=(a.eps, 1e-5), affine=(a.affine, False)))


def upsample(node: Node) -> TorchLayer:
    a = node.attrs
    if a.scale is not None:
        kwargs: dict[str, Any] = {"scale_factor": short(tuple(float(s) for s in a.scale))}
    else:
        kwargs = {"size": short(a.size)}
    kwargs["mode"] = a.mode
    if a.mode == "bilinear":
        kwargs["align_corners"] = a.align_corners
    return TorchLayer("Upsample", (), kwargs)


def pad(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("ConstantPad2d", (a.padding.torch_pad(), a.value))


def crop(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("Crop", (a.top, a.left, a.height, a.width))


def scale(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("LayerScale", ((a.channels, 1, 1) if a.image else (a.channels,),
                                     a.init))


def prelu(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer("PReLU", (), _non_default(
        num_parameters=(a.channels if a.per_channel else 1, 1), init=(a.init, 0.25)))


def _simple(cls: str, *args: Callable[[Node], Any], **kwargs: Callable[[Node], Any]):
    def handler(node: Node) -> TorchLayer:
        return TorchLayer(cls, tuple(f(node) for f in args),
                          {k: f(node) for k, f in kwargs.items()})
    return handler


def _attr(name: str) -> Callable[[Node], Any]:
    return lambda node: short(getattr(node.attrs, name))


def _join(node: Node) -> TorchLayer:
    a = node.attrs
    return TorchLayer(None, join=REGISTRY[node.op].combine,
                      axis=getattr(a, "axis", 0) + 1, constant=getattr(a, "constant", None),
                      constant_first=getattr(a, "constant_first", False))


def flatten(node: Node) -> TorchLayer:
    a = node.attrs
    if a.whole:
        return TorchLayer("Flatten")
    return TorchLayer("Flatten", (a.start + 1, a.end + 1))


def channel_slice(node: Node) -> TorchLayer:
    a = node.attrs
    if a.axis == 0:
        return TorchLayer("ChannelSlice", (a.start, a.stop))
    return TorchLayer("Narrow", (a.axis + 1, a.start, a.stop - a.start))


def _along(cls: str) -> Callable[[Node], TorchLayer]:
    return lambda node: TorchLayer(cls, (), {"dim": node.attrs.axis + 1})


class TorchGenerator:
    """op -> handler. `layer(node)` is what the two PyTorch back ends call."""

    TRANSFORMS: ClassVar[dict[str, Callable[[Node], TorchLayer]]] = {
        "conv": conv,
        "conv_transpose": conv_transpose,
        "maxpool": maxpool,
        "avgpool": avgpool,
        "global_avgpool": _simple("AdaptiveAvgPool2d", lambda n: 1),
        "global_maxpool": _simple("AdaptiveMaxPool2d", lambda n: 1),
        "adaptive_avgpool": _simple("AdaptiveAvgPool2d", _attr("size")),
        "batchnorm": batchnorm,
        "layernorm": layernorm,
        "groupnorm": groupnorm,
        "instancenorm": instancenorm,
        "lrn": _simple("LocalResponseNorm", _attr("size"), alpha=_attr("alpha"),
                       beta=_attr("beta"), k=_attr("k")),
        "dropout": _simple("Dropout", _attr("p")),
        "dropout2d": _simple("Dropout2d", _attr("p")),
        "stochastic_depth": _simple("StochasticDepth", _attr("p"), _attr("mode")),
        "flatten": flatten,
        "linear": lambda n: TorchLayer("Linear", (n.attrs.in_features, n.attrs.out_features),
                                       _non_default(bias=(n.attrs.bias, True))),
        "upsample": upsample,
        "pad": pad,
        "crop": crop,
        "center_crop": crop,
        "channel_shuffle": _simple("ChannelShuffle", _attr("groups")),
        "slice": channel_slice,
        "scale": scale,
        "relu": _simple("ReLU"),
        "relu6": _simple("ReLU6"),
        "leaky_relu": _simple("LeakyReLU", _attr("slope")),
        "elu": _simple("ELU", _attr("alpha")),
        "prelu": prelu,
        "gelu": _simple("GELU"),
        "silu": _simple("SiLU"),
        "hardswish": _simple("Hardswish"),
        "hardsigmoid": _simple("Hardsigmoid"),
        "sigmoid": _simple("Sigmoid"),
        "tanh": _simple("Tanh"),
        "softmax": _along("Softmax"),
        "log_softmax": _along("LogSoftmax"),
        "exp": _simple("Exp"),
        "log": _simple("Log"),
        "reshape": lambda n: TorchLayer("Reshape", (n.attrs.shape,)),  # not short(): (1, 1)
        "permute": lambda n: TorchLayer("Permute", (n.attrs.dims,)),
        "transpose": lambda n: TorchLayer("Permute", (n.attrs.dims,)),
        "anchor_points": lambda n: TorchLayer("AnchorPoints", (n.attrs.height, n.attrs.width),
                                              _non_default(offset=(n.attrs.offset, 0.5))),
        "anchor_strides": lambda n: TorchLayer("AnchorStrides", (n.attrs.height, n.attrs.width,
                                                                 n.attrs.stride)),
        "identity": _simple("Identity"),
        "add": _join,
        "sub": _join,
        "mul": _join,
        "div": _join,
        "concat": _join,
    }

    @classmethod
    def layer(cls, node: Node) -> TorchLayer:
        handler = cls.TRANSFORMS.get(node.op)
        if handler is None:  # tests/test_registry.py keeps this from happening
            raise NotImplementedError(f"the PyTorch back end has no handler for `{node.op}`")
        return handler(node)


def torch_layer(node: Node) -> TorchLayer:
    return TorchGenerator.layer(node)
