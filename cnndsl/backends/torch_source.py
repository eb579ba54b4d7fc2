"""PyTorch back end (b): readable, standalone source that imports only torch.

Each block definition becomes an `nn.Module` class whose constructor takes the block's
parameters (and `in_channels`); a layer's arguments are written as the spec wrote them
(`nn.Conv2d(in_channels, c * expansion, ...)`), using the expressions the checker recorded.
An expression is used only if it gives the checker's value for every call of that class;
otherwise the value is written literally, and calls that then differ (in structure or in a
literal) get classes of their own (`Bottleneck`, `Bottleneck2`).

Attribute names equal the in-memory module's paths, so their state_dicts are the same.
"""

from __future__ import annotations

import inspect
import keyword
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from .. import __version__, ast
from ..ir import Network, Node, ScopeTree, scope_tree
from ..layers import REGISTRY, Padding, fmt
from ..values import evaluate
from .torch_extra import CLASSES
from .torch_ops import TorchGenerator, TorchLayer

# ---- Python text ----------------------------------------------------------------------


def class_name(name: str) -> str:
    """`dense_layer` -> `DenseLayer`; never a keyword (`block none`) or a name the module
    uses itself (`block f` would hide `F`)."""
    text = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Net"
    taken = keyword.iskeyword(text) or text in ("F", "Sequential", "Module", *CLASSES)
    return text + "Block" if taken else text


def identifier(name: str) -> str:
    name = name.replace(".", "_")
    reserved = ("self", "torch", "nn", "F", "math", "x")
    return name + "_" if keyword.iskeyword(name) or name in reserved else name


def docstring_text(text: str) -> str:
    """Text (a file name, say) made safe inside a triple-quoted docstring: backslashes,
    quotes, line breaks and anything unprintable are escaped, so nothing it holds can end
    the string or become code."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped.replace('"', '\\"')


def py_literal(value) -> str:
    if isinstance(value, Sym):
        return value.code
    if isinstance(value, float):
        return "float('-inf')" if value == float("-inf") else repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(py_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


_PY_FUNCS = {"divisible": "_divisible", "ceil": "math.ceil", "floor": "math.floor"}
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6,
               "//": 6, "neg": 7, "**": 8}


def py_expr(expr: ast.Expr, needs: set[str], outer: int = 0) -> str:
    """A .cnn expression in Python syntax (parameter names kept)."""
    if isinstance(expr, ast.Num):
        return repr(expr.value)
    if isinstance(expr, ast.Name):
        return {"true": "True", "false": "False"}.get(expr.id, identifier(expr.id))
    if isinstance(expr, ast.Func):
        name = _PY_FUNCS.get(expr.name, expr.name)
        needs.add(name.split(".")[0])
        return f"{name}({', '.join(py_expr(a, needs) for a in expr.args)})"
    if isinstance(expr, ast.Tuple):
        return "(" + ", ".join(py_expr(i, needs) for i in expr.items) + ")"
    if isinstance(expr, ast.BinOp) and expr.op == "+":
        text, level = _sum(expr, needs), _PRECEDENCE["+"]
    elif isinstance(expr, ast.Neg):
        text, level = "-" + py_expr(expr.operand, needs, _PRECEDENCE["neg"]), _PRECEDENCE["neg"]
    elif isinstance(expr, ast.BoolOp) and expr.op == "not":
        text, level = "not " + py_expr(expr.left, needs, 3), 3
    else:
        level = _PRECEDENCE["cmp" if isinstance(expr, ast.Compare) else expr.op]
        right_level = level if expr.op == "**" else level + 1
        text = (f"{py_expr(expr.left, needs, level + (expr.op == '**'))} {expr.op} "
                f"{py_expr(expr.right, needs, right_level)}")
    return f"({text})" if level < outer else text


def _sum(expr: ast.BinOp, needs: set[str]) -> str:
    """`in_channels + growth + growth` -> `in_channels + 2 * growth` (terms in first order)."""
    terms: list[ast.Expr] = []
    stack = [expr]
    while stack:  # flatten the left-leaning chain of additions
        node = stack.pop()
        if isinstance(node, ast.BinOp) and node.op == "+":
            stack += [node.right, node.left]
        else:
            terms.append(node)
    counts = Counter(py_expr(t, needs, _PRECEDENCE["+"]) for t in terms)
    parts = []
    for text in dict.fromkeys(py_expr(t, needs, _PRECEDENCE["+"]) for t in terms):
        n = counts[text]
        parts.append(text if n == 1 else f"{n} * {py_expr_wrap(text)}")
    return " + ".join(parts)


def py_expr_wrap(text: str) -> str:
    return text if text.isidentifier() or text.isdigit() else f"({text})"


class Sym:
    """An argument written as an expression. Equal only to the same expression, so a
    handler never drops it as a 'default' value but still sees symmetric padding."""

    def __init__(self, code: str):
        self.code = code

    def __eq__(self, other):
        return isinstance(other, Sym) and other.code == self.code

    def __hash__(self):
        return hash(self.code)


def constructor(spec: TorchLayer, needs: set[str]) -> str:
    """`nn.Conv2d(...)`, or one of torch_extra's classes (whose source is then written)."""
    parts = [py_literal(a) for a in spec.args]
    parts += [f"{k}={py_literal(v)}" for k, v in spec.kwargs.items()]
    if spec.extra:
        needs.add(spec.cls)
        return f"{spec.cls}({', '.join(parts)})"
    return f"nn.{spec.cls}({', '.join(parts)})"


# ---- class planning -------------------------------------------------------------------


@dataclass
class ClassPlan:
    name: str
    block: str
    params: list[str]  # constructor parameters, in_channels first
    init: list[str]
    forward: list[str]
    doc: str
    inputs: list[str]  # forward's parameters: x, then the block's tensor parameters


class _Planner:
    def __init__(self, ir: Network, definitions: dict[str, ast.Definition],
                 generator: type[TorchGenerator]):
        self.ir = ir
        self.definitions = definitions
        self.generator = generator
        self.needs: set[str] = set()
        self.classes: list[ClassPlan] = []
        self.by_signature: dict[tuple, ClassPlan] = {}
        self.class_of: dict[tuple[str, ...], ClassPlan] = {}  # scope path -> its class
        self.taken = {class_name(ir.name)}

    # a block instance -> (class, constructor call)
    def plan_block(self, item: ScopeTree) -> None:
        for child in item.items:
            if isinstance(child, ScopeTree):
                self.plan_scope_children(child)
        scope = item.scope
        env = scope.args
        init, params = self.init_lines(item, env)
        defn = self.definitions.get(scope.block)
        tensor_params = [identifier(p.name) for p in defn.params if p.type == "tensor"] \
            if defn else []
        inputs = ["x", *tensor_params][:len(item.inputs)]
        forward = self.forward_lines(item, tuple(inputs))
        ordered = ["in_channels"] + [p.name for p in defn.params] if defn else ["in_channels"]
        used = [p for p in ordered if p in params]
        signature = (scope.block, tuple(used), tuple(inputs), tuple(init), tuple(forward))
        plan = self.by_signature.get(signature)
        if plan is None:
            plan = ClassPlan(self.fresh_name(scope.block), scope.block, used, init, forward,
                             self.doc(scope.block), inputs)
            self.by_signature[signature] = plan
            self.classes.append(plan)
        self.class_of[scope.path] = plan

    def plan_scope_children(self, item: ScopeTree) -> None:
        if item.scope.shares:  # applied again: the first application's class and module
            return
        if item.scope.block is None:  # a labelled repeat: plan what it holds
            for child in item.items:
                if isinstance(child, ScopeTree):
                    self.plan_scope_children(child)
        else:
            self.plan_block(item)

    def fresh_name(self, block: str) -> str:
        base = class_name(block)
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}{n}"
        self.taken.add(name)
        return name

    def doc(self, block: str) -> str:
        defn = self.definitions.get(block)
        if defn is None:
            return f"block {block}"
        params = ", ".join(p.name for p in defn.params)
        return f"block {block}({params}), {defn.span.file}:{defn.span.line}"

    # constructor lines; `env` is the instance's parameter values (None at the network)
    def init_lines(self, item: ScopeTree, env: dict | None) -> tuple[list[str], set[str]]:
        lines: list[str] = []
        used: set[str] = set()
        for child in item.items:
            if _shares(child):  # a shared layer applied again: its module is there already
                continue
            code = self.make(child, env, used)
            if code is not None:
                lines.append(f"self.{child.local} = {code}")
            if isinstance(child, Node):
                lines += _fixed_tensors(child)
        return lines, used

    def make(self, item: Node | ScopeTree, env: dict | None, used: set[str]) -> str | None:
        if isinstance(item, Node):
            spec = self.symbolic_layer(item, env, used)
            return None if spec.cls is None else constructor(spec, self.needs)
        scope = item.scope
        if scope.block is None:
            parts = [self.make(child, env, used) for child in item.items]
            return f"nn.Sequential({', '.join(p for p in parts if p)})"
        plan = self.class_of[scope.path]
        args = [self.argument(scope.arg_syms.get(p), scope.args[p], env, used)
                for p in plan.params]
        return f"{plan.name}({', '.join(args)})"

    def argument(self, expr, value, env: dict | None, used: set[str]) -> str:
        """An expression of the enclosing block's parameters if it gives `value`, else a literal."""
        if env is not None and expr is not None and _gives(expr, env, value):
            used.update(_names(expr))
            return py_expr(expr, self.needs)
        return py_literal(value)

    def symbolic_layer(self, node: Node, env: dict | None, used: set[str]) -> TorchLayer:
        """The layer with the arguments the spec wrote as expressions of the block's
        parameters (where they give this instance's values)."""
        layer = self.generator.layer
        if env is None or not node.syms:
            return layer(node)
        updates, names = {}, set()
        for attr, expr in node.syms.items():
            value = getattr(node.attrs, attr, None)
            if isinstance(value, Padding):
                symbolic = _symmetric_padding(expr, env, value, self.needs)
                if symbolic is not None:
                    updates[attr] = symbolic
                    names.update(_names(expr))
            elif hasattr(node.attrs, attr) and _gives(expr, env, value):
                updates[attr] = Sym(py_expr(expr, self.needs))
                names.update(_names(expr))
        try:
            spec = layer(node.model_copy(update={"attrs": replace(node.attrs, **updates)}))
        except (TypeError, ValueError):  # a handler that needs the number itself
            return layer(node)
        used.update(names)
        return spec

    # forward lines of a scope whose inputs are `inputs`
    def forward_lines(self, item: ScopeTree, inputs: tuple[str, ...]) -> list[str]:
        external = dict(zip(item.inputs, inputs)) if item.path else {
            i.name: identifier(i.name) for i in self.ir.inputs}
        return _Forward(item, external, self.ir, self.generator, shapes=False).lines()


class _Forward:
    """Writes forward(): a chain reuses `x`; a value used elsewhere gets its own name."""

    def __init__(self, item: ScopeTree, external: dict[str, str], ir: Network,
                 generator: type[TorchGenerator], shapes: bool):
        self.item = item
        self.ir = ir
        self.generator = generator
        self.shapes = shapes  # shape comments only where one instance is meant
        self.var = dict(external)
        # running variable -> the values it holds now (a reuse drops the finished ones), so
        # choosing a free variable costs O(1), not a scan of every value so far
        self.holders: dict[str, set[str]] = {}
        for value, name in external.items():
            self.holders.setdefault(name, set()).add(value)
        self.uses = Counter(i for child in item.items for i in child.inputs)
        self.outputs = list(item.outputs) if item.path else list(ir.outputs)
        self.uses.update(self.outputs)

    def lines(self) -> list[str]:
        out = []
        children = self.item.items
        remaining = Counter(self.uses)
        for index, child in enumerate(children):
            if self.collected_elsewhere(child):  # `each(m)`: every step's output is kept
                out += self.unrolled(child)
                remaining.subtract(child.inputs)
                continue
            expr = self.expression(child)
            remaining.subtract(child.inputs)
            if isinstance(child, ScopeTree) and len(child.outputs) > 1:  # a split, a block
                targets = [f"{identifier(child.local)}_{i}" for i in range(len(child.outputs))]
                for value, target in zip(child.outputs, targets):
                    self.var[value] = target
                out.append(f"{', '.join(targets)} = {expr}")
                continue
            nxt = children[index + 1] if index + 1 < len(children) else None
            last = nxt is None
            chained = self.uses[child.output] == 1 and (
                not last and child.output in nxt.inputs and child.output not in self.outputs
                or last and self.outputs == [child.output])
            target = self.free_running_var(remaining) if chained else None
            if target is not None:
                self.holders[target] = set()
            target = target or identifier(child.local)
            self.var[child.output] = target
            self.holders.setdefault(target, set()).add(child.output)
            shape = fmt(self.ir.shape_of(child.output)) if self.shapes else ""
            out.append(f"{target} = {expr}" + (f"  # {shape}" if shape else ""))
        missing = [o for o in self.outputs if o not in self.var]
        if missing:  # an empty block passes its input through
            return out + ["return x"]
        return out + ["return " + ", ".join(self.var[o] for o in self.outputs)]

    def collected_elsewhere(self, child: Node | ScopeTree) -> bool:
        """A labelled repeat whose steps' outputs other steps read (`concat(each(m))`)."""
        return isinstance(child, ScopeTree) and child.scope is not None and any(
            self.uses[value] for value in child.scope.collected[:-1])

    def unrolled(self, child: ScopeTree) -> list[str]:
        """`m_0 = self.m[0](x)`, `m_1 = self.m[1](m_0)`, ...: each output named."""
        lines, x = [], self.var[child.inputs[0]]
        for i, value in enumerate(child.scope.collected):
            target = f"{identifier(child.local)}_{i}"
            lines.append(f"{target} = self.{child.local}[{i}]({x})")
            self.var[value] = x = target
        return lines

    def free_running_var(self, remaining: Counter) -> str | None:
        """`x`, else `y`, `z`: the first whose value nobody needs any more (or this child's)."""
        for candidate in ("x", "y", "z"):
            if all(remaining[n] <= 0 for n in self.holders.get(candidate, ())):
                return candidate
        return None

    def expression(self, child: Node | ScopeTree) -> str:
        args = [self.var[i] for i in child.inputs]
        local = _shares(child).rpartition(".")[2] or child.local  # the module it runs
        if isinstance(child, ScopeTree):
            if child.scope.block is None and len(child.outputs) > 1:  # a split's slices
                return ", ".join(f"self.{child.local}[{i}]({args[0]})"
                                 for i in range(len(child.outputs)))
            return f"self.{local}({', '.join(args)})"
        spec = self.generator.layer(child)
        if spec.join == "concat":
            return f"torch.cat([{', '.join(args)}], dim={spec.axis})"
        if spec.join is not None:
            if spec.constant is not None:
                number = py_literal(spec.constant)
                args = [number, *args] if spec.constant_first else [*args, number]
            return f" {_OPERATOR_TEXT[spec.join]} ".join(args)
        arg = args[0]
        if spec.pre_pad is not None:
            value = "" if spec.pad_value == 0 else f", value={py_literal(spec.pad_value)}"
            arg = f"F.pad({arg}, {py_literal(spec.pre_pad)}{value})"
        if spec.valid_count:  # divide by the number of real inputs in each window
            ones = f"F.pad(torch.ones_like({args[0]}[:, :1]), {py_literal(spec.pre_pad)})"
            return f"self.{local}({arg}) / self.{local}({ones})"
        return f"self.{local}({arg})"


def _fixed_tensors(node: Node) -> list[str]:
    """Tensors the spec gives (`weight=...`) and parameters it keeps from training."""
    lines = []
    for weight in REGISTRY[node.op].weights(node.attrs):
        target = f"self.{node.local}.{weight.suffix}"
        if weight.init.values is not None:
            values = ", ".join(py_literal(float(v)) for v in weight.init.values)
            lines.append(f"{target} = nn.Parameter(torch.tensor([{values}]).reshape"
                         f"{py_literal(weight.shape)}, requires_grad={weight.trainable})")
        elif not weight.trainable:
            lines.append(f"{target}.requires_grad_(False)")
    return lines


def _shares(item: Node | ScopeTree) -> str:
    """The module a shared layer's further application runs ("" for any other item)."""
    if isinstance(item, ScopeTree):
        return item.scope.shares if item.scope else ""
    return item.shares


_OPERATOR_TEXT = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _gives(expr, env: dict, value: Any) -> bool:
    """Whether the expression, evaluated with this instance's parameters, is `value`."""
    try:
        result = evaluate(expr, env)
    except Exception:  # noqa: BLE001 - any failure means: not usable as an expression
        return False
    if isinstance(value, tuple) and not isinstance(result, tuple):
        result = (result,) * len(value)
    return type(result) is type(value) and result == value or (
        isinstance(value, tuple) and result == value)


def _symmetric_padding(expr, env: dict, value: Padding, needs: set[str]) -> Padding | None:
    """The padding with expressions for its sides, when the written padding gives it."""
    if not value.symmetric or not _gives(expr, env, value.pair):
        return None
    if isinstance(expr, ast.Tuple):
        rows, cols = (Sym(py_expr(e, needs)) for e in expr.items)
    else:
        rows = cols = Sym(py_expr(expr, needs))
    return Padding(rows, rows, cols, cols)


def _names(expr) -> set[str]:
    if isinstance(expr, ast.Name):
        return {expr.id}
    found: set[str] = set()
    for part in vars(expr).values():
        if isinstance(part, tuple):
            for sub in part:
                if hasattr(sub, "span"):
                    found |= _names(sub)
        elif hasattr(part, "span") and not isinstance(part, type(expr.span)):
            found |= _names(part)
    return found


_DIVISIBLE = '''def _divisible(value, divisor=8, min_value=None):
    """Round a channel count to a multiple of divisor, never dropping below 90%."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded'''


def generate_source(ir: Network, definitions: dict[str, ast.Definition] | None = None,
                    generator: type[TorchGenerator] = TorchGenerator) -> str:
    planner = _Planner(ir, definitions or {}, generator)
    root = scope_tree(ir)
    for child in root.items:
        if isinstance(child, ScopeTree):
            planner.plan_scope_children(child)
    init, _ = planner.init_lines(root, None)
    forward = _Forward(root, {i.name: identifier(i.name) for i in ir.inputs}, ir, generator,
                       shapes=True)
    forward_lines = forward.lines()
    needs_functional = any("F.pad(" in line for line in [
        *forward_lines, *(line for plan in planner.classes for line in plan.forward)])
    name = class_name(ir.name)
    inputs = ", ".join(f"{i.name}: {fmt(i.shape)}" for i in ir.inputs)
    out = [
        f'"""{ir.name}: generated by cnndsl {__version__} from {docstring_text(ir.file)}; '
        'edit the spec, not this.',
        "",
        f"{ir.total_params:,} parameters, {ir.total_macs:,} MACs per image "
        "(conv and linear multiply-accumulates).",
        '"""',
        "",
        *(["import math", ""] if "math" in planner.needs else []),
        "import torch",
        *(["import torch.nn.functional as F"] if needs_functional else []),
        "from torch import nn",
        "",
    ]
    if "_divisible" in planner.needs:
        out += ["", _DIVISIBLE, ""]
    for extra in sorted(planner.needs & set(CLASSES)):  # modules torch has no class for
        out += ["", inspect.getsource(CLASSES[extra]).rstrip("\n"), ""]
    for plan in planner.classes:
        signature = ", ".join(["self", *(identifier(p) for p in plan.params)])
        out += ["", f"class {plan.name}(nn.Module):", f'    """{docstring_text(plan.doc)}"""', "",
                f"    def __init__({signature}):", "        super().__init__()",
                *(f"        {line}" for line in plan.init), "",
                f"    def forward(self, {', '.join(plan.inputs)}):",
                *(f"        {line}" for line in plan.forward), ""]
    args = ", ".join(identifier(i.name) for i in ir.inputs)
    out += ["", f"class {name}(nn.Module):", f'    """Input {inputs}."""', "",
            "    def __init__(self):", "        super().__init__()",
            *(f"        {line}" for line in init), "",
            f"    def forward(self, {args}):", *(f"        {line}" for line in forward_lines),
            "", "", f"def build() -> {name}:",
            f'    """A fresh, randomly initialised {ir.name}."""', f"    return {name}()", ""]
    return "\n".join(out)
