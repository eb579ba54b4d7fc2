"""Several outputs in training: which loss applies to which output, with what weight.

    loss: cross_entropy(fc) + 0.3 * cross_entropy(aux1) + 0.3 * cross_entropy(aux2)

is GoogLeNet's objective (main + 0.3 x each auxiliary head), as Keras's
`compile(loss={...}, loss_weights={...})` gives a loss and a weight per named output. The
first term's output is the main one: metrics, `best` and `eval` use it. Terms that name no
output (`loss: cross_entropy`, `loss: cross_entropy + 0.5 * dice`) apply to the network's
first output.

Each term is bound here against the table of losses, and checked against the network's
outputs (`check_output_losses`) before anything runs. Imports no torch: the sum itself is
`combine.OutputLosses`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from .. import ast
from ..diagnostics import CnnError, Diagnostic, Label
from ..source import Span
from ..suggest import did_you_mean
from ..values import describe, evaluate


class OutputLoss(BaseModel):
    """One term of the objective: `weight * loss(output)`."""

    model_config = ConfigDict(frozen=True)

    output: str | None  # the output's name in the spec (`output fc, aux1`); None: the first
    loss: Any  # spec.Choice: the loss with its bound arguments
    weight: float = 1.0
    index: int = 0  # the output's position among the network's outputs, once checked
    span: Span | None = None  # the term, for errors
    output_span: Span | None = None  # the output's name in the term

    def describe(self) -> str:
        args = ", ".join(f"{k}={describe(v)}" for k, v in self.loss.args.items()
                         if v is not None)
        inside = ", ".join(x for x in (self.output, args) if x)
        weight = "" if self.weight == 1 else f"{self.weight:g} * "
        return f"{weight}{self.loss.name}({inside})"


def bind_loss_sum(expr: ast.Expr, params: dict[str, Any], bind_call, losses) -> tuple:
    """`a(out1) + w * b(out2) + ...` -> OutputLoss terms, in order.

    `bind_call(func_expr)` binds one loss call (its output name taken out); `losses` is the
    table of loss names. A single term without an output name has `output=None`."""
    terms = [_term(t, params, bind_call, losses) for t in _summands(expr)]
    if any(t.output is not None for t in terms):  # then every term names its output
        for term in terms:
            if term.output is None:
                raise _error("with several losses, each names the output it applies to",
                             term.span, help=f"e.g. `{term.loss.name}(fc) + "
                             f"0.3 * {term.loss.name}(aux1)`")
    return tuple(terms)


def _summands(expr: ast.Expr) -> list[ast.Expr]:
    if isinstance(expr, ast.BinOp) and expr.op == "+":
        return _summands(expr.left) + _summands(expr.right)
    if isinstance(expr, ast.BinOp) and expr.op == "-":
        raise _error("losses are added, each with a weight of 0 or more", expr.span,
                     help="e.g. `cross_entropy(fc) + 0.3 * cross_entropy(aux1)`")
    return [expr]


def _is_loss(expr: ast.Expr, losses) -> bool:
    name = expr.name if isinstance(expr, ast.Func) else expr.id \
        if isinstance(expr, ast.Name) else None
    return name in losses


def _term(expr: ast.Expr, params, bind_call, losses) -> OutputLoss:
    weight = 1.0
    call = expr
    if isinstance(expr, ast.BinOp) and expr.op == "*":
        if _is_loss(expr.right, losses) or not _is_loss(expr.left, losses):
            factor, call = expr.left, expr.right
        else:
            factor, call = expr.right, expr.left
        weight = _weight(factor, params)
    if isinstance(call, ast.Name):
        call = ast.Func(call.id, (), call.span)
    output, output_span = None, None
    if isinstance(call, ast.Func) and call.args and isinstance(call.args[0],
                                                               (ast.Name, ast.Str)):
        first = call.args[0]
        output = first.id if isinstance(first, ast.Name) else first.value
        output_span = first.span
        call = ast.Func(call.name, call.args[1:], call.span, call.kwargs)
    return OutputLoss(output=output, loss=bind_call(call), weight=weight, span=expr.span,
                      output_span=output_span)


def _weight(expr: ast.Expr, params) -> float:
    try:
        value = evaluate(expr, params)
    except CnnError:
        raise _error("a loss's weight is a number: `0.3 * cross_entropy(aux1)`",
                     expr.span) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or value == float("inf"):
        raise _error(f"a loss's weight must be a number, 0 or more, found {describe(value)}",
                     expr.span)
    return float(value)


def _error(message: str, span: Span | None, **kw) -> CnnError:
    return CnnError([Diagnostic(code="E-train", message=message, span=span, **kw)])


# ---- against the network ------------------------------------------------------------------


def output_names(ir) -> tuple[str, ...]:
    return ir.output_names or ir.outputs


def resolve_terms(terms: tuple[OutputLoss, ...], ir, loss_span: Span | None
                  ) -> tuple[OutputLoss, ...]:
    """Each term's output found among the network's (its index set); with named terms,
    every output has a loss. Located errors otherwise."""
    names = output_names(ir)
    resolved = []
    for term in terms:
        if term.output is None:
            resolved.append(term.model_copy(update={"index": 0}))
            continue
        if term.output not in names:
            raise CnnError([Diagnostic(
                code="E-train", message=f"`{term.loss.name}({term.output})`: the network has "
                f"no output `{term.output}`", span=term.output_span or term.span or loss_span,
                label="not an output", help=did_you_mean(term.output, names) or
                "its outputs: " + ", ".join(names))])
        resolved.append(term.model_copy(update={"index": names.index(term.output)}))
    if any(t.output is not None for t in resolved):
        covered = {t.output for t in resolved}
        for index, name in enumerate(names):
            if name not in covered:
                node = ir.producer(ir.outputs[index])
                raise CnnError([Diagnostic(
                    code="E-train", message=f"the output `{name}` has no loss",
                    span=loss_span, related=(Label(span=node.span, text=f"`{name}`"),)
                    if node is not None and loss_span else (),
                    help=f"add a term for it (`+ 0.3 * {resolved[0].loss.name}({name})`), "
                    f"or `+ 0 * {resolved[0].loss.name}({name})` to train without it")])
    return tuple(resolved)


def main_output(config, ir) -> str:
    """The IR value of the main output: the first loss term's, else the first output."""
    index = config.losses[0].index if config.losses else 0
    return ir.outputs[index]
