"""Layer kinds that rearrange a tensor's axes (reshape, permute, transpose), and
anchor_points, a constant made from a checked shape.

Shapes here are of any rank, still per sample (the batch axis is implicit and never moves):
`4 x 16 x 525` is as much a shape as `3 x 224 x 224`. Registered on import by
cnndsl.layers, like every other kind there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .layers import Arg, LayerError, LayerKind, Record, axis, fmt, image, number, resolve_axis
from .values import describe

MAX_RANK = 8  # ONNX runtimes and PyTorch's kernels are tuned up to about this many axes


def _sizes(value) -> tuple[int, ...]:
    """A shape as written: a number or a tuple of positive numbers, one of them -1."""
    items = value if isinstance(value, tuple) else (value,)
    if not items or len(items) > MAX_RANK - 1:
        raise LayerError(f"a shape of 1 to {MAX_RANK - 1} axes (the batch axis not counted), "
                         f"found {len(items)}", code="E-arg")
    sizes = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item == 0 or item < -1:
            raise LayerError(f"expected positive sizes (and one -1 to infer), found "
                             f"`{describe(item)}`", code="E-arg")
        sizes.append(item)
    if sizes.count(-1) > 1:
        raise LayerError("only one size may be -1 (inferred)", code="E-arg")
    return tuple(sizes)


def _axes(value) -> tuple:
    items = value if isinstance(value, tuple) else (value,)
    return tuple(axis(item) for item in items)


@dataclass(frozen=True, slots=True)
class ReshapeAttrs(Record):
    shape: tuple[int, ...]  # resolved: no -1


class Reshape(LayerKind):
    op, family, Attrs = "reshape", "reshape", ReshapeAttrs
    channels_out = "-"
    doc = ("the same values in another shape, the batch axis kept: `reshape((4, 16, -1))` "
           "(one size may be -1, inferred); PyTorch's view")
    example = "x -> reshape((4, -1, 2))"
    args = (Arg("shape", _sizes),)

    def infer(self, a, xs, warn):
        x, sizes = xs[0], a["shape"]
        total, known = math.prod(x), math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if total % known:
                raise LayerError(f"{fmt(x)} ({total:,} values) does not reshape to "
                                 f"{_text(sizes)}: {total:,} is not a multiple of {known:,}",
                                 arg="shape")
            sizes = tuple(total // known if s == -1 else s for s in sizes)
        elif known != total:
            raise LayerError(f"{fmt(x)} ({total:,} values) does not reshape to "
                             f"{_text(sizes)} ({known:,} values)", arg="shape",
                             help="give one size as -1 to have it inferred")
        a["shape"] = sizes
        return sizes

    def label(self, a):
        return f"reshape {_text(a.shape)}"


def _text(sizes) -> str:
    return " x ".join("?" if s == -1 else str(s) for s in sizes)


@dataclass(frozen=True, slots=True)
class PermuteAttrs(Record):
    dims: tuple[int, ...]  # output axis i is input axis dims[i]


class Permute(LayerKind):
    op, family, Attrs = "permute", "reshape", PermuteAttrs
    channels_out = "-"
    doc = ("reorders the axes (the batch axis stays first): `permute((1, 2, 0))` makes "
           "C x H x W into H x W x C")
    example = "x -> permute((2, 0, 1))"
    args = (Arg("dims", _axes),)

    def infer(self, a, xs, warn):
        x = xs[0]
        if len(a["dims"]) != len(x):
            raise LayerError(f"permute of {fmt(x)} needs {len(x)} axes, found "
                             f"{len(a['dims'])}", arg="dims", code="E-arg")
        dims = tuple(resolve_axis(d, x, "dims") for d in a["dims"])
        if sorted(dims) != list(range(len(x))):
            raise LayerError(f"permute needs each axis once, found {describe(dims)}",
                             arg="dims", code="E-arg")
        a["dims"] = dims
        return tuple(x[d] for d in dims)

    def label(self, a):
        return f"permute {','.join(map(str, a.dims))}"


class Transpose(LayerKind):
    op, family, Attrs = "transpose", "reshape", PermuteAttrs
    channels_out = "-"
    doc = "swaps two axes: `transpose(0, 1)` (PyTorch's x.transpose(1, 2) with the batch)"
    example = "x -> reshape((8, 64)) -> transpose(0, 1)"
    args = (Arg("a", axis), Arg("b", axis))

    def infer(self, a, xs, warn):
        x = xs[0]
        first, second = resolve_axis(a["a"], x, "a"), resolve_axis(a["b"], x, "b")
        dims = list(range(len(x)))
        dims[first], dims[second] = second, first
        a["dims"] = tuple(dims)
        return tuple(x[d] for d in dims)

    def label(self, a):
        swapped = [i for i, d in enumerate(a.dims) if i != d]
        return "transpose " + ",".join(map(str, swapped)) if swapped else "transpose"


@dataclass(frozen=True, slots=True)
class AnchorAttrs(Record):
    height: int
    width: int
    offset: float


class AnchorPoints(LayerKind):
    op, family, Attrs = "anchor_points", "reshape", AnchorAttrs
    channels_out = "-"
    doc = ("the centre of every cell of its input's H x W grid, 2 x H*W (x, then y; cells "
           "in the order flatten(1) gives them): column + offset, row + offset. Made from "
           "the checked shape, not from the input's values (YOLOv8's make_anchors)")
    example = "x -> anchor_points(offset=0.5)"
    args = (Arg("offset", number, 0.5),)

    def infer(self, a, xs, warn):
        _, a["height"], a["width"] = image(xs[0], self.op)
        return (2, a["height"] * a["width"])

    def label(self, a):
        return f"anchor_points {a.height}x{a.width}"

    @staticmethod
    def grid(a) -> tuple[list[float], list[float]]:
        """The x and y of every cell, row by row."""
        xs = [column + a.offset for _ in range(a.height) for column in range(a.width)]
        ys = [row + a.offset for row in range(a.height) for _ in range(a.width)]
        return xs, ys


@dataclass(frozen=True, slots=True)
class StrideAttrs(Record):
    height: int
    width: int
    stride: float


class AnchorStrides(LayerKind):
    op, family, Attrs = "anchor_strides", "reshape", StrideAttrs
    channels_out = "-"
    doc = ("1 x H*W, every cell of its input's grid holding `stride` (the pixels per cell: "
           "YOLOv8's stride_tensor, to scale the boxes of levels joined into one row)")
    example = "x -> anchor_strides(8)"
    args = (Arg("stride", number),)

    def infer(self, a, xs, warn):
        _, a["height"], a["width"] = image(xs[0], self.op)
        return (1, a["height"] * a["width"])

    def label(self, a):
        return f"anchor_strides {a.stride:g}"
