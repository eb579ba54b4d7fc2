"""Values of the .cnn expression language and their evaluation (never Python's eval)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import ast
from .diagnostics import error


class Symbol(str):
    """A bare word that is not a parameter: `same`, `valid`, `nearest`..."""


Value = Any  # int | float | bool | Symbol | str | tuple
LIMIT = 2**62  # any number beyond this is refused, so arithmetic stays bounded


def divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping below 90%.

    The rule of MobileNet v2 / EfficientNet (`_make_divisible` in torchvision).
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


MAX_DIGITS = 30  # round(x, n) with a huge n costs time in n: nothing needs more than this


def _round(x, ndigits=None):
    if ndigits is None:
        return round(x)
    if isinstance(ndigits, float) or abs(ndigits) > MAX_DIGITS:
        raise ValueError(f"ndigits must be an integer within +-{MAX_DIGITS}")
    return round(x, ndigits)


MAX_RANGE = 65_536  # range(n) makes a tuple: a fixed weight's values, not a loop


def _range(start, stop=None):
    """range(16) = (0, 1, ..., 15), range(2, 5) = (2, 3, 4): values for fixed weights."""
    if stop is None:
        start, stop = 0, start
    if not all(isinstance(v, int) for v in (start, stop)):
        raise ValueError("range takes integers")
    if stop - start > MAX_RANGE:
        raise ValueError(f"at most {MAX_RANGE:,} values")
    return tuple(range(start, stop))


FUNCTIONS: dict[str, Callable[..., Value]] = {
    "min": min, "max": max, "round": _round, "ceil": math.ceil, "floor": math.floor,
    "abs": abs, "int": int, "float": float, "divisible": divisible, "range": _range,
}


def describe(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def type_name(value: Value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Symbol):
        return "word"
    return {int: "int", float: "float", str: "string", tuple: "tuple"}.get(type(value), "value")


def evaluate(expr: ast.Expr, env: dict[str, Value]) -> Value:
    """Evaluate an expression over parameter values; errors point at the sub-expression."""
    if isinstance(expr, ast.Num):
        return _bounded(expr.value, expr)
    if isinstance(expr, ast.Str):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in env:
            return env[expr.id]
        if expr.id in ("true", "false"):
            return expr.id == "true"
        return Symbol(expr.id)
    if isinstance(expr, ast.Tuple):
        return tuple(evaluate(item, env) for item in expr.items)
    if isinstance(expr, ast.Neg):
        value = evaluate(expr.operand, env)
        _require_number(value, expr.operand, "-")
        return -value
    if isinstance(expr, ast.BinOp):
        return _binop(expr, evaluate(expr.left, env), evaluate(expr.right, env), env)
    if isinstance(expr, ast.Func):
        return _call(expr, [evaluate(arg, env) for arg in expr.args])
    if isinstance(expr, ast.Compare):
        return _compare(expr, evaluate(expr.left, env), evaluate(expr.right, env))
    if isinstance(expr, ast.BoolOp):
        return _boolean(expr, env)
    raise AssertionError(f"unknown expression {expr!r}")


def word_help(word: str, names) -> str:
    """Help for a bare word used where a value was needed: a near parameter name, or why
    `in_channels` is unknown here."""
    if word == "in_channels":
        return "`in_channels` exists only inside a block: the channels the block receives"
    if word in ("True", "False"):
        return f"write `{word.lower()}`: true and false are lowercase in a .cnn file"
    if word == "None":
        return "there is no `None` in a .cnn file: leave the argument out for its default"
    from .suggest import did_you_mean
    return did_you_mean(word, [n for n in names if n != "in_channels"]) or \
        f"`{word}` is not a parameter here"


def _require_number(value: Value, expr: ast.Expr, op: str, env=()) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = None
        if isinstance(value, Symbol):
            hint = word_help(value, env)
        raise error("E-type", f"`{op}` needs a number, found {type_name(value)} "
                    f"`{describe(value)}`", expr.span, label="not a number", help=hint)


def _bounded(value: Value, expr) -> Value:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and (isinstance(value, float) and not math.isfinite(value) or abs(value) > LIMIT):
        raise error("E-value", "number out of range", expr.span,
                        label=f"larger than {LIMIT:.3g}")
    return value


def _binop(expr: ast.BinOp, left: Value, right: Value, env=()) -> Value:
    _require_number(left, expr.left, expr.op, env)
    _require_number(right, expr.right, expr.op, env)
    if expr.op in ("/", "//") and right == 0:
        raise error("E-value", "division by zero", expr.right.span, label="this is zero")
    if expr.op == "**" and left != 0 and abs(right) * math.log2(max(abs(left), 2)) > 62:
        raise error("E-value", "number out of range", expr.span, label=f"larger than {LIMIT:.3g}")
    if expr.op == "**" and left == 0 and right < 0:
        raise error("E-value", "division by zero", expr.span, label="0 to a negative power")
    result = {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
              "/": lambda: left / right, "//": lambda: left // right,
              "**": lambda: left ** right}[expr.op]()
    if isinstance(result, complex):  # a negative number to a fractional power
        base = f"({describe(left)})" if left < 0 else describe(left)
        raise error("E-value", f"{base} ** {describe(right)} is not a real number",
                    expr.span, label="not a real number")
    return _bounded(result, expr)


_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
            ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


def _compare(expr: ast.Compare, left: Value, right: Value) -> bool:
    if expr.op not in ("==", "!="):
        _require_number(left, expr.left, expr.op)
        _require_number(right, expr.right, expr.op)
    return _COMPARE[expr.op](left, right)


def _require_bool(value: Value, expr: ast.Expr, op: str) -> bool:
    if not isinstance(value, bool):
        raise error("E-type", f"`{op}` needs true or false, found {type_name(value)} "
                    f"`{describe(value)}`", expr.span, label="not a condition")
    return value


def _boolean(expr: ast.BoolOp, env: dict[str, Value]) -> bool:
    left = _require_bool(evaluate(expr.left, env), expr.left, expr.op)
    if expr.op == "not":
        return not left
    if expr.op == "and" and not left or expr.op == "or" and left:
        return left
    return _require_bool(evaluate(expr.right, env), expr.right, expr.op)


def _call(expr: ast.Func, args: list[Value]) -> Value:
    function = FUNCTIONS.get(expr.name)
    if function is None:
        from .suggest import did_you_mean
        raise error("E-name", f"unknown function `{expr.name}`", expr.span,
                    label="not a function", help=did_you_mean(expr.name, FUNCTIONS))
    if expr.kwargs:
        raise error("E-arg", f"`{expr.name}` takes no keyword arguments",
                    expr.kwargs[0].span, label="write the value alone")
    for arg, node in zip(args, expr.args):
        _require_number(arg, node, expr.name)
    try:
        return _bounded(function(*args), expr)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise error("E-value", f"`{expr.name}` cannot take these arguments: {exc}",
                    expr.span) from None


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "**": 3}


def render_expr(expr: ast.Expr, env: dict[str, Value], outer: int = 0) -> str:
    """The expression as written, with parameter values substituted: `divisible(32 * 1.1, 8)`."""
    if isinstance(expr, ast.Num):
        return describe(expr.value)
    if isinstance(expr, ast.Str):
        return f'"{expr.value}"'
    if isinstance(expr, ast.Name):
        return describe(env[expr.id]) if expr.id in env else expr.id
    if isinstance(expr, ast.Tuple):
        return "(" + ", ".join(render_expr(i, env) for i in expr.items) + ")"
    if isinstance(expr, ast.Neg):
        return "-" + render_expr(expr.operand, env, 4)
    if isinstance(expr, ast.Func):
        return f"{expr.name}(" + ", ".join(render_expr(a, env) for a in expr.args) + ")"
    if isinstance(expr, ast.Compare):
        return f"{render_expr(expr.left, env, 1)} {expr.op} {render_expr(expr.right, env, 1)}"
    if isinstance(expr, ast.BoolOp):
        if expr.op == "not":
            return f"not {render_expr(expr.left, env, 1)}"
        return f"{render_expr(expr.left, env)} {expr.op} {render_expr(expr.right, env)}"
    level = _PRECEDENCE[expr.op]
    left = render_expr(expr.left, env, level)
    text = f"{left} {expr.op} {render_expr(expr.right, env, level + 1)}"
    return f"({text})" if level < outer else text
