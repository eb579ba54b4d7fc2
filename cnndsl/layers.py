"""The registry of layer kinds: one typed contract per op.

A `LayerKind` owns everything about its op: its arguments, its typed record after
inference (`Attrs`, with `Padding` holding the spellings the back ends need), its tensors
with their initialisation (`weights`), its shape rule, its MACs, its diagram label, and for
merges how they combine. Adding a layer type touches exactly these places:
  1. a `LayerKind` subclass here;
  2. its PyTorch handler in `TorchGenerator.TRANSFORMS` (cnndsl/backends/torch_ops.py);
  3. its ONNX handler in `OnnxGenerator.TRANSFORMS` (cnndsl/backends/onnx_ops.py).
`tests/test_registry.py` pushes every kind's `example` through every back end, so a missing
or wrong piece fails by name. Nothing here imports torch, onnx or graphviz.

Shapes are per sample, without the batch axis: (C, H, W) for images, (F,) for vectors.
MACs follow torchvision's convention: conv, transposed conv and linear layers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, make_dataclass
from functools import lru_cache
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
    tensor: bool = False  # names a tensor: the checker passes its shape (`like=e1`)
    shown: str | None = None  # how a signature shows a computed default (`stride=kernel`)
    layer: bool = False  # a block parameter that is a layer (`act: layer = relu`)


def tensor_shape(value) -> tuple[int, ...]:
    """A tensor argument's value: the named tensor's shape (the checker resolves the name)."""
    if not (isinstance(value, tuple) and all(isinstance(n, int) for n in value)):
        raise LayerError(f"expected a tensor's name, found {describe(value)}", code="E-arg")
    return value


AXIS_NAMES = {"channels": 0, "height": 1, "width": 2}


def axis(value):
    """An axis of the per-sample shape (the batch axis is not counted): a number, negative
    from the end, or a name of a C x H x W tensor's axis (`channels`, `height`, `width`)."""
    if isinstance(value, str):
        if value not in AXIS_NAMES:
            from .suggest import did_you_mean
            raise LayerError(f"unknown axis `{value}`", code="E-arg",
                             help=did_you_mean(value, AXIS_NAMES) or "an axis is a number (0 "
                             "is the first after the batch) or channels, height, width")
        return str(value)
    return as_int(value, -64)


def resolve_axis(value, shape: tuple[int, ...], arg: str = "axis") -> int:
    """The axis as an index into the per-sample shape (0 .. rank - 1)."""
    rank = len(shape)
    if isinstance(value, str):
        if rank != 3:
            raise LayerError(f"`{value}` names an axis of a C x H x W tensor; this one is "
                             f"{fmt(shape)}", arg=arg, code="E-arg",
                             help="number the axis: 0 is the first after the batch")
        return AXIS_NAMES[value]
    if not -rank <= value < rank:
        raise LayerError(f"axis {value} is out of range for {fmt(shape)}: its axes are 0 to "
                         f"{rank - 1} (or -1 to -{rank}), the batch axis not counted",
                         arg=arg, code="E-arg")
    return value % rank


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


# ---- typed records: what a layer is once its input is known -----------------------------


@dataclass(frozen=True, slots=True)
class Padding:
    """Resolved padding on the four sides (`same` may put one more row at the bottom and one
    more column on the right), with the spellings each back end takes."""

    top: int
    bottom: int
    left: int
    right: int

    @classmethod
    def of(cls, value) -> Padding:
        if isinstance(value, Padding):
            return value
        if len(value) == 2:
            return cls(value[0], value[0], value[1], value[1])
        return cls(*value)

    @property
    def symmetric(self) -> bool:
        return self.top == self.bottom and self.left == self.right

    @property
    def pair(self) -> tuple[int, int]:
        """(rows, columns) on each side; only for symmetric padding."""
        return (self.top, self.left)

    def torch_pad(self) -> tuple[int, int, int, int]:
        """F.pad's order: left, right, top, bottom."""
        return (self.left, self.right, self.top, self.bottom)

    def onnx(self) -> list[int]:
        """ONNX's order: all begins, then all ends."""
        return [self.top, self.left, self.bottom, self.right]

    def __iter__(self):
        return iter((self.top, self.bottom, self.left, self.right))


class Record:
    """A layer's frozen, typed attributes after inference. Subclasses are dataclasses;
    `of` picks their fields from the working values of `LayerKind.infer`."""

    @classmethod
    def of(cls, values: dict) -> Record:
        names, paddings = _FIELDS.get(cls) or _fields_of(cls)
        kwargs = {name: values[name] for name in names}
        for name in paddings:
            kwargs[name] = Padding.of(kwargs[name])
        return cls(**kwargs)


_FIELDS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _fields_of(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    found = fields(cls)
    _FIELDS[cls] = (tuple(f.name for f in found),
                    tuple(f.name for f in found if f.type in ("Padding", Padding)))
    return _FIELDS[cls]


@dataclass(frozen=True, slots=True)
class NoAttrs(Record):
    pass


@dataclass(frozen=True, slots=True)
class Init:
    """How PyTorch initialises a tensor: U(-b, b) with b = 1/sqrt(fan_in) (what
    kaiming_uniform(a=sqrt(5)) gives conv and linear weights, and their biases), or a
    constant."""

    fan_in: int = 0  # uniform with bound 1/sqrt(fan_in)
    constant: float | None = None
    values: tuple[float, ...] | None = None  # given in the spec (`weight=...`), row-major


@dataclass(frozen=True, slots=True)
class Weight:
    """A tensor of a layer, by its state_dict suffix (`weight`, `running_mean`)."""

    suffix: str
    shape: Shape
    init: Init
    buffer: bool = False  # not a parameter (batch-norm running statistics)
    dtype: str = "float32"
    trainable: bool = True  # a parameter that training leaves as it is (`trainable=false`)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _fan_in_init(weight: Shape, fan_in_axis: int = 1) -> Init:
    return Init(fan_in=weight[fan_in_axis] * math.prod(weight[2:]))


@lru_cache(maxsize=256)  # the tensors are frozen records: layers of one width share them
def _affine(channels: int, affine: bool = True) -> tuple[Weight, ...]:
    if not affine:
        return ()
    return (Weight("weight", (channels,), Init(constant=1.0)),
            Weight("bias", (channels,), Init(constant=0.0)))


def _conv_like(weight: Shape, out: int, bias: bool, values=None,
               trainable: bool = True) -> tuple[Weight, ...]:
    init = _fan_in_init(weight)
    given = Init(values=values) if values is not None else init
    return (Weight("weight", weight, given, trainable=trainable),
            *((Weight("bias", (out,), init, trainable=trainable),) if bias else ()))


MAX_GIVEN_VALUES = 65_536  # a weight written out in a spec: a filter, a projection


def given_values(value) -> tuple[float, ...]:
    """`weight=((-1, -2, -1), (0, 0, 0), (1, 2, 1))` or `weight=range(16)`: numbers,
    nested tuples flattened in row-major order (checked against the weight's shape)."""
    flat: list[float] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, tuple):
            pending.extend(reversed(item))
        else:
            flat.append(number(item))
            if not math.isfinite(flat[-1]):
                raise LayerError(f"expected finite numbers, found {flat[-1]}", code="E-arg")
        if len(flat) > MAX_GIVEN_VALUES:
            raise LayerError(f"at most {MAX_GIVEN_VALUES:,} values", code="E-arg")
    return tuple(flat)


def _check_given(a: dict, shape: Shape) -> None:
    """A weight given in the spec must have exactly the values its shape holds."""
    values = a.get("weight")
    if values is not None and len(values) != math.prod(shape):
        raise LayerError(f"`weight` gives {len(values)} values; a weight of shape "
                         f"{' x '.join(map(str, shape))} holds {math.prod(shape)}",
                         arg="weight", code="E-arg",
                         help="write them row by row, in PyTorch's layout (out_channels, "
                         "in_channels / groups, kernel rows, kernel columns)")


# ---- the registry ------------------------------------------------------------------

REGISTRY: dict[str, LayerKind] = {}
# Layers added after 0.1.0: a spec written before may use these names for its own tensors
# and blocks, and keeps checking (with a W-shadow warning); see README "Compatibility".
ADDED_AFTER_0_1 = frozenset({"reshape", "permute", "transpose", "exp", "log", "sub", "div"})


class LayerKind:
    """One kind of layer: everything about an op but how a back end writes it.

    A subclass declares `op`, `family`, `args` and `Attrs` (its typed record) and registers
    itself; it gives its output shape and resolved values (`infer`), its tensors with their
    initialisation (`weights`), its MACs and its diagram label. Back ends look a node's op up
    in their own tables (TorchGenerator.TRANSFORMS, OnnxGenerator.TRANSFORMS)."""

    op: ClassVar[str]
    family: ClassVar[str]  # conv, pool, norm, activation, linear, reshape, dropout, merge
    args: ClassVar[tuple[Arg, ...]] = ()
    Attrs: ClassVar[type[Record]] = NoAttrs
    doc: ClassVar[str] = ""
    # merges: how the inputs combine ("add", "mul", "concat"); they take several tensors
    combine: ClassVar[str | None] = None
    constants: ClassVar[bool] = False  # a merge that takes a number for a tensor (`mul(x, 2)`)
    # For generated block classes: the attribute holding the inferred input channels, and
    # how output channels relate to arguments (None: passes the input's channels through).
    channels_in: ClassVar[str | None] = None
    channels_out: ClassVar[str | None] = None
    # a .cnn line using it on `x` (8 x 8 x 8) or `y` (8 x 8 x 8), for tests/test_registry.py
    example: ClassVar[str] = ""
    # the layer after which outputs are probabilities (softmax, sigmoid) or log-probabilities
    scores: ClassVar[str | None] = None
    # a batch norm that may be folded into a preceding layer of these ops (cnndsl.passes)
    folds_into: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.args = tuple(Arg(a.name, a.coerce, a.default if a.default in (REQUIRED, None)
                             else a.coerce(a.default), a.positional, a.tensor, a.shown)
                         for a in cls.args)
        if "op" in cls.__dict__:
            REGISTRY[cls.op] = cls()

    @property
    def many_inputs(self) -> bool:
        return self.combine is not None

    def check(self, args: dict, xs: list[Shape], warn: Warn) -> tuple[Record, Shape]:
        """The typed record and the output shape for these arguments and inputs."""
        values = dict(args)
        shape = self.infer(values, xs, warn)
        return self.Attrs.of(values), shape

    def infer(self, a: dict, xs: list[Shape], warn: Warn) -> Shape:
        """Output shape; may complete the working values `a` (in_channels, padding)."""
        return xs[0]

    def signature(self) -> str:
        """`conv(out_channels, kernel, stride=1, ...)`, as the layer reference shows it."""
        if self.combine is not None:
            return f"{self.op}(a, b, ..." + "".join(
                f", {a.name}={describe(short(a.default))}" for a in self.args) + ")"
        if not self.args:
            return self.op
        return f"{self.op}(" + ", ".join(
            a.name if a.default is REQUIRED else
            f"{a.name}={a.shown or ('…' if a.default is None else describe(short(a.default)))}"
            for a in self.args) + ")"

    def defaults(self) -> dict[str, Any]:
        """The arguments a call may leave out, with their values."""
        return {arg.name: arg.default for arg in self.args if arg.default is not REQUIRED}

    def weights(self, a: Record) -> tuple[Weight, ...]:
        """The layer's tensors as PyTorch lays them out, with their initialisation."""
        return ()

    def count_macs(self, a: Record, xs: list[Shape], y: Shape) -> int:
        return 0

    def label(self, a: Record) -> str:
        """The diagram's text for the node: `conv 3x3/2, 64`."""
        return self.op


def pair_text(value) -> str:
    value = short(value)
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _kernel_label(a) -> str:
    text = f"{a.kernel[0]}x{a.kernel[1]}"
    if a.stride != (1, 1):
        text += f"/{pair_text(a.stride)}"
    return text


def _groups(channels: int, out: int, groups: int, code: str = "E-groups") -> None:
    for name, n in (("input channels", channels), ("out_channels", out)):
        if n % groups:
            raise LayerError(f"{name} ({n}) are not divisible by groups ({groups})",
                             arg="groups", code=code,
                             help="groups must divide both the input and output channels")


@dataclass(frozen=True, slots=True)
class ConvAttrs(Record):
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding
    dilation: tuple[int, int]
    groups: int
    bias: bool
    weight: tuple[float, ...] | None = None  # given in the spec
    trainable: bool = True


class Conv(LayerKind):
    op, family, Attrs = "conv", "conv", ConvAttrs
    channels_in, channels_out = "in_channels", "out_channels"
    doc = "2-D convolution; input channels are inferred"
    example = "x -> conv(6, 3, stride=2, padding=same, groups=2)"
    args = (Arg("out_channels", positive), Arg("kernel", pair),
            Arg("stride", pair, 1, positional=False), Arg("padding", padding, 0, positional=False),
            Arg("dilation", pair, 1, positional=False),
            Arg("groups", positive, 1, positional=False), Arg("bias", boolean, True, False),
            Arg("weight", given_values, None, positional=False),
            Arg("trainable", boolean, True, positional=False))

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        _groups(c, a["out_channels"], a["groups"])
        a["in_channels"] = c
        _check_given(a, (a["out_channels"], c // a["groups"], *a["kernel"]))
        h, w = windowed(self.op, xs[0], a, warn)
        return (a["out_channels"], h, w)

    def weights(self, a):
        return _conv_like((a.out_channels, a.in_channels // a.groups, *a.kernel),
                          a.out_channels, a.bias, a.weight, a.trainable)

    def count_macs(self, a, xs, y):
        kh, kw = a.kernel
        return y[0] * (a.in_channels // a.groups) * kh * kw * y[1] * y[2]

    def label(self, a):
        extra = " fixed" if not a.trainable else ""
        if a.groups == a.in_channels == a.out_channels and a.groups > 1:
            extra += " depthwise"
        elif a.groups > 1:
            extra += f" g{a.groups}"
        if a.dilation != (1, 1):
            extra += f" d{pair_text(a.dilation)}"
        return f"conv {_kernel_label(a)}, {a.out_channels}{extra}"


@dataclass(frozen=True, slots=True)
class ConvTransposeAttrs(Record):
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding
    output_padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool


class ConvTranspose(LayerKind):
    op, family, Attrs = "conv_transpose", "conv", ConvTransposeAttrs
    channels_in, channels_out = "in_channels", "out_channels"
    doc = "2-D transposed convolution (upsampling); out = (W-1)S - 2P + D(F-1) + output_padding + 1"
    example = "x -> conv_transpose(4, 3, stride=2, padding=1, output_padding=1)"
    args = (Arg("out_channels", positive), Arg("kernel", pair),
            Arg("stride", pair, 1, positional=False), Arg("padding", pair0, 0, positional=False),
            Arg("output_padding", pair0, 0, positional=False),
            Arg("dilation", pair, 1, positional=False),
            Arg("groups", positive, 1, positional=False), Arg("bias", boolean, True, False))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        _groups(c, a["out_channels"], a["groups"])
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

    def weights(self, a):
        return _conv_like((a.in_channels, a.out_channels // a.groups, *a.kernel),
                          a.out_channels, a.bias)

    def count_macs(self, a, xs, y):
        kh, kw = a.kernel
        _, h, w = xs[0]
        return a.in_channels * (a.out_channels // a.groups) * kh * kw * h * w

    def label(self, a):
        return f"conv_transpose {_kernel_label(a)}, {a.out_channels}"


@dataclass(frozen=True, slots=True)
class PoolAttrs(Record):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding
    dilation: tuple[int, int]
    ceil_mode: bool
    count_include_pad: bool


class _Pool(LayerKind):
    family, Attrs = "pool", PoolAttrs

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        if a["stride"] is None:
            a["stride"] = a["kernel"]
        a.setdefault("dilation", (1, 1))
        a.setdefault("count_include_pad", True)
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

    def label(self, a):
        return f"{self.op} {_kernel_label(a)}"
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
    example = "x -> maxpool(3, stride=2, padding=same)"
    args = (Arg("kernel", pair), Arg("stride", pair, None, shown="kernel"),
            Arg("padding", padding, 0), Arg("dilation", pair, 1),
            Arg("ceil_mode", boolean, False, positional=False))


class AvgPool(_Pool):
    op = "avgpool"
    doc = "average pooling; stride defaults to the kernel; padding counts as zeros"
    example = "x -> avgpool(3, stride=2, padding=1, count_include_pad=false)"
    args = (Arg("kernel", pair), Arg("stride", pair, None, shown="kernel"),
            Arg("padding", padding, 0), Arg("ceil_mode", boolean, False, positional=False),
            Arg("count_include_pad", boolean, True, positional=False))


class _GlobalPool(LayerKind):
    family = "pool"

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        return (c, 1, 1)


class GlobalAvgPool(_GlobalPool):
    op = "global_avgpool"
    doc = "average over H x W -> C x 1 x 1"
    example = "x -> global_avgpool"


class GlobalMaxPool(_GlobalPool):
    op = "global_maxpool"
    doc = "maximum over H x W -> C x 1 x 1"
    example = "x -> global_maxpool"


@dataclass(frozen=True, slots=True)
class SizeAttrs(Record):
    size: tuple[int, int]


class AdaptiveAvgPool(LayerKind):
    op, family, Attrs = "adaptive_avgpool", "pool", SizeAttrs
    doc = ("average pooling to a fixed output size (torchvision's AlexNet/VGG 6x6, 7x7; "
           "uneven windows where the sizes do not divide, as PyTorch)")
    example = "x -> adaptive_avgpool(3)"
    args = (Arg("size", pair),)

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        return (c, *a["size"])

    def label(self, a):
        return f"adaptive_avgpool {pair_text(a.size)}"


# ---- normalisation -----------------------------------------------------------------------

_EPS = _in_range(0, 1, low_open=True, high_open=True)


@dataclass(frozen=True, slots=True)
class BatchNormAttrs(Record):
    num_features: int
    eps: float
    momentum: float


class BatchNorm(LayerKind):
    op, family, Attrs = "batchnorm", "norm", BatchNormAttrs
    channels_in = "num_features"
    folds_into = ("conv",)
    doc = "batch normalisation over channels (2-D) or features (1-D)"
    example = "x -> batchnorm(eps=0.001, momentum=0.01)"
    args = (Arg("eps", _EPS, 1e-5, positional=False),
            Arg("momentum", _in_range(0, 1), 0.1, positional=False))

    def infer(self, a, xs, warn):
        if len(xs[0]) not in (1, 3):
            raise LayerError(f"batchnorm needs C x H x W or features, found {fmt(xs[0])}")
        a["num_features"] = xs[0][0]
        return xs[0]

    def weights(self, a):
        return _batchnorm_tensors(a.num_features)


@lru_cache(maxsize=256)
def _batchnorm_tensors(c: int) -> tuple[Weight, ...]:
    return (*_affine(c), Weight("running_mean", (c,), Init(constant=0.0), buffer=True),
            Weight("running_var", (c,), Init(constant=1.0), buffer=True),
            Weight("num_batches_tracked", (), Init(constant=0), buffer=True, dtype="int64"))



@dataclass(frozen=True, slots=True)
class NormAttrs(Record):
    channels: int
    groups: int
    eps: float
    affine: bool


class LayerNorm(LayerKind):
    op, family, Attrs = "layernorm", "norm", NormAttrs
    channels_in = "channels"
    doc = ("layer normalisation over channels at each pixel (ConvNeXt's LayerNorm2d), or "
           "over features")
    example = "x -> layernorm(eps=1e-6)"
    args = (Arg("eps", _EPS, 1e-5, positional=False),
            Arg("affine", boolean, True, positional=False))

    def infer(self, a, xs, warn):
        if len(xs[0]) not in (1, 3):
            raise LayerError(f"layernorm needs C x H x W or features, found {fmt(xs[0])}")
        a["channels"], a["groups"] = xs[0][0], 1
        return xs[0]

    def weights(self, a):
        return _affine(a.channels, a.affine)


class GroupNorm(LayerKind):
    op, family, Attrs = "groupnorm", "norm", NormAttrs
    channels_in = "channels"
    doc = "group normalisation: channels in `groups` groups, each normalised over C/G x H x W"
    example = "x -> groupnorm(4)"
    args = (Arg("groups", positive), Arg("eps", _EPS, 1e-5, positional=False),
            Arg("affine", boolean, True, positional=False))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        if c % a["groups"]:
            raise LayerError(f"{c} channels are not divisible into {a['groups']} groups",
                             arg="groups", code="E-groups",
                             help="groups must divide the channels")
        if c // a["groups"] * h * w == 1:  # PyTorch refuses it at batch 1
            raise LayerError(f"group norm needs more than one value per group; the input is "
                             f"{fmt(xs[0])} in {a['groups']} groups", arg="groups",
                             code="E-shape", help="use fewer groups")
        a["channels"] = c
        return xs[0]

    def weights(self, a):
        return _affine(a.channels, a.affine)

    def label(self, a):
        return f"groupnorm {a.groups}"


class InstanceNorm(LayerKind):
    op, family, Attrs = "instancenorm", "norm", NormAttrs
    channels_in = "channels"
    doc = "instance normalisation: each channel of each image over H x W (no running statistics)"
    example = "x -> instancenorm(affine=true)"
    args = (Arg("eps", _EPS, 1e-5, positional=False),
            Arg("affine", boolean, False, positional=False))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        if h * w == 1:  # PyTorch refuses it: a single value normalises to 0
            raise LayerError(f"instance norm needs more than one value per channel; the "
                             f"input is {fmt(xs[0])}", code="E-shape",
                             help="normalise before the spatial size reaches 1 x 1, or use "
                             "layernorm over the channels")
        a["channels"], a["groups"] = c, c
        return xs[0]

    def weights(self, a):
        return _affine(a.channels, a.affine)


@dataclass(frozen=True, slots=True)
class LRNAttrs(Record):
    size: int
    alpha: float
    beta: float
    k: float


class LRN(LayerKind):
    op, family, Attrs = "lrn", "norm", LRNAttrs
    doc = "local response normalisation across channels (AlexNet)"
    example = "x -> lrn(size=3)"
    args = (Arg("size", odd, 5), Arg("alpha", _in_range(0, 1e6), 1e-4),
            Arg("beta", _in_range(0, 1e6), 0.75), Arg("k", _in_range(0, 1e6, low_open=True), 1.0))

    def infer(self, a, xs, warn):
        image(xs[0], self.op)
        return xs[0]


# ---- regularisation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DropAttrs(Record):
    p: float
    mode: str = "row"


class Dropout(LayerKind):
    op, family, Attrs = "dropout", "dropout", DropAttrs
    doc = "dropout (identity at inference)"
    example = "x -> dropout(0.3)"
    args = (Arg("p", probability, 0.5),)

    def infer(self, a, xs, warn):
        a.setdefault("mode", "element")
        return xs[0]

    def label(self, a):
        return f"{self.op} {a.p:g}"


class Dropout2d(Dropout):
    op = "dropout2d"
    doc = "drops whole channels (identity at inference)"
    example = "x -> dropout2d(0.2)"

    def infer(self, a, xs, warn):
        image(xs[0], self.op)
        a["mode"] = "channel"
        return xs[0]


class StochasticDepth(Dropout):
    op = "stochastic_depth"
    doc = ("drops the whole input of a sample (`row`) or of the batch (`batch`) with "
           "probability p and scales the rest by 1/(1-p); identity at inference. At the end "
           "of a residual body: stochastic depth (ConvNeXt, EfficientNet)")
    example = "x -> stochastic_depth(0.1)"
    args = (Arg("p", probability, 0.5), Arg("mode", choice("row", "batch"), "row"))

    def infer(self, a, xs, warn):
        return xs[0]


# ---- shapes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlattenAttrs(Record):
    start: int
    end: int
    whole: bool  # every axis: C x H x W -> C*H*W


class Flatten(LayerKind):
    op, family, Attrs = "flatten", "reshape", FlattenAttrs
    channels_out = "-"  # C*H*W: not an expression of the block's parameters
    doc = ("C x H x W -> C*H*W; `flatten(1)` or `flatten(start, end)` joins only axes "
           "start .. end (4 x 8 x 8 -> 4 x 64)")
    example = "x -> flatten(1)"
    args = (Arg("start", axis, 0), Arg("end", axis, -1))

    def infer(self, a, xs, warn):
        x = xs[0]
        start, end = resolve_axis(a["start"], x, "start"), resolve_axis(a["end"], x, "end")
        if end < start:
            raise LayerError(f"flatten from axis {start} to axis {end}: the end comes before "
                             "the start", arg="end", code="E-arg")
        a["start"], a["end"], a["whole"] = start, end, start == 0 and end == len(x) - 1
        return (*x[:start], math.prod(x[start:end + 1]), *x[end + 1:])

    def label(self, a):
        return "flatten" if a.whole else f"flatten {a.start}..{a.end}"


@dataclass(frozen=True, slots=True)
class LinearAttrs(Record):
    in_features: int
    out_features: int
    bias: bool
    weight: tuple[float, ...] | None = None  # given in the spec
    trainable: bool = True


class Linear(LayerKind):
    op, family, Attrs = "linear", "linear", LinearAttrs
    channels_in, channels_out = "in_features", "out_features"
    doc = "fully connected layer; input features are inferred"
    example = "x -> flatten -> linear(5)"
    args = (Arg("out_features", positive), Arg("bias", boolean, True, positional=False),
            Arg("weight", given_values, None, positional=False),
            Arg("trainable", boolean, True, positional=False))

    def infer(self, a, xs, warn):
        if len(xs[0]) != 1:
            raise LayerError(f"linear needs a flat input, found {fmt(xs[0])}",
                             help="add `flatten` before it", code="E-shape")
        a["in_features"] = xs[0][0]
        _check_given(a, (a["out_features"], a["in_features"]))
        return (a["out_features"],)

    def weights(self, a):
        return _conv_like((a.out_features, a.in_features), a.out_features, a.bias, a.weight,
                          a.trainable)

    def count_macs(self, a, xs, y):
        return a.in_features * a.out_features

    def label(self, a):
        return f"linear {a.out_features}"


@dataclass(frozen=True, slots=True)
class UpsampleAttrs(Record):
    size: tuple[int, int]  # the output's H x W
    scale: tuple[int, int] | None  # the integer factor, when given as one
    mode: str
    align_corners: bool = False


class Upsample(LayerKind):
    op, family, Attrs = "upsample", "reshape", UpsampleAttrs
    doc = ("nearest or bilinear upsampling by an integer factor (`scale=2`), to a size "
           "(`size=(64, 64)`), or to another tensor's size (`like=e1`); bilinear with "
           "`align_corners=true` maps the corner pixels onto each other (PyTorch's "
           "align_corners)")
    example = ("z = x -> upsample(size=(12, 10), mode=bilinear)\n"
               "z -> upsample(size=(15, 13), mode=bilinear, align_corners=true)")
    args = (Arg("scale", pair, None, shown="2"),
            Arg("mode", choice("nearest", "bilinear"), "nearest"),
            Arg("size", pair, None, positional=False),
            Arg("like", tensor_shape, None, positional=False, tensor=True),
            Arg("align_corners", boolean, False, positional=False))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        given = [k for k in ("scale", "size", "like") if a[k] is not None]
        if len(given) > 1:
            raise LayerError(f"give one of scale, size and like, not {' and '.join(given)}",
                             arg=given[1], code="E-arg")
        if a["align_corners"] and a["mode"] != "bilinear":
            raise LayerError("align_corners applies to bilinear upsampling only",
                             arg="align_corners", code="E-arg",
                             help="upsample(..., mode=bilinear, align_corners=true)")
        if a["like"] is not None:
            a["size"] = tuple(image(a["like"], "upsample's `like`")[1:])
        if a["size"] is None:
            a["scale"] = a["scale"] or (2, 2)
            a["size"] = (h * a["scale"][0], w * a["scale"][1])
        elif a["size"][0] % h == 0 and a["size"][1] % w == 0:
            a["scale"] = (a["size"][0] // h, a["size"][1] // w)
        return (c, *a["size"])

    def label(self, a):
        size = f"x{pair_text(a.scale)}" if a.scale else f"to {pair_text(a.size)}"
        return f"upsample {size} {a.mode}" + (" align_corners" if a.align_corners else "")


@dataclass(frozen=True, slots=True)
class PadAttrs(Record):
    padding: Padding
    value: float


class Pad(LayerKind):
    op, family, Attrs = "pad", "reshape", PadAttrs
    doc = "constant padding on every side: pad(1) or pad((rows, columns))"
    example = "x -> pad((1, 2), value=0.5)"
    args = (Arg("padding", pair0), Arg("value", number, 0.0))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        ph, pw = a["padding"]
        return (c, h + 2 * ph, w + 2 * pw)


@dataclass(frozen=True, slots=True)
class CropAttrs(Record):
    top: int
    left: int
    height: int
    width: int


class Crop(LayerKind):
    op, family, Attrs = "crop", "reshape", CropAttrs
    doc = ("a window of `size` from (top, left), or of another tensor's size (`like=up`: "
           "U-Net's skip connections)")
    example = "x -> crop((5, 6), top=1, left=2)"
    args = (Arg("size", pair, None), Arg("top", nonnegative, 0, positional=False),
            Arg("left", nonnegative, 0, positional=False),
            Arg("like", tensor_shape, None, positional=False, tensor=True))

    def infer(self, a, xs, warn):
        c, h, w = image(xs[0], self.op)
        size = self.size(a)
        a["height"], a["width"] = size
        a.setdefault("top", 0)
        a.setdefault("left", 0)
        self.place(a, h, w)
        for axis, start, n, total in (("rows", a["top"], size[0], h),
                                      ("columns", a["left"], size[1], w)):
            if start + n > total:
                raise LayerError(f"a crop of {n} {axis} from {start} needs {start + n}; the "
                                 f"input has {total}", arg="size" if a["like"] is None
                                 else "like", code="E-shape")
        return (c, *size)

    @staticmethod
    def size(a) -> tuple[int, int]:
        if (a["size"] is None) == (a["like"] is None):
            raise LayerError("give the size, or `like=` a tensor of the size wanted",
                             code="E-arg", arg="like" if a["like"] is not None else None)
        return a["size"] or tuple(image(a["like"], "the `like` tensor")[1:])

    def place(self, a, h, w) -> None:
        pass

    def label(self, a):
        return f"{self.op} {a.height}x{a.width}"  # the window's size


class CenterCrop(Crop):
    op = "center_crop"
    doc = ("the centre `size` window (the extra row or column of an odd difference is "
           "dropped at the bottom and right), or of another tensor's size (`like=up`)")
    example = "x -> center_crop((5, 4))"
    args = (Arg("size", pair, None), Arg("like", tensor_shape, None, positional=False,
                                         tensor=True))

    def place(self, a, h, w) -> None:
        a["top"], a["left"] = max(0, h - a["height"]) // 2, max(0, w - a["width"]) // 2


@dataclass(frozen=True, slots=True)
class GroupsAttrs(Record):
    groups: int


class ChannelShuffle(LayerKind):
    op, family, Attrs = "channel_shuffle", "reshape", GroupsAttrs
    doc = "interleaves the channels of `groups` groups (ShuffleNet)"
    example = "x -> channel_shuffle(2)"
    args = (Arg("groups", positive),)

    def infer(self, a, xs, warn):
        c, _, _ = image(xs[0], self.op)
        if c % a["groups"]:
            raise LayerError(f"{c} channels are not divisible into {a['groups']} groups",
                             arg="groups", code="E-groups")
        return xs[0]

    def label(self, a):
        return f"shuffle {a.groups}"


@dataclass(frozen=True, slots=True)
class SliceAttrs(Record):
    start: int
    stop: int
    axis: int = 0


class Slice(LayerKind):
    op, family, Attrs = "slice", "reshape", SliceAttrs
    channels_out = "-"
    doc = ("channels start .. stop - 1, or along another axis (`axis=1`); also what `a, b = "
           "x -> split(2)` makes: one slice per part")
    example = "x -> slice(2, 6, axis=height)"
    args = (Arg("start", nonnegative), Arg("stop", positive),
            Arg("axis", axis, 0, positional=False))

    def infer(self, a, xs, warn):
        x = xs[0]
        a["axis"] = n = resolve_axis(a["axis"], x)
        c = x[n]
        what = "channels" if n == 0 else f"axis {n}: indices"
        if not a["start"] < a["stop"] <= c:
            raise LayerError(f"{what} {a['start']} to {a['stop']} of {c}: need start < "
                             f"stop <= {c}", arg="stop", code="E-arg")
        return (*x[:n], a["stop"] - a["start"], *x[n + 1:])

    def label(self, a):
        return f"channels {a.start}:{a.stop}" if a.axis == 0 else \
            f"axis {a.axis} {a.start}:{a.stop}"


@dataclass(frozen=True, slots=True)
class ScaleAttrs(Record):
    channels: int
    init: float
    image: bool


class Scale(LayerKind):
    op, family, Attrs = "scale", "norm", ScaleAttrs
    channels_in = "channels"
    doc = "a learnable factor per channel, initialised to `init` (ConvNeXt's layer scale)"
    example = "x -> scale(init=1e-6)"
    args = (Arg("init", number, 1.0),)

    def infer(self, a, xs, warn):
        if len(xs[0]) not in (1, 3):
            raise LayerError(f"scale needs C x H x W or features, found {fmt(xs[0])}")
        a["channels"], a["image"] = xs[0][0], len(xs[0]) == 3
        return xs[0]

    def weights(self, a):
        shape = (a.channels, 1, 1) if a.image else (a.channels,)
        return (Weight("weight", shape, Init(constant=a.init)),)


# ---- activations ------------------------------------------------------------------------


class _Activation(LayerKind):
    family = "activation"


def _activation(op: str, doc: str, args: tuple[Arg, ...] = (), scores: str | None = None):
    attrs = make_dataclass(f"{op.title().replace('_', '')}Attrs",
                           [(a.name, Any) for a in args], bases=(Record,), frozen=True,
                           slots=True) if args else NoAttrs
    example = f"x -> {op}"
    type(op.title().replace("_", ""), (_Activation,), {
        "op": op, "doc": doc, "args": args, "Attrs": attrs, "example": example,
        "scores": scores, "__module__": __name__})


for _op, _doc in (("relu", "max(0, x)"), ("relu6", "min(max(0, x), 6)"),
                  ("gelu", "Gaussian error linear unit"), ("silu", "x * sigmoid(x) (swish)"),
                  ("hardswish", "x * relu6(x + 3) / 6"),
                  ("hardsigmoid", "relu6(x + 3) / 6 (MobileNetV3's gates)"),
                  ("tanh", "hyperbolic tangent"), ("identity", "passes its input through")):
    _activation(_op, _doc)
_activation("sigmoid", "1 / (1 + e^-x)", scores="probabilities")
_activation("exp", "e^x (box decoding)")
_activation("log", "natural logarithm (of a positive input)")
type(REGISTRY["log"]).example = "x -> exp -> log"


@dataclass(frozen=True, slots=True)
class AxisAttrs(Record):
    axis: int


class Softmax(_Activation):
    op, Attrs, scores = "softmax", AxisAttrs, "probabilities"
    doc = "softmax over channels / features, or along `axis` (YOLOv8's DFL: `softmax(0)`)"
    example = "x -> softmax(axis=-1)"
    args = (Arg("axis", axis, 0),)

    def infer(self, a, xs, warn):
        a["axis"] = resolve_axis(a["axis"], xs[0])
        return xs[0]

    def label(self, a):
        return self.op if a.axis == 0 else f"{self.op} axis {a.axis}"


class LogSoftmax(Softmax):
    op, scores = "log_softmax", "log-probabilities"
    doc = "log of softmax over channels / features, or along `axis`"
    example = "x -> log_softmax(height)"
_activation("leaky_relu", "x if x > 0 else slope * x", (Arg("slope", number, 0.01),))
_activation("elu", "x if x > 0 else alpha * (e^x - 1)", (Arg("alpha", number, 1.0),))


@dataclass(frozen=True, slots=True)
class PReLUAttrs(Record):
    channels: int
    per_channel: bool
    init: float


class PReLU(_Activation):
    op, Attrs = "prelu", PReLUAttrs
    channels_in = "channels"
    doc = "x if x > 0 else a * x, with a learnt slope (one, or one per channel)"
    example = "x -> prelu(per_channel=true)"
    args = (Arg("per_channel", boolean, False, positional=False),
            Arg("init", number, 0.25, positional=False))

    def infer(self, a, xs, warn):
        a["channels"] = xs[0][0]
        return xs[0]

    def weights(self, a):
        return (Weight("weight", (a.channels if a.per_channel else 1,),
                       Init(constant=a.init)),)


# ---- merges -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArithAttrs(Record):
    constant: float | None = None  # `mul(x, 0.5)`: one tensor and a number
    constant_first: bool = False  # `sub(1, x)`: the number on the left


def _broadcasts(op: str, xs: list[Shape]) -> None:
    """Later tensors may be 1 on any axis (a squeeze-excite gate, a row of strides)."""
    for i, x in enumerate(xs[1:], 1):
        if len(x) != len(xs[0]) or any(m not in (n, 1) for n, m in zip(xs[0], x)):
            raise LayerError(f"{op} of {fmt(xs[0])} and {fmt(x)}: each size of the later "
                             "one must match or be 1", inputs=(0, i))


class _Arith(LayerKind):
    family, Attrs = "merge", ArithAttrs
    constants = True  # may take one number in place of a tensor
    symbol: ClassVar[str] = ""

    def infer(self, a, xs, warn):
        a.setdefault("constant", None)
        a.setdefault("constant_first", False)
        _broadcasts(self.op, xs)
        return xs[0]

    def label(self, a):
        if a.constant is None:
            return self.symbol
        number = f"{a.constant:g}"
        return f"{number} {self.symbol} x" if a.constant_first else f"x {self.symbol} {number}"


class Add(_Arith):
    op, combine, symbol = "add", "add", "+"
    doc = "element-wise sum of tensors of one shape, or of a tensor and a number (`add(x, 0.5)`)"
    example = "add(x, y)"

    def infer(self, a, xs, warn):
        a.setdefault("constant", None)
        a.setdefault("constant_first", False)
        for i, x in enumerate(xs[1:], 1):
            if x != xs[0]:
                raise LayerError(f"add of different shapes: {fmt(xs[0])} and {fmt(x)}",
                                 inputs=(0, i), help="project one side (a 1x1 conv) so the "
                                 "channels and sizes agree")
        return xs[0]


class Sub(_Arith):
    op, combine, symbol = "sub", "sub", "−"
    doc = ("element-wise difference (later tensors may be 1 on any axis), or with a number: "
           "`sub(x, 1)`, `sub(1, x)`")
    example = "sub(x, y)"


class Mul(_Arith):
    op, combine, symbol = "mul", "mul", "×"
    doc = ("element-wise product; later tensors may be 1 on any axis (squeeze-excite gates); "
           "or by a number: `mul(x, 0.5)`")
    example = "z = x -> global_avgpool\nmul(y, z)"


class Div(_Arith):
    op, combine, symbol = "div", "div", "÷"
    doc = "element-wise quotient (later tensors may be 1 on any axis), or with a number"
    example = "z = x -> exp\ndiv(y, z)"


class Concat(LayerKind):
    op, family, combine, Attrs = "concat", "merge", "concat", AxisAttrs
    channels_out = "+"  # the sum of the inputs' channels
    doc = "concatenation along channels, or along `axis`; all other sizes must agree"
    example = "concat(x, y, axis=width)"
    args = (Arg("axis", axis, 0, positional=False),)

    def infer(self, a, xs, warn):
        n = a["axis"] = resolve_axis(a.get("axis", 0), xs[0])
        for i, x in enumerate(xs[1:], 1):
            if len(x) != len(xs[0]) or x[:n] + x[n + 1:] != xs[0][:n] + xs[0][n + 1:]:
                if n == 0:
                    raise LayerError(
                        f"concat of different sizes: {fmt(xs[0][1:]) or fmt(xs[0])} and "
                        f"{fmt(x[1:]) or fmt(x)}", inputs=(0, i),
                        help="make the spatial sizes agree: padding=same on the convs, "
                        "ceil_mode on the pools, crop(like=...) or pad(...) the larger or "
                        "smaller tensor")
                raise LayerError(f"concat along axis {n} of {fmt(xs[0])} and {fmt(x)}: every "
                                 "other size must agree", inputs=(0, i), arg="axis")
        return (*xs[0][:n], sum(x[n] for x in xs), *xs[0][n + 1:])

    def label(self, a):
        return "concat" if a.axis == 0 else f"concat axis {a.axis}"


from . import tensor_layers  # noqa: E402,F401  (registers reshape, permute, transpose)
