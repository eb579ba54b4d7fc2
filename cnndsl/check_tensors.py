"""The checker's part for merges and splits: which arguments are tensors, which are numbers
(`mul(x, 0.5)`), and keyword arguments such as `concat(a, b, axis=1)` and `split(2,
axis=height)`. A mixin of cnndsl.checker.Checker, kept here so that class does not grow.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from . import ast
from .ir import Scope
from .layers import REGISTRY, LayerError, LayerKind, number, positive, resolve_axis

if TYPE_CHECKING:
    from .checker import Frame, Tensor

def _finite(value) -> float:
    x = number(value)
    if not math.isfinite(x):
        raise LayerError(f"expected a finite number, found {x}", code="E-arg")
    return x


SPLIT_HELP = "split(2), split((24, 40)) or split(2, axis=height)"


class TensorChecks:
    """Checker methods for merges and splits (see cnndsl.checker.Checker)."""

    def merge_inputs(self, kind: LayerKind, step: ast.Layer, x: Tensor | None,
                     frame: Frame) -> tuple[list[Tensor], dict]:
        """The tensors a merge joins (the chain's first), and its bound attributes: its
        keyword arguments and, for arithmetic, a number given in place of a tensor."""
        attrs = self.merge_keywords(kind, step, frame)
        named: list[Tensor] = []
        constant = None
        for arg in step.args:
            if isinstance(arg, ast.Func) and arg.name == "each":
                named.extend(self.collection(arg, frame))
            elif isinstance(arg, ast.Name) and (arg.id in frame.tensors or not kind.constants
                                                or arg.id not in frame.params):
                named.append(self.lookup_tensor(arg.id, arg.span, frame))
            elif kind.constants:
                if constant is not None:
                    raise self.fail("E-arg", f"`{step.name}` takes one number at most",
                                    arg.span, help=f"e.g. `{step.name}(x, 0.5)`")
                value = self.coerce(_finite, self.eval(arg, frame.params), arg.span,
                                    f"`{step.name}`", frame.params)
                constant = (value, bool(named) or x is not None)
            else:
                raise self.fail("E-arg", f"`{step.name}` takes tensor names", arg.span,
                                label="not a tensor name")
        xs = ([x] if x is not None else []) + named
        if constant is not None:
            if len(xs) != 1:
                raise self.fail("E-arg", f"`{step.name}` with a number takes one tensor, "
                                f"found {len(xs)}", step.span,
                                help=f"e.g. `{step.name}(x, 2)`; join tensors first")
            attrs["constant"], attrs["constant_first"] = constant[0], not constant[1]
        elif len(xs) < 2:
            extra = ", or a tensor and a number" if kind.constants else ""
            raise self.fail("E-arg", f"`{step.name}` needs at least two tensors{extra}",
                            step.span,
                            help=f"e.g. `{step.name}(a, b)`, or `-> {step.name}(skip)` in a "
                            "chain")
        return xs, attrs

    def collection(self, arg: ast.Func, frame: Frame) -> list[Tensor]:
        """`each(m)`: the output of every step of the repeat (or group) labelled `m`, in
        order (YOLOv8's C2f joins them all); none for `* 0`."""
        if len(arg.args) != 1 or arg.kwargs or not isinstance(arg.args[0], ast.Name):
            raise self.fail("E-arg", "each(...) takes the label of a repeat", arg.span,
                            help="e.g. `m: bottleneck(64) * n`, then `concat(a, each(m))`")
        name = arg.args[0]
        if name.id not in frame.collections:
            from .suggest import did_you_mean
            raise self.fail("E-name", f"`{name.id}` is not the label of a repeat or group",
                            name.span, label="not a labelled repeat",
                            help=did_you_mean(name.id, frame.collections) or
                            "label the repeat, `m: bottleneck(64) * n`, or name its output, "
                            "`m = x -> bottleneck(64) * n`; then `each(m)`")
        frame.used.add(name.id)
        return list(frame.collections[name.id])

    def merge_keywords(self, kind: LayerKind, step: ast.Layer, frame: Frame) -> dict:
        if not step.kwargs:
            return {}
        if not kind.args:
            kw = step.kwargs[0]
            raise self.fail("E-arg", f"`{step.name}` takes tensors, not `{kw.name}=`", kw.span)
        keywords = replace(step, args=())
        values, _, _ = self.bind_args(kind.args, keywords, frame, f"`{kind.op}`")
        return values

    def split(self, step: ast.Layer, x: Tensor | None, frame: Frame,
              several: int | None) -> list[Tensor]:
        """`a, b = x -> split(2)` (equal parts) or `split((24, 40))`: slices along the
        channels, or along `axis=`, named `split1.0`, `split1.1` (or by the step's label)."""
        from .checker import _StatementError
        x = self.need_input(x, step.span)
        if several is None:
            raise self.fail("E-arg", "split gives several tensors: name them", step.span,
                            help="e.g. `a, b = x -> split(2)`")
        unknown = [kw for kw in step.kwargs if kw.name != "axis"]
        if unknown or len(step.args) != 1 or len(step.kwargs) > 1:
            raise self.fail("E-arg", "split takes the number of parts or their sizes, and "
                            "an axis", (unknown[0].span if unknown else step.span),
                            help=SPLIT_HELP)
        value = self.eval(step.args[0], frame.params)
        if x.shape is None:
            raise _StatementError()
        axis, axis_span = 0, step.span
        if step.kwargs:
            axis_span = step.kwargs[0].span
            raw = self.coerce(REGISTRY["slice"].args[2].coerce,
                              self.eval(step.kwargs[0].value, frame.params), axis_span,
                              "split argument `axis`", frame.params)
            try:
                axis = resolve_axis(raw, x.shape)
            except LayerError as exc:
                raise self.fail(exc.code, exc.message, axis_span) from None
        sizes = self.split_sizes(value, x.shape[axis], axis, step)
        if len(sizes) != several:
            raise self.fail("E-arg", f"split into {len(sizes)} parts, named {several}",
                            step.span)
        path = frame.path + (self.local_name(step, "split", frame, None),)
        tensors, start = [], 0
        for i, size in enumerate(sizes):
            tensors.append(self.emit(REGISTRY["slice"], {"start": start, "stop": start + size,
                                                         "axis": axis},
                                     [x], path + (str(i),), step))
            start += size
        self.scopes.append(Scope(path=path, block=None, span=step.span, inputs=(x.name,),
                                 output=tensors[0].name,
                                 outputs=tuple(t.name for t in tensors)))
        return tensors

    def split_sizes(self, value, total: int, axis: int, step: ast.Layer) -> list[int]:
        what = "channels" if axis == 0 else f"along axis {axis}"
        span = step.args[0].span
        if isinstance(value, tuple):
            sizes = [self.coerce(positive, v, span, "split") for v in value]
            if sum(sizes) != total:
                raise self.fail("E-shape", f"split into {' + '.join(map(str, sizes))} = "
                                f"{sum(sizes)} {what}; the input has {total}", span)
            return sizes
        parts = self.coerce(positive, value, span, "split")
        if total % parts:
            raise self.fail("E-shape", f"{total} {what} do not split into {parts} equal "
                            "parts", span, help="give the parts' sizes: split((a, b, ...))")
        return [total // parts] * parts
