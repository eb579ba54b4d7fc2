"""The registry of layer kinds: arguments, shape rule, parameters and MACs.

Adding a layer type touches exactly these places:
  1. a `LayerKind` subclass here (arguments, `infer`, `count_params`, `count_macs`);
  2. its PyTorch handler in `cnndsl/backends/torch_ops.py` (`TORCH_OPS`);
  3. its ONNX handler in `cnndsl/backends/onnx_ops.py`, once that back end exists.
`tests/test_registry.py` walks this registry against every back end, so a missing handler
fails loudly. Nothing here imports torch, onnx or graphviz.

Shapes are per sample, without the batch axis: (C, H, W) for images, (F,) for vectors.
MACs follow torchvision's convention: conv, transposed conv and linear layers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .values import Symbol, describe, type_name

Shape = tuple[int, ...]
REQUIRED = object()
MAX_INT = 2**31 - 1


class LayerError(Exception):
    """A layer refused its arguments or input; the checker adds the location."""

    def __init__(self, message: str, *, arg: str | None = None, label: str = "",
                 help: str | None = None, notes: tuple[str, ...] = (), code: str = "E-shape",
                 inputs: tuple[int, ...] = ()):
        super().__init__(message)
        self.message, self.arg, self.label, self.help = message, arg, label, help
        self.notes, self.code, self.inputs = notes, code, inputs


class Warn:
    """Collects warnings a layer raises while inferring (e.g. a stride that does not tile)."""

    def __init__(self) -> None:
        self.items: list[LayerError] = []

    def __call__(self, message: str, **kw) -> None:
        self.items.append(LayerError(message, **kw))


# ---- argument kinds: each coerces a value or raises ------------------------------------


def _bad(expected: str, value: Any) -> LayerError:
    return LayerError(f"expected {expected}, found {type_name(value)} `{describe(value)}`",
                      code="E-arg")


def as_int(value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            raise LayerError(f"expected an integer, found {value:g} (a float)", code="E-arg",
                             help="round it: round(x), floor(x), ceil(x) or divisible(x, 8)")
        raise _bad("an integer", value)
    if minimum is not None and value < minimum:
        raise LayerError(f"must be at least {minimum}, found {value}", code="E-arg")
    if value > MAX_INT:  # PyTorch and onnxruntime keep sizes in 32 bits
        raise LayerError(f"must be at most {MAX_INT:,} (2**31 - 1), found {value:,}",
                         code="E-arg")
    return value


def positive(value):
    return as_int(value, 1)


def nonnegative(value):
    return as_int(value, 0)


def _pair_of(element: Callable[[Any], int]) -> Callable[[Any], tuple[int, int]]:
    def coerce(value):
        if isinstance(value, tuple):
            if len(value) != 2:
                raise LayerError(f"expected one number or a pair, found {len(value)} numbers",
                                 code="E-arg")
            return (element(value[0]), element(value[1]))
        item = element(value)
        return (item, item)
    return coerce


pair = _pair_of(positive)
pair0 = _pair_of(nonnegative)
PAD_MODES = ("valid", "same", "full")


def padding(value):
    if isinstance(value, str):
        if value not in PAD_MODES:
            from .suggest import did_you_mean
            raise LayerError(f"unknown padding `{value}`", code="E-arg",
                             help=did_you_mean(value, PAD_MODES) or
                             "padding is a number, a pair, valid, same or full")
        return Symbol(value)
    return pair0(value)


def number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad("a number", value)
    return float(value)


def _in_range(low: float, high: float, *, low_open: bool = False,
              high_open: bool = False) -> Callable[[Any], float]:
    """A finite number in an interval, e.g. eps in (0, 1) or momentum in [0, 1]."""
    def coerce(value) -> float:
        x = number(value)
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        if not (math.isfinite(x) and above and below):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise LayerError(f"must be in {interval}, found {describe(value)}", code="E-arg")
        return x
    return coerce


def odd(value) -> int:
    n = as_int(value, 1)
    if n % 2 == 0:
        raise LayerError(f"must be odd, found {n}", code="E-arg",
                         help="the window is centred on its channel (onnxruntime's LRN needs "
                         "an odd size)")
    return n


def probability(value) -> float:
    p = number(value)
    if not 0 <= p < 1:
        raise LayerError(f"must be in [0, 1), found {p:g}", code="E-arg")
    return p


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise _bad("true or false", value)
    return value


def choice(*options: str) -> Callable[[Any], str]:
    def coerce(value):
        if not isinstance(value, str) or value not in options:
            raise LayerError(f"expected one of {', '.join(options)}, found `{describe(value)}`",
                             code="E-arg")
        return str(value)
    return coerce


@dataclass(frozen=True)
class Arg:
    name: str
    coerce: Callable[[Any], Any]
    default: Any = REQUIRED
    positional: bool = True


# ---- spatial arithmetic -------------------------------------------------------------


def window_out(size: int, k: int, s: int, d: int, lo: int, hi: int, ceil_mode=False):
    """floor((W + P_lo + P_hi - D(F-1) - 1) / S) + 1, or None when the kernel does not fit."""
    span = size + lo + hi - d * (k - 1) - 1
    if span < 0:
        return None
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + lo:  # PyTorch: the last window must start inside the input
        out -= 1
    return out


def resolve_padding(mode, size: tuple[int, int], k, s, d) -> tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right); `same` may be asymmetric (extra at the end)."""
    if mode == "valid":
        return (0, 0, 0, 0)
    if mode == "full":
        ph, pw = d[0] * (k[0] - 1), d[1] * (k[1] - 1)
        return (ph, ph, pw, pw)
    if mode == "same":
        pads = []
        for n, ki, si, di in zip(size, k, s, d):
            out = -(-n // si)
            total = max((out - 1) * si + di * (ki - 1) + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    return (mode[0], mode[0], mode[1], mode[1])


def image(x: Shape, op: str) -> tuple[int, int, int]:
    if len(x) != 3:
        raise LayerError(f"{op} needs a C x H x W input, found {fmt(x)}",
                         help="flatten comes after the convolutional part, not before it"
                         if len(x) == 1 else None)
    return x


def short(value):
    """(3, 3) -> 3: a pair the way a person would write it."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        return value[0]
    return value


def fmt(shape: Shape) -> str:
    return " x ".join(map(str, shape))


def windowed(op: str, x: Shape, a: dict, warn: Warn, ceil_mode=False,
             fit_help: str | None = None) -> tuple[int, int]:
    """Output H x W of a sliding window; stores the resolved 4-sided padding in `a`."""
    _, h, w = x
    k, s, d = a["kernel"], a["stride"], a.get("dilation", (1, 1))
    pads = resolve_padding(a["padding"], (h, w), k, s, d)
    a["padding"] = pads
    out, dropped, sums = [], [], []
    for n, ki, si, di, lo, hi in ((h, k[0], s[0], d[0], pads[0], pads[1]),
                                  (w, k[1], s[1], d[1], pads[2], pads[3])):
        o = window_out(n, ki, si, di, lo, hi, ceil_mode)
        if o is None or o < 1:
            raise _does_not_fit(op, (h, w), k, d, pads, s, fit_help)
        out.append(o)
        last_covered = (o - 1) * si + di * (ki - 1)
        dropped.append(0 if ceil_mode else max(0, (lo + n - 1) - last_covered))
        sums.append(f"({n} + {lo + hi} - {di * (ki - 1) + 1}) / {si} + 1 = "
                    f"{(n + lo + hi - di * (ki - 1) - 1) / si + 1:.2f}")
    if any(dropped):
        _warn_tiling(dropped, sums, s, warn)
    return out[0], out[1]


def _warn_tiling(dropped: list[int], sums: list[str], s, warn: Warn) -> None:
    words = [f"{n} {('row', 'rows')[n > 1]}" for n in dropped[:1] if n] + \
            [f"{n} {('column', 'columns')[n > 1]}" for n in dropped[1:] if n]
    axes = [sums[i] for i in (0, 1) if dropped[i]]
    if len(axes) == 2 and axes[0] == axes[1]:
        axes = axes[:1]
    stride = s[0] if s[0] == s[1] else f"{s[0]}x{s[1]}"
    warn(f"stride {stride} does not tile the input: {'; '.join(axes)}; the last "
         f"{' and '.join(words)} of the input are ignored", code="W-stride", arg="stride",
         help="change the padding or the stride so that the windows cover the input")


def _does_not_fit(op, hw, k, d, pads, s, fit_help) -> LayerError:
    eff = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    kernel = f"kernel {k[0]}x{k[1]}" + (f" (dilated to {eff[0]}x{eff[1]})" if eff != k else "")
    padded = (hw[0] + pads[0] + pads[1], hw[1] + pads[2] + pads[3])
    where = f"a {hw[0]}x{hw[1]} input" + (
        f" padded to {padded[0]}x{padded[1]}" if padded != hw else "")
    n, f, p = hw[1], k[1], pads[2] + pads[3]
    formula = (f"output size = floor((W + 2P - D(F-1) - 1)/S) + 1 = floor(({n} + {p} - "
               f"{d[1]}*{f - 1} - 1)/{s[1]}) + 1 = {(n + p - d[1] * (f - 1) - 1) // s[1] + 1}")
    return LayerError(f"{kernel} does not fit {where}", arg="kernel", notes=(formula,),
                      help=fit_help or "pad it (e.g. padding=same) or drop a pooling layer")


# ---- the registry ------------------------------------------------------------------

REGISTRY: dict[str, LayerKind] = {}


class LayerKind:
    """One kind of layer. Subclasses declare `op` and `args` and register themselves."""

    op: ClassVar[str]
    family: ClassVar[str]  # conv, pool, norm, activation, linear, reshape, dropout, merge
    args: ClassVar[tuple[Arg, ...]] = ()
    many_inputs: ClassVar[bool] = False  # merges take several tensors
    doc: ClassVar[str] = ""
    # For generated block classes: the attribute holding the inferred input channels, and
    # how output channels relate to arguments (None: passes the input's channels through).
    channels_in: ClassVar[str | None] = None
    channels_out: ClassVar[str | None] = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.args = tuple(Arg(a.name, a.coerce, a.default if a.default in (REQUIRED, None)
                             else a.coerce(a.default), a.positional) for a in cls.args)
        if "op" in cls.__dict__:
            REGISTRY[cls.op] = cls()

    def infer(self, a: dict, xs: list[Shape], warn: Warn) -> Shape:
        """Output shape; may complete `a` with resolved values (in_channels, padding)."""
        return xs[0]

    def defaults(self) -> dict[str, Any]:
        """The arguments a call may leave out, with their values."""
        return {arg.name: arg.default for arg in self.args if arg.default is not REQUIRED}

    def param_shapes(self, a: dict) -> dict[str, Shape]:
        """Trainable tensors by state_dict suffix (`weight`, `bias`), as PyTorch lays them out."""
        return {}

    def buffer_shapes(self, a: dict) -> dict[str, Shape]:
        """Non-trainable state (batch-norm running statistics)."""
        return {}

    def count_params(self, a: dict, xs: list[Shape], y: Shape) -> int:
        return sum(math.prod(s) for s in self.param_shapes(a).values())

    def count_buffers(self, a: dict, xs: list[Shape], y: Shape) -> int:
        return sum(math.prod(s) for s in self.buffer_shapes(a).values())

    def count_macs(self, a: dict, xs: list[Shape], y: Shape) -> int:
        return 0


class Conv(LayerKind):
    op, family = "conv", "conv"
    channels_in, channels_out = "in_channels", "out_channels"
    doc = "2-D convolution; input channels are inferred"
    args = (Arg("out_channels", positive), Arg("kernel", pair),
            Arg("stride", pair, 1, positional=False), Arg("padding", padding, 0, positional=False),
            Arg("dilation", pair, 1, positional=False),
            Arg("groups", positive, 1, positional=False), Arg("bias", boolean, True, False))

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        for name, channels in (("input channels", c), ("out_channels", a["out_channels"])):
            if channels % a["groups"]:
                raise LayerError(f"{name} ({channels}) are not divisible by groups "
                                 f"({a['groups']})", arg="groups", code="E-groups",
                                 help="groups must divide both the input and output channels")
        a["in_channels"] = c
        h, w = windowed(self.op, xs[0], a, warn)
        return (a["out_channels"], h, w)

    def param_shapes(self, a):
        weight = (a["out_channels"], a["in_channels"] // a["groups"], *a["kernel"])
        return {"weight": weight, **({"bias": (a["out_channels"],)} if a["bias"] else {})}

    def count_macs(self, a, xs, y):
        kh, kw = a["kernel"]
        return y[0] * (a["in_channels"] // a["groups"]) * kh * kw * y[1] * y[2]


class ConvTranspose(LayerKind):
    op, family = "conv_transpose", "conv"
    channels_in, channels_out = "in_channels", "out_channels"
    doc = "2-D transposed convolution (upsampling); out = (W-1)S - 2P + D(F-1) + output_padding + 1"
    args = (Arg("out_channels", positive), Arg("kernel", pair),
            Arg("stride", pair, 1, positional=False), Arg("padding", pair0, 0, positional=False),
            Arg("output_padding", pair0, 0, positional=False),
            Arg("dilation", pair, 1, positional=False),
            Arg("groups", positive, 1, positional=False), Arg("bias", boolean, True, False))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        for name, channels in (("input channels", c), ("out_channels", a["out_channels"])):
            if channels % a["groups"]:
                raise LayerError(f"{name} ({channels}) are not divisible by groups "
                                 f"({a['groups']})", arg="groups", code="E-groups")
        a["in_channels"] = c
        out = []
        for n, k, s, p, op, d in zip((h, w), a["kernel"], a["stride"], a["padding"],
                                     a["output_padding"], a["dilation"]):
            if op >= s:  # PyTorch allows up to max(stride, dilation); onnxruntime does not
                raise LayerError(f"output_padding {op} must be smaller than the stride ({s})",
                                 arg="output_padding", code="E-arg",
                                 help="onnxruntime refuses output_padding >= stride (PyTorch "
                                 "alone would take up to the dilation)")
            o = (n - 1) * s - 2 * p + d * (k - 1) + op + 1
            if o < 1:
                raise LayerError(f"padding {p} leaves no output ({o})", arg="padding")
            out.append(o)
        return (a["out_channels"], out[0], out[1])

    def param_shapes(self, a):
        weight = (a["in_channels"], a["out_channels"] // a["groups"], *a["kernel"])
        return {"weight": weight, **({"bias": (a["out_channels"],)} if a["bias"] else {})}

    def count_macs(self, a, xs, y):
        kh, kw = a["kernel"]
        _, h, w = xs[0]
        return a["in_channels"] * (a["out_channels"] // a["groups"]) * kh * kw * h * w


class _Pool(LayerKind):
    family = "pool"

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        if a["stride"] is None:
            a["stride"] = a["kernel"]
        if isinstance(a["padding"], tuple) and any(
                2 * p > k for p, k in zip(a["padding"], a["kernel"])):
            raise LayerError(f"padding {describe(a['padding'])} is more than half the kernel "
                             f"{describe(a['kernel'])}", arg="padding", code="E-arg",
                             help="PyTorch allows at most kernel // 2 on each side")
        mode = a["padding"]
        h, w = windowed(self.op, xs[0], a, warn, a["ceil_mode"])
        _pool_padding_fits(mode, a)
        _windows_see_input(self.op, xs[0][1:], a, (h, w))
        return (c, h, w)


def _pool_padding_fits(mode, a: dict) -> None:
    """What a pool's back ends take: PyTorch at most kernel // 2 of padding on a side
    (onnxruntime less than the kernel). `same` with a dilation and `full` can need more
    (a number written by hand is refused before it is resolved)."""
    if not isinstance(mode, str):
        return
    pads, kernel = a["padding"], a["kernel"]
    for axis, (lo, hi), k in (("row", pads[:2], kernel[0]), ("column", pads[2:], kernel[1])):
        if max(lo, hi) > k // 2:
            n = max(lo, hi)
            dilated = a.get("dilation", (1, 1)) != (1, 1)
            raise LayerError(
                f"padding={mode} needs {n} {axis}{'s' if n > 1 else ''} of padding on a side; "
                f"a {k}-{axis} kernel takes at most {k // 2}", arg="padding", code="E-arg",
                help="PyTorch's pools allow at most kernel // 2 on each side: give a smaller "
                "padding by hand" + (" or a smaller dilation" if dilated else ""))


def _windows_see_input(op: str, hw: tuple[int, int], a: dict, out: tuple[int, int]) -> None:
    """Every window must cover at least one input element: a dilated window that falls on
    padding alone is -inf in PyTorch and the lowest float in onnxruntime. Only windows that
    start in the leading padding can miss the input (the last one starts inside it)."""
    pads = a["padding"]
    for axis, n, k, s, d, lo, o in zip(("row", "column"), hw, a["kernel"], a["stride"],
                                       a.get("dilation", (1, 1)), pads[::2], out):
        for i in range(min(o, lo // s + 1)):
            taps = [i * s - lo + j * d for j in range(k)]
            if not any(0 <= t < n for t in taps):
                raise LayerError(
                    f"{op} window {i} covers only padding: its {axis} taps fall at "
                    f"{', '.join(map(str, taps))} of a {n}-{axis} input", arg="dilation"
                    if d > 1 else "padding", code="E-arg",
                    help="use a smaller dilation or padding, or a larger input")


class MaxPool(_Pool):
    op = "maxpool"
    doc = "max pooling; stride defaults to the kernel"
    args = (Arg("kernel", pair), Arg("stride", pair, None), Arg("padding", padding, 0),
            Arg("dilation", pair, 1), Arg("ceil_mode", boolean, False, positional=False))


class AvgPool(_Pool):
    op = "avgpool"
    doc = "average pooling; stride defaults to the kernel; padding counts as zeros"
    args = (Arg("kernel", pair), Arg("stride", pair, None), Arg("padding", padding, 0),
            Arg("ceil_mode", boolean, False, positional=False),
            Arg("count_include_pad", boolean, True, positional=False))


class _GlobalPool(LayerKind):
    family = "pool"

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        return (c, 1, 1)


class GlobalAvgPool(_GlobalPool):
    op = "global_avgpool"
    doc = "average over H x W -> C x 1 x 1"


class GlobalMaxPool(_GlobalPool):
    op = "global_maxpool"
    doc = "maximum over H x W -> C x 1 x 1"


class AdaptiveAvgPool(LayerKind):
    op, family = "adaptive_avgpool", "pool"
    doc = "average pooling to a fixed output size (torchvision's AlexNet/VGG 6x6, 7x7)"
    args = (Arg("size", pair),)

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        return (c, *a["size"])


class BatchNorm(LayerKind):
    op, family = "batchnorm", "norm"
    channels_in = "num_features"
    doc = "batch normalisation over channels (2-D) or features (1-D)"
    args = (Arg("eps", _in_range(0, 1, low_open=True, high_open=True), 1e-5, positional=False),
            Arg("momentum", _in_range(0, 1), 0.1, positional=False))

    def infer(self, a, xs, warn):
        if len(xs[0]) not in (1, 3):
            raise LayerError(f"batchnorm needs C x H x W or features, found {fmt(xs[0])}")
        a["num_features"] = xs[0][0]
        return xs[0]

    def param_shapes(self, a):
        return {"weight": (a["num_features"],), "bias": (a["num_features"],)}

    def buffer_shapes(self, a):
        c = a["num_features"]
        return {"running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}


class LRN(LayerKind):
    op, family = "lrn", "norm"
    doc = "local response normalisation across channels (AlexNet)"
    args = (Arg("size", odd, 5), Arg("alpha", _in_range(0, 1e6), 1e-4),
            Arg("beta", _in_range(0, 1e6), 0.75), Arg("k", _in_range(0, 1e6, low_open=True), 1.0))

    def infer(self, a, xs, warn):
        image(xs[0], self.op)
        return xs[0]


class Dropout(LayerKind):
    op, family = "dropout", "dropout"
    doc = "dropout (identity at inference)"
    args = (Arg("p", probability, 0.5),)


class Flatten(LayerKind):
    op, family = "flatten", "reshape"
    channels_out = "-"  # C*H*W: not an expression of the block's parameters
    doc = "C x H x W -> C*H*W"

    def infer(self, a, xs, warn):
        return (math.prod(xs[0]),)


class Linear(LayerKind):
    op, family = "linear", "linear"
    channels_in, channels_out = "in_features", "out_features"
    doc = "fully connected layer; input features are inferred"
    args = (Arg("out_features", positive), Arg("bias", boolean, True, positional=False))

    def infer(self, a, xs, warn):
        if len(xs[0]) != 1:
            raise LayerError(f"linear needs a flat input, found {fmt(xs[0])}",
                             help="add `flatten` before it", code="E-shape")
        a["in_features"] = xs[0][0]
        return (a["out_features"],)

    def param_shapes(self, a):
        weight = (a["out_features"], a["in_features"])
        return {"weight": weight, **({"bias": (a["out_features"],)} if a["bias"] else {})}

    def count_macs(self, a, xs, y):
        return a["in_features"] * a["out_features"]


class Upsample(LayerKind):
    op, family = "upsample", "reshape"
    doc = "nearest or bilinear upsampling by an integer factor"
    args = (Arg("scale", pair, 2), Arg("mode", choice("nearest", "bilinear"), "nearest"))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        return (c, h * a["scale"][0], w * a["scale"][1])


class Pad(LayerKind):
    op, family = "pad", "reshape"
    doc = "constant padding on every side: pad(1) or pad((rows, columns))"
    args = (Arg("padding", pair0), Arg("value", number, 0.0))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        ph, pw = a["padding"]
        a["padding"] = (ph, ph, pw, pw)
        return (c, h + 2 * ph, w + 2 * pw)


class _Activation(LayerKind):
    family = "activation"


def _activation(op: str, doc: str, args: tuple[Arg, ...] = ()) -> None:
    type(op.title().replace("_", ""), (_Activation,), {"op": op, "doc": doc, "args": args})


for _op, _doc in (("relu", "max(0, x)"), ("relu6", "min(max(0, x), 6)"),
                  ("gelu", "Gaussian error linear unit"), ("silu", "x * sigmoid(x) (swish)"),
                  ("hardswish", "x * relu6(x + 3) / 6"), ("sigmoid", "1 / (1 + e^-x)"),
                  ("tanh", "hyperbolic tangent"), ("identity", "passes its input through"),
                  ("softmax", "softmax over channels / features"),
                  ("log_softmax", "log of softmax over channels / features")):
    _activation(_op, _doc)
_activation("leaky_relu", "x if x > 0 else slope * x", (Arg("slope", number, 0.01),))
_activation("elu", "x if x > 0 else alpha * (e^x - 1)", (Arg("alpha", number, 1.0),))


class Add(LayerKind):
    op, family, many_inputs = "add", "merge", True
    doc = "element-wise sum of tensors of one shape"

    def infer(self, a, xs, warn):
        for i, x in enumerate(xs[1:], 1):
            if x != xs[0]:
                raise LayerError(f"add of different shapes: {fmt(xs[0])} and {fmt(x)}",
                                 inputs=(0, i), help="project one side (a 1x1 conv) so the "
                                 "channels and sizes agree")
        return xs[0]


class Mul(LayerKind):
    op, family, many_inputs = "mul", "merge", True
    doc = "element-wise product; later tensors may be 1 on any axis (squeeze-excite gates)"

    def infer(self, a, xs, warn):
        for i, x in enumerate(xs[1:], 1):
            if len(x) != len(xs[0]) or any(m not in (n, 1) for n, m in zip(xs[0], x)):
                raise LayerError(f"mul of {fmt(xs[0])} by {fmt(x)}: each size must match or "
                                 "be 1", inputs=(0, i))
        return xs[0]


class Concat(LayerKind):
    op, family, many_inputs = "concat", "merge", True
    channels_out = "+"  # the sum of the inputs' channels
    doc = "concatenation along channels; all other sizes must agree"

    def infer(self, a, xs, warn):
        for i, x in enumerate(xs[1:], 1):
            if len(x) != len(xs[0]) or x[1:] != xs[0][1:]:
                raise LayerError(
                    f"concat of different sizes: {fmt(xs[0][1:]) or fmt(xs[0])} and "
                    f"{fmt(x[1:]) or fmt(x)}", inputs=(0, i),
                    help="make the spatial sizes agree: padding=same on the convs, ceil_mode on "
                    "the pools, or pad(...) the smaller tensor")
        return (sum(x[0] for x in xs), *xs[0][1:])
