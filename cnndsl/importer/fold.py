"""Shape arithmetic folded to numbers. PyTorch's exporter writes `x.view(b, g, c // g, h, w)`
as Shape -> Gather -> Div -> Unsqueeze -> Concat before the Reshape; with every network
tensor's size known (ONNX shape inference), these small integer tensors are computed here,
so that the Reshape (Slice, Split ...) reads numbers. The batch size stays a symbol:
`BATCH` where it is read as is, `UNKNOWN` once arithmetic touches it."""

from __future__ import annotations

import contextlib

import numpy as np

MAX_ELEMENTS = 64  # shape tensors are short; a longer stored tensor is not folded
# a grid the file computes from sizes (Ultralytics' anchors: Range, Expand, ConstantOfShape
# over each level's height and width) may be longer; every output is sized before it is made
MAX_GRID = 2**21
MAX_FOLDED = 2**24  # all such grids of one file together


class Symbol:
    """A size that is not a number here; arithmetic on it is UNKNOWN."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def _unknown(self, *_):
        return UNKNOWN

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _unknown
    __floordiv__ = __rfloordiv__ = __truediv__ = __rtruediv__ = __mod__ = _unknown
    __neg__ = _unknown


BATCH = Symbol("batch")
UNKNOWN = Symbol("?")


def _size(shape) -> int:
    size = 1
    for d in shape:
        size *= int(d)
    return size


def is_numbers(array: np.ndarray) -> bool:
    return array.dtype != object or not any(isinstance(v, Symbol) for v in array.flat)


def _ints(array: np.ndarray) -> np.ndarray:
    return array.astype(object) if array.dtype.kind in "iu" else array


def _div(a, b):
    if isinstance(a, Symbol) or isinstance(b, Symbol):
        return UNKNOWN
    return int(a / b) if b else UNKNOWN  # ONNX's integer Div truncates


def fold(op: str, attrs: dict, ins: list, shape_of) -> np.ndarray | None:
    try:  # a file's numbers that do not fit the op (a Reshape to another size): not folded
        out = _fold(op, attrs, ins, shape_of)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    return out if out is None or isinstance(out, np.ndarray) else np.asarray(out, object)


def _fold(op: str, attrs: dict, ins: list, shape_of) -> np.ndarray | None:
    """The output of a node over known inputs (arrays; for Shape, the input's full
    shape from `shape_of`), or None where this is not shape arithmetic."""
    if op == "Shape":
        shape = shape_of()
        if shape is None:
            return None
        dims = np.array([BATCH, *(UNKNOWN if d is None else d for d in shape)], dtype=object)
        start, end = attrs.get("start", 0), attrs.get("end", len(dims))
        return dims[start:end]
    if any(x is None or x.size > MAX_GRID for x in ins):
        return None
    if op in ("Add", "Sub", "Mul", "Div") and len(ins) == 2:
        if _size(np.broadcast_shapes(ins[0].shape, ins[1].shape)) > MAX_GRID:
            return None
        if all(x.dtype == object or x.dtype.kind in "iu" for x in ins):
            a, b = (_ints(x) for x in ins)
            if op == "Div":
                return np.asarray(np.frompyfunc(_div, 2, 1)(a, b), dtype=object)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
        if all(is_numbers(x) and x.dtype.kind in "iufO" for x in ins):  # a grid's numbers
            a, b = (np.asarray(x, np.float32) for x in ins)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                    "Div": np.divide}[op](a, b)
        return None
    if op == "Range" and all(x.size == 1 and is_numbers(x) for x in ins):
        start, limit, delta = (x.reshape(-1)[0] for x in ins)
        count = int(np.ceil((float(limit) - float(start)) / float(delta))) if delta else -1
        if not 0 <= count <= MAX_GRID:
            return None
        dtype = np.float32 if any(x.dtype.kind == "f" for x in ins) else np.int64
        return (start + delta * np.arange(count)).astype(dtype)
    if op == "Expand" and is_numbers(ins[1]):
        with contextlib.suppress(ValueError):
            shape = np.broadcast_shapes(ins[0].shape, tuple(int(v) for v in ins[1]))
            if _size(shape) <= MAX_GRID:
                return np.broadcast_to(ins[0], shape).copy()
        return None
    if op == "Cast" and attrs.get("to") == 1 and is_numbers(ins[0]):
        return ins[0].astype(np.float32)
    if op == "Gather" and attrs.get("axis", 0) == 0 and ins[0].ndim == 1:
        return ins[0][np.asarray(ins[1], dtype=np.int64)]
    if op == "Unsqueeze":
        axes = attrs.get("axes", list(ins[1]) if len(ins) > 1 else [0])
        out = ins[0]
        for a in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Squeeze":
        axes = attrs.get("axes", list(ins[1]) if len(ins) > 1 else None)
        return np.squeeze(ins[0], axis=None if axes is None else tuple(int(a) for a in axes))
    if op == "Concat":
        return np.concatenate([_ints(x) for x in ins], axis=attrs.get("axis", 0))
    if op == "ConstantOfShape" and is_numbers(ins[0]):
        value = attrs.get("value", np.zeros(1, np.float32)).reshape(-1)
        shape = [int(v) for v in ins[0]]
        return np.full(shape, value[0]) if min(shape, default=1) >= 0 and \
            _size(shape) <= MAX_GRID else None
    if op == "Slice" and all(is_numbers(x) and x.size == 1 for x in ins[1:]):
        axis = int(ins[3][0]) if len(ins) > 3 else 0
        step = int(ins[4][0]) if len(ins) > 4 else 1
        index = [slice(None)] * ins[0].ndim
        index[axis] = slice(int(ins[1][0]), int(ins[2][0]), step)  # Python clamps as ONNX
        return ins[0][tuple(index)]
    if op == "Transpose":
        return np.transpose(ins[0], attrs.get("perm"))
    if op == "Reshape" and is_numbers(ins[1]) and 0 not in list(ins[1]):
        return ins[0].reshape([int(v) for v in ins[1]])
    if op == "Cast" and attrs.get("to") in (6, 7):
        return ins[0] if ins[0].dtype == object else ins[0].astype(np.int64)
    return None
