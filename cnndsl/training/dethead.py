"""A detection head found in the checked IR: what training and decoding need of it.

A spec's detector (specs/yolov8n.cnn) ends in one output, the decoded detections
`(4 + classes) x anchors`: x, y, w, h in input pixels, then a sigmoid score per class. The
loss needs what comes before the decoding: each anchor's box distributions (the input of the
`softmax` over reg_max bins) and its class logits (the input of the `sigmoid`), and the
anchors themselves: the levels are the `anchor_points` joined into the anchor axis, each
level's stride the input's size over the level's size. Nothing here is written twice: the
spec says the head once, and the training view reads the same module's values.

Imports no torch (the checks run when a spec is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..diagnostics import CnnError, Diagnostic, Label


@dataclass(frozen=True)
class Level:
    height: int
    width: int
    stride: int


@dataclass(frozen=True)
class Head:
    output: str  # the decoded detections, (4 + classes) x anchors
    logits: str  # classes x anchors, before the sigmoid
    bins: str  # the box distributions, before the softmax: 3 axes, the last the anchors
    bin_axis: int  # which of the first two axes holds the reg_max bins (the other: 4 sides)
    classes: int
    reg_max: int
    levels: tuple[Level, ...]
    offset: float  # the anchor point inside its cell (0.5: the centre)

    @property
    def anchors(self) -> int:
        return sum(level.height * level.width for level in self.levels)


def _error(message: str, span, help: str | None = None, **kw) -> CnnError:
    return CnnError([Diagnostic(code="E-train", message=message, span=span, help=help, **kw)])


HOW = ("a detector ends in `concat(boxes, scores)`: 4 + classes rows per anchor, its boxes "
       "decoded from a `softmax` over the bins of each side (DFL), its scores a `sigmoid` "
       "of the class logits, its anchors from `anchor_points` (see specs/yolov8n.cnn)")


def find_head(ir) -> Head:
    """The head of a YOLOv8-style detector, checked; a located error otherwise."""
    output = ir.outputs[0]
    node = ir.producer(output)
    span = node.span if node is not None else None
    shape = ir.shape_of(output)
    if len(shape) != 2 or shape[0] < 5:
        raise _error(f"a detector's output is (4 + classes) x anchors; this one gives "
                     f"{' x '.join(map(str, shape))}", span, help=HOW)
    rows, anchors = shape
    classes = rows - 4
    levels, offset = _levels(ir, anchors, span)
    logits = [n for n in ir.nodes if n.op == "sigmoid" and n.shape == (classes, anchors)]
    if not logits:
        raise _error(f"no `sigmoid` gives the {classes} x {anchors} class scores of the "
                     "output", span, help=HOW)
    bins = [n for n in ir.nodes if n.op == "softmax" and len(n.shape) == 3
            and n.shape[2] == anchors and 4 in n.shape[:2]
            and n.attrs.axis in (0, 1) and n.shape[1 - n.attrs.axis] == 4]
    if not bins:
        raise _error(f"no `softmax` over the bins of the 4 sides of {anchors} anchors (a "
                     f"4 x bins x {anchors} tensor)", span, help=HOW)
    softmax = bins[-1]
    return Head(output=output, logits=logits[-1].inputs[0], bins=softmax.inputs[0],
                bin_axis=softmax.attrs.axis, classes=classes,
                reg_max=softmax.shape[softmax.attrs.axis], levels=levels, offset=offset)


def _levels(ir, anchors: int, span) -> tuple[tuple[Level, ...], float]:
    points = [n for n in ir.nodes if n.op == "anchor_points"]
    if not points:
        raise _error("the detector makes no `anchor_points`: the loss cannot tell where "
                     "each anchor is", span, help=HOW)
    joined = [n for n in ir.nodes if n.op == "concat" and n.inputs
              and all(getattr(ir.producer(i), "op", None) == "anchor_points" for i in n.inputs)]
    if joined:
        points = [ir.producer(i) for i in joined[-1].inputs]
    image = ir.inputs[0].shape
    levels, seen = [], {}
    for point in points:
        level = _stride(point, image)
        if level.stride in seen:
            raise _error(f"two levels of the head have stride {level.stride}: "
                         f"{level.height} x {level.width} here", point.span,
                         label=f"stride {level.stride}",
                         related=(Label(span=seen[level.stride].span, text="this one too"),),
                         help="each level of a detector has its own stride (P3, P4, P5: 8, "
                         "16, 32)")
        seen[level.stride] = point
        levels.append(level)
    total = sum(level.height * level.width for level in levels)
    if total != anchors:
        raise _error(f"the anchor points cover {total} anchors but the output has {anchors}",
                     span, help=HOW)
    for node in ir.nodes:
        if node.op == "anchor_strides":
            level = _stride(node, image)
            if node.attrs.stride != level.stride:
                raise _error(f"`anchor_strides({node.attrs.stride:g})` on a level of "
                             f"{level.height} x {level.width}, whose stride is "
                             f"{level.stride} ({image[1]} / {level.height})", node.span,
                             label=f"stride {level.stride}",
                             help=f"write `anchor_strides({level.stride})`")
    offsets = {p.attrs.offset for p in points}
    if len(offsets) != 1:
        raise _error("the levels' anchor points have different offsets", points[-1].span)
    return tuple(levels), offsets.pop()


def _stride(node, image) -> Level:
    """A level's stride: the input's size over its size, a whole number, the same along
    both axes."""
    height, width = node.attrs.height, node.attrs.width
    if len(image) != 3:
        raise _error("a detector takes one image, C x H x W", node.span)
    _, h, w = image
    if h % height or w % width or h // height != w // width:
        raise _error(f"a level of {height} x {width} on a {h} x {w} input has no whole "
                     f"stride ({h}/{height} x {w}/{width})", node.span,
                     label=f"{height} x {width}",
                     help="make the input's size a multiple of the largest stride (e.g. 32)")
    return Level(height, width, h // height)


def branch_convs(ir, value: str) -> list[str]:
    """The last conv of each level feeding `value` (the class logits or the bins): back
    through single-input reshapes to the concat that joins the levels, then back through
    each level's reshapes to its conv."""
    node = ir.producer(value)
    while node is not None and node.op != "concat" and len(node.inputs) == 1:
        node = ir.producer(node.inputs[0])
    if node is None or node.op != "concat":
        return []
    convs = []
    for source in node.inputs:
        level = ir.producer(source)
        while level is not None and level.op != "conv" and len(level.inputs) == 1:
            level = ir.producer(level.inputs[0])
        if level is not None and level.op == "conv" and level.attrs.bias:
            convs.append(level.name)
    return convs
