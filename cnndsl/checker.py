"""The shape pass: syntax tree + parameter values -> checked IR (cnndsl.ir.Network).

It evaluates parameters, expands blocks and repeats, wires named tensors, and asks each
layer kind (cnndsl.layers) for its output shape, parameters and MACs. Errors are collected,
not raised one by one: a tensor whose producer failed is "poisoned" (shape None) and layers
fed by it are skipped silently, so one mistake gives one error.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from . import ast
from .check_shared import SharedChecks, SharedModule
from .check_tensors import TensorChecks
from .diagnostics import CnnError, Diagnostic, Label
from .ir import Input, Network, Node, Scope
from .layers import (
    ADDED_AFTER_0_1,
    REGISTRY,
    REQUIRED,
    Arg,
    LayerError,
    LayerKind,
    Warn,
    as_int,
    boolean,
    fmt,
    number,
    pair0,
    short,
)
from .names import name_problem
from .source import Span
from .suggest import (
    POSITIONAL_HABITS,
    argument_help,
    did_you_mean,
    layer_guess,
    layer_help,
)
from .values import Symbol, describe, evaluate, render_expr, word_help

SHAPE_CODES = ("E-shape", "E-groups")
MAX_REPEAT = 10_000
MAX_NODES = 100_000  # ~80 us each to check: a bound of seconds, 20x the largest zoo spec
MAX_STEPS = 1_000_000  # layers and block calls expanded, failed ones included
MAX_BLOCK_DEPTH = 32
DEFAULT_MEMORY_FRACTION = 0.5  # of this machine's memory, for parameters or activations
# peak fp32 copies of the weights, measured (/usr/bin/time, VGG-16's 553 MB): writing ONNX
# holds the arrays, the protobuf and its serialisation (1.84 GB = 3.3x); training holds
# weights, gradients and two Adam moments
WEIGHT_COPIES = {"onnx": 3.5, "train": 4.0}
def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


# block and network parameter types; `tensor` and `layer` are for blocks only
PARAM_TYPES = {"int": as_int, "float": number, "bool": boolean, "any": lambda v: v,
               "pair": pair0, "tuple": _as_tuple, "tensor": None, "layer": None}


@dataclass(frozen=True)
class LayerValue:
    """The value of a `layer` parameter: a layer or block and its arguments, bound where
    the call was written (its `params` and `lets`)."""

    name: str
    args: tuple
    kwargs: tuple
    has_call: bool
    span: Span
    params: dict = field(compare=False, repr=False)
    lets: dict = field(compare=False, repr=False)

    def __str__(self) -> str:
        if not self.has_call:
            return self.name
        parts = [render_expr(a, {}) for a in self.args]
        parts += [f"{kw.name}={render_expr(kw.value, {})}" for kw in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


@dataclass
class Tensor:
    name: str  # node name (dotted) or network input name
    shape: tuple[int, ...] | None  # None: its producer failed; consumers stay quiet
    span: Span
    op: str  # producer op, "input" for inputs
    sym: Any = None  # channels as an expression of the enclosing block's parameters

    @property
    def origin(self) -> str:
        if self.op == "input":
            return f"the input `{self.name}`"
        return f"after {self.op} at line {self.span.line}"


@dataclass
class Frame:
    """Where we are: parameter values, visible tensors, module path and name prefix."""

    params: dict[str, Any]
    path: tuple[str, ...] = ()
    prefix: str = ""
    tensors: dict[str, Tensor] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    assigned: dict[str, Span] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    blocks: tuple[str, ...] = ()  # block calls being expanded, for recursion errors
    lets: dict[str, Any] = field(default_factory=dict)  # constant -> its expression
    # layer op -> argument -> value, from `defaults` statements (blocks inherit a copy)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, SharedModule] = field(default_factory=dict)  # labels, to apply again
    # a labelled repeat or group -> each step's output (`each(m)` in a merge)
    collections: dict[str, list[Tensor]] = field(default_factory=dict)

    def with_prefix(self, prefix: str) -> Frame:
        """Same scope, names prefixed (shortcut_, b1_); shares tensors and counters."""
        return replace(self, prefix=self.prefix + prefix)


class _StatementError(Exception):
    """Stops elaborating the current statement after an error was recorded."""


class _FatalError(Exception):
    """A global limit was hit: stop elaborating altogether."""


class Checker(TensorChecks, SharedChecks):
    def __init__(self, definitions: dict[str, ast.Definition], strict: bool = False,
                 memory_limit: int | None = None, weight_copies: float = 1.0,
                 file_defaults: dict[str, tuple[ast.Defaults, ...]] | None = None):
        self.definitions = definitions
        self.file_defaults = file_defaults or {}  # file -> its top-level `defaults`
        self.strict = strict
        self.memory_limit = default_memory_limit() if memory_limit is None else memory_limit
        # how many fp32 copies of the weights the caller will hold at its peak: 1 to check,
        # WEIGHT_COPIES for what writes or trains them
        self.weight_copies = weight_copies
        self.steps = 0
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.scopes: list[Scope] = []
        self.calls: list[tuple[str, Span]] = []  # block calls being expanded, outermost first
        self.residuals_that_add: set[Span] = set()
        self.residuals_never_adding: dict[Span, Diagnostic] = {}  # in blocks, so far
        self.main_file = ""
        # the last unlabelled repeat's output and every step's: (output, outputs)
        self.last_repeat: tuple[Tensor, list[Tensor]] | None = None

    # ---- entry point ----------------------------------------------------------------

    def network(self, defn: ast.Definition, overrides: dict[str, Any]) -> Network:
        self.main_file = defn.span.file
        params = self.bind_network_params(defn, overrides)
        frame = Frame(dict(params))  # `let` adds to the frame's values, not to the network's
        inputs: list[Input] = []
        outputs: list[str] = []
        self.output_names: list[str] = []
        body = (*self.file_defaults.get(defn.span.file, ()), *defn.body)
        self.warn_shadowed_layers()
        try:
            current = self.statements(body, None, frame, inputs=inputs, outputs=outputs)
        except _FatalError:
            raise CnnError(self.errors + self.warnings) from None
        if not inputs and not self.errors:
            self.fail("E-input", f"network `{defn.name}` has no input", defn.name_span,
                      label="no `input` statement",
                      help="declare one first, e.g. `input image: 3 x 224 x 224`")
        if not outputs and current is not None:
            outputs.append(current.name)
            self.output_names.append(current.name)
        self.warn_unused(frame, outputs)
        self.report_residuals_never_adding()
        if self.errors:
            raise CnnError(_distinct(self.errors + self.warnings))
        network = Network(name=defn.name, file=defn.span.file, params=params,
                          inputs=tuple(inputs), nodes=tuple(self.nodes), outputs=tuple(outputs),
                          output_names=tuple(self.output_names), scopes=tuple(self.scopes),
                          tensors={k: t.name for k, t in frame.tensors.items()},
                          warnings=tuple(_distinct(self.warnings)))
        self.check_memory(network, defn)
        return network

    def check_memory(self, network: Network, defn: ast.Definition) -> None:
        """Refuse, before anything is allocated, a network this machine cannot hold."""
        from .report import human_bytes
        weights = 4 * (network.total_params + sum(n.buffers for n in network.nodes))
        activations = 4 * network.activations
        what_weights = "parameters" if self.weight_copies == 1 else (
            f"parameters, held {self.weight_copies:g} times over by this command,")
        for what, size in ((what_weights, int(weights * self.weight_copies)),
                           ("activations per image", activations)):
            if size > self.memory_limit:
                raise CnnError([Diagnostic(
                    code="E-limit", message=f"the {what} need {human_bytes(size)} (fp32), over "
                    f"the limit of {human_bytes(self.memory_limit)}", span=defn.name_span,
                    notes=(f"{network.total_params:,} parameters; {network.activations:,} "
                           "activation values per image",),
                    help="raise the limit with --memory-limit (e.g. --memory-limit 64GiB) if "
                    "the machine that runs it has the memory")])

    # ---- diagnostics ----------------------------------------------------------------

    def fail(self, code: str, message: str, span: Span, **kw) -> _StatementError:
        self.report(Diagnostic(code=code, message=message, span=span, **kw))
        return _StatementError()

    def report(self, d: Diagnostic) -> None:
        """Record a diagnostic, seen from the user's file when it arose inside a block."""
        d = self.from_user_file(d)
        if self.strict and d.severity == "warning":  # --strict: every warning is an error
            d = d.model_copy(update={"severity": "error"})
        (self.errors if d.severity == "error" else self.warnings).append(d)

    def from_user_file(self, d: Diagnostic) -> Diagnostic:
        """A problem inside a standard-library or imported block is caused by a call in the
        user's own file: show that call first, the block's line beside it, and the chain of
        calls between them."""
        if not self.calls or d.span is None:
            return d
        if d.span.file == self.main_file:  # a block of this file: say which call it was
            return d.model_copy(update={
                "notes": (*d.notes, f"in the call {_chain(self.calls)}")})
        outer = max((i for i, (_, span) in enumerate(self.calls)
                     if span.file == self.main_file), default=None)
        if outer is None:
            return d
        block, site = self.calls[outer]
        inner, callers = self.calls[outer + 1:], self.calls[:outer]
        where = Label(span=d.span, text=d.label or d.message)
        return d.model_copy(update={
            "span": site, "label": f"in this call to `{block}`",
            "related": (where, *d.related),
            "notes": (*d.notes, *([f"calls: {_chain(inner)}"] if inner else []),
                      *([f"in the call {_chain(callers)}"] if callers else []))})

    # ---- parameters -----------------------------------------------------------------

    def bind_network_params(self, defn: ast.Definition, overrides: dict[str, Any]):
        known = {p.name for p in defn.params}
        for name in overrides:
            if name not in known:
                hint = did_you_mean(name, known) or (
                    f"its parameters are: {', '.join(sorted(known))}" if known else
                    "it takes no parameters")
                raise CnnError([Diagnostic(
                    code="E-param", message=f"network `{defn.name}` has no parameter `{name}`",
                    span=defn.name_span, label="this network", help=hint)])
        values: dict[str, Any] = {}
        for param in defn.params:
            coerce = self.param_type(param)
            if param.name in overrides:
                raw, span = overrides[param.name], param.span
            elif param.default is not None:
                raw, span = self.eval(param.default, values), param.default.span
            else:
                raise CnnError([Diagnostic(
                    code="E-param", message=f"network parameter `{param.name}` has no value",
                    span=param.span, help=f"give it a default or pass --set {param.name}=...")])
            values[param.name] = self.coerce(coerce, raw, span, f"parameter `{param.name}`")
        return values

    def param_type(self, param: ast.Param, block: bool = False):
        if param.type not in PARAM_TYPES:
            raise CnnError([Diagnostic(
                code="E-type", message=f"unknown type `{param.type}`", span=param.span,
                help=did_you_mean(param.type, PARAM_TYPES) or
                "types: " + ", ".join(PARAM_TYPES))])
        if PARAM_TYPES[param.type] is None and not block:
            raise CnnError([Diagnostic(
                code="E-type", message=f"a network parameter cannot be a {param.type}",
                span=param.span, help="only block parameters take tensors and layers")])
        return PARAM_TYPES[param.type] or (lambda v: v)

    def eval(self, expr: ast.Expr, params: dict[str, Any]) -> Any:
        try:
            return evaluate(expr, params)
        except RecursionError:
            raise CnnError([Diagnostic(code="E-limit", message="expression nested too deeply",
                                       span=expr.span)]) from None

    def coerce(self, coerce, value, span: Span, what: str, params=()):
        try:
            return coerce(value)
        except LayerError as exc:
            hint = exc.help
            if isinstance(value, Symbol) and not hint:  # `linear(clases)`
                hint = word_help(value, params)
            raise CnnError([Diagnostic(code=exc.code, message=f"{what}: {exc.message}",
                                       span=span, help=hint)]) from None

    # ---- statements -----------------------------------------------------------------

    def statements(self, body, x: Tensor | None, frame: Frame, inputs=None, outputs=None,
                   block_input: Tensor | None = None) -> Tensor | None:
        current = x
        for stmt in body:
            try:
                current = self.statement(stmt, current, frame, inputs, outputs, block_input)
            except (_StatementError, CnnError) as exc:
                if isinstance(exc, CnnError):
                    for d in exc.diagnostics:
                        self.report(d)
                current = Tensor("<error>", None, stmt.span, "error")
                names = ([n for n, _ in stmt.targets] if isinstance(stmt, ast.Assign) else
                         [stmt.name] if isinstance(stmt, ast.InputDecl) else [])
                for name in names:
                    if name not in frame.tensors:
                        frame.tensors[name] = current  # its later uses stay quiet
                        frame.used.add(name)
        return current

    def statement(self, stmt, current, frame, inputs, outputs, block_input):
        if isinstance(stmt, ast.InputDecl):
            return self.input_decl(stmt, frame, inputs, block_input)
        if isinstance(stmt, ast.Output):
            return self.output_stmt(stmt, frame, outputs)
        if isinstance(stmt, ast.Conditional):
            condition = self.coerce(boolean, self.eval(stmt.condition, frame.params),
                                    stmt.condition.span, "condition")
            return self.chain(stmt.chain, current, frame) if condition else current
        if isinstance(stmt, ast.If):
            condition = self.coerce(boolean, self.eval(stmt.condition, frame.params),
                                    stmt.condition.span, "condition")
            chosen = stmt.then if condition else stmt.orelse or ()
            return self.statements(chosen, current, frame, inputs, outputs, block_input)
        if isinstance(stmt, ast.Let):
            self.let(stmt, frame)
            return current
        if isinstance(stmt, ast.Defaults):
            self.defaults(stmt, frame)
            return current
        if isinstance(stmt, ast.Assign) and len(stmt.targets) > 1:
            results = self.chain(stmt.chain, current, frame, several=len(stmt.targets))
            for (name, span), tensor in zip(stmt.targets, results):
                self.bind_tensor(name, span, tensor, frame)
            return results[-1]
        if isinstance(stmt, ast.Assign):
            self.last_repeat = None
            result = self.chain(stmt.chain, current, frame)
            self.bind_tensor(stmt.target, stmt.target_span, result, frame)
            if self.last_repeat is not None and self.last_repeat[0] is result:
                # `y = x -> bottleneck(c) * n`: each(y) is every step's output
                frame.collections.setdefault(stmt.target, self.last_repeat[1])
            return result
        return self.chain(stmt, current, frame)

    def let(self, stmt: ast.Let, frame: Frame) -> None:
        """`let w = expr`: a constant of this body, usable in later expressions."""
        problem = name_problem(stmt.name, "parameter")
        if problem is not None:
            raise self.fail("E-name", problem[0], stmt.name_span,
                            help=f"call it e.g. `{problem[1]}`")
        if stmt.name in frame.params or stmt.name in frame.tensors:
            raise self.fail("E-name", f"`{stmt.name}` is already defined", stmt.name_span,
                            label="a constant needs a name of its own")
        frame.params[stmt.name] = self.eval(stmt.value, frame.params)
        frame.lets[stmt.name] = inline(stmt.value, frame.lets)

    def defaults(self, stmt: ast.Defaults, frame: Frame) -> None:
        """`defaults batchnorm(eps=0.001)`: the values the layer's later calls take when
        they do not say (here, and in the blocks called from here)."""
        kind = REGISTRY.get(stmt.layer)
        if kind is None:
            raise self.fail("E-name", f"unknown layer `{stmt.layer}`", stmt.name_span,
                            help=layer_help(stmt.layer, list(REGISTRY), REGISTRY))
        if stmt.args or kind.many_inputs:
            raise self.fail("E-arg", "`defaults` takes a layer's keyword arguments",
                            (stmt.args[0] if stmt.args else stmt).span,
                            help=f"e.g. `defaults {stmt.layer}(name=value)`" if not
                            kind.many_inputs else f"`{stmt.layer}` takes no arguments")
        by_name = {a.name: a for a in kind.args if not a.tensor}
        table = dict(frame.defaults.get(kind.op, {}))
        for kw in stmt.kwargs:
            if kw.name not in by_name:
                raise self.fail("E-arg", f"unknown argument `{kw.name}` for `{kind.op}`",
                                kw.name_span, label="unknown argument",
                                help=argument_help(kw.name, by_name) or kind.signature())
            table[kw.name] = self.coerce(by_name[kw.name].coerce,
                                         self.eval(kw.value, frame.params), kw.value.span,
                                         f"`{kind.op}` argument `{kw.name}`", frame.params)
        frame.defaults[kind.op] = table

    def input_decl(self, stmt: ast.InputDecl, frame, inputs, block_input) -> Tensor:
        if inputs is None:  # inside a block: `input x` names the incoming tensor
            if stmt.dims is not None:
                raise self.fail("E-input", "a block's input shape is inferred, not written",
                                stmt.span, label="drop the shape",
                                help=f"write `input {stmt.name}`")
            if any(t is block_input for t in frame.tensors.values()):
                raise self.fail("E-input", "a block names the tensor it receives once",
                                stmt.span, label="a second `input`", help="take other "
                                "tensors as parameters: `block b(skip: tensor)`, called "
                                "`b(skip=e1)`")
            tensor = block_input
        else:
            if stmt.dims is None:
                raise self.fail("E-input", f"input `{stmt.name}` needs a shape", stmt.span,
                                help=f"e.g. `input {stmt.name}: 3 x 224 x 224`")
            dims = tuple(self.coerce(lambda v: as_int(v, 1), self.eval(d, frame.params),
                                     d.span, "input size") for d in stmt.dims)
            if len(dims) > 3:
                raise self.fail("E-input", f"inputs have at most 3 axes (C x H x W), found "
                                f"{len(dims)}", stmt.span)
            if len(dims) == 3 and dims[2] in (1, 3, 4) and dims[0] > 4 and dims[1] > 4:
                self.report(Diagnostic(
                    code="W-layout", severity="warning", message=f"input `{stmt.name}` is "
                    f"{dims[0]} x {dims[1]} x {dims[2]}: {dims[0]} channels of "
                    f"{dims[1]} x {dims[2]} pixels", span=stmt.span,
                    label="channels come first (C x H x W)",
                    help=f"for {dims[2]}-channel images write `input {stmt.name}: {dims[2]} x "
                    f"{dims[0]} x {dims[1]}`"))
            inputs.append(Input(name=stmt.name, shape=dims, span=stmt.span))
            tensor = Tensor(stmt.name, dims, stmt.span, "input")
        self.check_name_free(stmt.name, stmt.span, frame)
        if inputs is not None:  # a network input's name is a value's name in every back end
            if stmt.name in frame.taken:
                raise self.fail("E-name", f"`{stmt.name}` is already a layer's name", stmt.span)
            frame.taken.add(stmt.name)
        frame.tensors[stmt.name] = tensor
        return tensor

    def output_stmt(self, stmt: ast.Output, frame, outputs) -> Tensor | None:
        result = None
        seen: set[str] = set()
        for name, span in stmt.names:
            if name in seen:
                raise self.fail("E-name", f"`{name}` is listed twice", span,
                                label="already an output")
            seen.add(name)
            result = self.lookup_tensor(name, span, frame)
            if outputs is not None:
                outputs.append(result.name)
                if not frame.path:  # the network's own `output`, not a block's
                    self.output_names.append(name)
        return result

    def bind_tensor(self, name: str, span: Span, tensor: Tensor, frame: Frame) -> None:
        if frame.tensors.get(name) is tensor:  # `aux1 = x -> aux1: aux_head(...)`: the
            frame.assigned[name] = span        # step's label named this very tensor
            return
        self.check_name_free(name, span, frame)
        frame.tensors[name] = tensor
        frame.assigned[name] = span

    def check_usable(self, name: str, role: str, span: Span) -> None:
        problem = name_problem(name, role)
        if problem is not None:
            raise self.fail("E-name", problem[0], span, label=f"rename this {role}",
                            help=f"call it e.g. `{problem[1]}`")

    def check_name_free(self, name: str, span: Span, frame: Frame) -> None:
        self.check_usable(name, "tensor", span)
        if name in frame.tensors:
            first = frame.assigned.get(name, frame.tensors[name].span)
            raise self.fail("E-name", f"`{name}` is already defined", span,
                            label="defined again here", related=(Label(span=first,
                                                                       text="first here"),))
        if name in ADDED_AFTER_0_1 and name not in self.definitions:
            self.report(Diagnostic(
                code="W-shadow", severity="warning", message=f"the tensor `{name}` has the "
                f"name of the built-in layer `{name}`", span=span,
                label="this name starts a chain as the tensor; as a step it is the layer",
                help=f"rename the tensor (e.g. `{name}_out`)"))
        elif name in REGISTRY or name in self.definitions:
            kind = "layer" if name in REGISTRY else "block"
            raise self.fail("E-name", f"`{name}` is a {kind} name", span,
                            label="choose another name for this tensor")

    def lookup_tensor(self, name: str, span: Span, frame: Frame) -> Tensor:
        if name not in frame.tensors:
            raise self.fail("E-name", f"unknown tensor `{name}`", span, label="not defined",
                            help=did_you_mean(name, frame.tensors))
        frame.used.add(name)
        return frame.tensors[name]

    def warn_unused(self, frame: Frame, outputs: list[str]) -> None:
        for name, span in frame.assigned.items():
            if name not in frame.used and frame.tensors[name].name not in outputs:
                self.report(Diagnostic(
                    code="W-unused", severity="warning", message=f"tensor `{name}` is never used",
                    span=span, label="assigned here", help="use it, list it in `output`, or drop "
                    "the assignment"))

    # ---- chains and steps -----------------------------------------------------------

    def chain(self, chain: ast.Chain, current: Tensor | None, frame: Frame,
              several: int | None = None):
        """The chain's output; with `several` (`a, b = ...`), the list of tensors its last
        step gives (a split, or a block with several outputs)."""
        steps = list(chain.steps)
        first = steps[0]
        self.warn_label_on_chain(steps)
        if isinstance(first, ast.Layer) and not first.has_call and first.label is None \
                and first.name in frame.tensors:
            current = self.lookup_tensor(first.name, first.span, frame)
            steps.pop(0)
        elif isinstance(first, ast.Layer) and self.builtin(first.name) is not None \
                and REGISTRY[first.name].many_inputs:
            current = None  # `concat(a, b)` starting a line joins a and b only
        failed = False
        if several is not None and not steps:
            raise self.fail("E-arg", f"{several} names for one tensor", chain.span,
                            help="end the line with split(...) or a block with several "
                            "outputs: `a, b = x -> split(2)`")
        for i, step in enumerate(steps):  # a poisoned input still gets its arguments checked
            last = several if i == len(steps) - 1 else None
            try:
                current = self.step(step, current, frame, last)
            except _StatementError:  # go on: every unknown name of a line in one run
                failed = True
                current = Tensor("<error>", None, step.span, "error")
        if failed:
            raise _StatementError()
        return current

    def is_block_call(self, step) -> bool:
        return isinstance(step, ast.Layer) and self.builtin(step.name) is None and \
            getattr(self.definitions.get(step.name), "kind", None) == "block"

    def builtin(self, name: str) -> LayerKind | None:
        """The layer kind a name calls, unless a block of the user's shadows it."""
        kind = REGISTRY.get(name)
        if kind is None or getattr(self.definitions.get(name), "kind", None) == "block":
            return None
        return kind

    def warn_shadowed_layers(self) -> None:
        """`block hardsigmoid()`, written before cnndsl had that layer, still means the
        user's block; a warning says so once per definition."""
        for defn in self.definitions.values():
            if defn.kind == "block" and defn.name in REGISTRY:
                self.report(Diagnostic(
                    code="W-shadow", severity="warning", message=f"the block `{defn.name}` "
                    f"shadows the built-in layer `{defn.name}`", span=defn.name_span,
                    label="calls of this name run this block",
                    help=f"rename the block (e.g. `my_{defn.name}`) to use the built-in "
                    "layer too"))

    def warn_label_on_chain(self, steps: list) -> None:
        """`layer2: basic(128, stride=2) -> basic(128)` names the first call only (`layer2`,
        then a top-level `basic1`): as torchvision's `layer2.0`, `layer2.1` it takes the
        group spelling."""
        calls = list(itertools.takewhile(self.is_block_call, steps))
        if len(calls) < 2 or calls[0].label is None or any(c.label for c in calls[1:]):
            return
        label = calls[0].label
        group = " -> ".join(_call_text(c) for c in calls)
        self.report(Diagnostic(
            code="W-label", severity="warning", message=f"the label `{label}` names only "
            f"the first step of this chain, `{_call_text(calls[0])}`", span=calls[0].span,
            label=f"`{label}` names this call only; the next get names of their own",
            help=f"to name them all `{label}.0`, `{label}.1`...: `{label}: ({group})`"))

    def step(self, step, x: Tensor | None, frame: Frame, several: int | None = None):
        if several is not None and not isinstance(step, ast.Layer):
            raise self.fail("E-arg", f"{several} names for one tensor", step.span,
                            help="end the line with split(...) or a block with several "
                            "outputs: `a, b = x -> split(2)`")
        if isinstance(step, ast.Layer):
            return self.layer(step, x, frame, several=several)
        if isinstance(step, ast.Repeat):
            return self.repeat(step, x, frame)
        if isinstance(step, ast.Residual):
            return self.residual(step, self.need_input(x, step.span), frame)
        if isinstance(step, ast.Branch):
            return self.branch(step, self.need_input(x, step.span), frame)
        if isinstance(step, ast.Group):
            return self.group(step, x, frame)
        return self.layer(step, x, frame)

    def need_input(self, x: Tensor | None, span: Span) -> Tensor:
        if x is None:
            raise self.fail("E-input", "this layer has no input yet", span,
                            help="declare the input first, e.g. `input image: 3 x 32 x 32`")
        return x

    def layer(self, step: ast.Layer, x: Tensor | None, frame: Frame, name: str | None = None,
              several: int | None = None):
        self.steps += 1
        if self.steps > MAX_STEPS:
            self.fail("E-limit", f"expanding this network takes more than {MAX_STEPS:,} steps "
                      "(layers and block calls)", step.span, help="lower the repeat counts")
            raise _FatalError()
        value = frame.params.get(step.name)
        if isinstance(value, LayerValue) and not step.has_call:  # `act` of `act: layer`
            called = ast.Layer(value.name, value.args, value.kwargs, value.has_call,
                               step.label, step.span, step.name_span)
            return self.layer(called, x, replace(frame, params=value.params,
                                                 lets=value.lets), name, several)
        is_block = getattr(self.definitions.get(step.name), "kind", None) == "block"
        if step.name == "split" and step.name not in REGISTRY and not is_block:
            return self.split(step, x, frame, several)
        if several is not None and not is_block:
            raise self.fail("E-arg", f"{several} names for one tensor", step.span,
                            help="end the line with split(...) or a block with several "
                            "outputs: `a, b = x -> split(2)`")
        if step.name in REGISTRY and not is_block:
            return self.primitive(REGISTRY[step.name], step, x, frame, name)
        if is_block:
            tensor = self.call_block(self.definitions[step.name], step, x, frame, name,
                                     several)
            if step.label is not None and several is None:  # `layer2: basic(128)` names
                frame.tensors.setdefault(step.label, tensor)  # its output `layer2`
                self.remember_module(step, frame.path + (frame.prefix + step.label,), True,
                                     frame)
            return tensor
        if not step.has_call and step.name in frame.modules:
            return self.apply_again(step, x, frame, name)
        if not step.has_call and step.name in frame.tensors:
            raise self.fail("E-name", f"tensor `{step.name}` can only start a chain", step.span,
                            help=f"start a new line with `{step.name} -> ...`")
        blocks = [d.name for d in self.definitions.values() if d.kind == "block"]
        what = "layer" if step.has_call else "name"
        candidates = [*REGISTRY, *blocks, *frame.tensors]
        self.fail("E-name", f"unknown {what} `{step.name}`", step.name_span,
                  label="not a layer, block or tensor",
                  help=layer_help(step.name, candidates, REGISTRY))
        _, likely = layer_guess(step.name, candidates, REGISTRY)
        if step.has_call and likely is not None and likely not in frame.tensors:
            self.check_argument_names(step, likely)  # `Conv2d(32, 3, strides=1)`: both
        raise _StatementError()

    def check_argument_names(self, step: ast.Layer, likely: str) -> None:
        """The arguments of an unknown layer, against the layer or block it most likely
        is: each name it would refuse, reported now rather than after a rename."""
        if likely in REGISTRY and REGISTRY[likely].many_inputs:
            return  # merges take tensor names
        if likely not in REGISTRY and likely not in self.definitions:
            return  # a form of the language's own (`split`): no signature to compare
        if likely in REGISTRY:
            signature = REGISTRY[likely].args
        else:
            signature = self.block_signature(self.definitions[likely])
        what = f"`{likely}` (what `{step.name}` most likely is)"
        by_name = {a.name: a for a in signature}
        positional = [a for a in signature if a.positional]
        if len(step.args) > len(positional):
            extra = step.args[len(positional)]
            self.fail("E-arg", _too_many_positional(what, signature, len(step.args)),
                      extra.span, label="one too many", help=POSITIONAL_HABITS.get(likely) or
                      self.signature_help(signature, f"`{likely}`"))
        for kw in step.kwargs:
            if kw.name not in by_name:
                self.fail("E-arg", f"unknown argument `{kw.name}` for {what}", kw.name_span,
                          label="unknown argument", help=argument_help(kw.name, by_name) or
                          self.signature_help(signature, f"`{likely}`"))

    def repeat(self, step: ast.Repeat, x: Tensor | None, frame: Frame) -> Tensor:
        count = self.coerce(lambda v: as_int(v, 0), self.eval(step.count, frame.params),
                            step.count.span, "repeat count")
        if count > MAX_REPEAT:
            raise self.fail("E-limit", f"repeat count {count} is over the limit of {MAX_REPEAT}",
                            step.count.span)
        inner = step.step
        if inner.label is None:
            collected = []
            for i in range(count):
                before = len(self.nodes)
                x = self.layer(inner, x, frame)
                if x.shape is None:  # failed once: it fails the same way N times
                    break
                collected.append(x)
                if i == 0:
                    self.check_repeat_size(len(self.nodes) - before, count, step.count.span)
            self.last_repeat = (x, collected)
            return x
        unlabeled = ast.Layer(inner.name, inner.args, inner.kwargs, inner.has_call, None,
                              inner.span, inner.name_span)
        return self.container(inner.label, [unlabeled] * count, x, frame, step.span,
                              repeat_span=step.count.span)

    def check_repeat_size(self, per_copy: int, count: int, span: Span) -> None:
        """Refuse a repeat that will pass the layer bound as soon as its first copy shows
        its size, not seconds later when the bound is reached."""
        if len(self.nodes) + per_copy * (count - 1) > MAX_NODES:
            self.fail("E-limit", f"{count:,} copies of {per_copy:,} layers: the network would "
                      f"have more than {MAX_NODES:,} layers", span, label="repeat count")
            raise _FatalError()

    def group(self, step: ast.Group, x: Tensor | None, frame: Frame) -> Tensor:
        return self.container(step.label, list(step.steps), x, frame, step.span)

    def container(self, label: str, steps: list[ast.Layer], x: Tensor | None, frame: Frame,
                  span: Span, repeat_span: Span | None = None) -> Tensor:
        """A labelled repeat or group: one module `label` whose children are 0, 1, ... (as
        torchvision's `layer1.0`); the label also names the output tensor."""
        container = frame.path + (self.claim(label, span, frame),)
        index = len(self.scopes)
        self.scopes.append(Scope(path=container, block=None, span=span,
                                 inputs=(x.name,) if x else ()))
        sub = Frame(frame.params, container, blocks=frame.blocks, lets=frame.lets,
                    defaults=frame.defaults)
        collected = []
        for i, inner in enumerate(steps):
            before = len(self.nodes)
            x = self.layer(inner, x, sub, name=str(i))
            if x.shape is None:
                break
            collected.append(x)
            if i == 0 and repeat_span is not None:
                self.check_repeat_size(len(self.nodes) - before, len(steps), repeat_span)
        self.scopes[index] = self.scopes[index].model_copy(update={
            "output": x.name, "collected": tuple(t.name for t in collected)})
        frame.tensors.setdefault(label, x)
        frame.collections.setdefault(label, collected)
        frame.used.add(label)
        return x

    # ---- names ------------------------------------------------------------------------

    def claim(self, label: str, span: Span, frame: Frame, names: str | None = None) -> str:
        """A label's module name; `names` is the tensor the label also names (unprefixed)."""
        self.check_usable(label, "label", span)
        tensor = label if names is None else names
        if tensor in frame.tensors:  # `image: conv(...)` after `input image`
            first = frame.assigned.get(tensor, frame.tensors[tensor].span)
            raise self.fail("E-name", f"`{tensor}` is already defined", span,
                            label="a label names its output too",
                            related=(Label(span=first, text="first here"),),
                            help="give the step a name of its own")
        if label in frame.taken:
            raise self.fail("E-name", f"the name `{label}` is already used in this scope", span)
        frame.taken.add(label)
        return label

    def auto_name(self, base: str, frame: Frame) -> str:
        base = frame.prefix + base + ("_" if base[-1].isdigit() else "")  # relu6_1, not relu61
        n = frame.counters.get(base, 0)
        while True:
            n += 1
            if f"{base}{n}" not in frame.taken:
                break
        frame.counters[base] = n
        frame.taken.add(f"{base}{n}")
        return f"{base}{n}"

    def local_name(self, step: ast.Layer, base: str, frame: Frame, name: str | None) -> str:
        if name is not None:
            frame.taken.add(name)
            return name
        if step.label is not None:
            return self.claim(frame.prefix + step.label, step.span, frame, step.label)
        return self.auto_name(base, frame)

    # ---- primitive layers -------------------------------------------------------------

    def primitive(self, kind: LayerKind, step: ast.Layer, x: Tensor | None, frame: Frame,
                  name: str | None = None) -> Tensor:
        if kind.many_inputs:
            xs, attrs = self.merge_inputs(kind, step, x, frame)
            derivations, exprs = {}, {}
        else:
            xs = [self.need_input(x, step.span)]
            attrs, derivations, exprs = self.bind_args(kind.args, step, frame, f"`{kind.op}`")
            for arg in kind.args:  # `like=e1`: its shape
                if arg.tensor and attrs[arg.name] is not None:
                    attrs[arg.name] = attrs[arg.name].shape
        local = self.local_name(step, kind.op, frame, name)
        tensor = self.emit(kind, attrs, xs, frame.path + (local,), step, derivations, exprs)
        if step.label is not None:
            frame.tensors.setdefault(step.label, tensor)
            if tensor.shape is not None:
                self.remember_module(step, frame.path + (local,), False, frame)
        return tensor

    def emit(self, kind: LayerKind, args: dict, xs: list[Tensor], path: tuple[str, ...],
             step, derivations=None, syms=None, generated: bool = False) -> Tensor:
        """Add a node for a call with these bound arguments. `generated`: cnndsl wrote it
        (an automatic shortcut), so warnings about it would be about code the user never
        wrote."""
        if any(t.shape is None for t in xs):
            return Tensor(".".join(path), None, step.span, kind.op)
        if len(self.nodes) >= MAX_NODES:
            self.fail("E-limit", f"the network has more than {MAX_NODES:,} layers", step.span)
            raise _FatalError()
        shapes = [t.shape for t in xs]
        warn = Warn()
        try:
            attrs, shape = kind.check(args, shapes, warn)
            tensors = kind.weights(attrs)
            params = sum(w.size for w in tensors if not w.buffer)
            buffers = sum(w.size for w in tensors if w.buffer)
            macs = kind.count_macs(attrs, shapes, shape)
        except LayerError as exc:
            self.report(self.located(exc, step, xs))
            return Tensor(".".join(path), None, step.span, kind.op)
        for w in warn.items if not generated else ():
            self.warning(w, step, xs)
        syms = dict(syms or {})
        if kind.channels_in and xs[0].sym is not None:
            syms[kind.channels_in] = xs[0].sym
        # every field is made here with its type: no validation (a tenth of a layer's cost)
        node = Node.model_construct(
            path=path, op=kind.op, attrs=attrs, inputs=tuple(t.name for t in xs),
            in_shapes=tuple(shapes), shape=tuple(shape), params=params, buffers=buffers,
            macs=macs, span=step.span, derivations=derivations or {}, syms=syms)
        self.nodes.append(node)
        self.by_name[node.name] = node
        return Tensor(node.name, shape, step.span, kind.op, out_sym(kind, syms, xs))

    def located(self, exc: LayerError, step, xs: list[Tensor]) -> Diagnostic:
        """A layer's complaint, placed on its argument (or the layer) with the input's story."""
        span = self.arg_span(step, exc.arg) if exc.arg else None
        related = tuple(Label(span=xs[i].span, text=f"{fmt(xs[i].shape)} from here")
                        for i in exc.inputs if xs[i].span != step.span)
        notes = list(exc.notes)
        for i in exc.inputs:  # a rounding that breaks a merge: say how each side was computed
            producer = self.by_name.get(xs[i].name)
            how = producer.derivations.get("out_channels") if producer else None
            if how:
                notes.append(f"{fmt(xs[i].shape)} has out_channels = {how} (line "
                             f"{producer.span.line})")
        context = ""
        if len(xs) == 1:
            x = xs[0]
            context = f"the input here is {fmt(x.shape)} ({x.origin})"
            if exc.code in SHAPE_CODES:
                if x.op != "input" and x.span.line != step.span.line:
                    related = (Label(span=x.span, text=f"this makes it {fmt(x.shape)}"),)
                trace = self.trace(x)
                if len(trace) > 2:
                    notes.insert(0, "sizes so far: " + " -> ".join(trace))
            if span is not None:
                notes.insert(0, context)
        return Diagnostic(code=exc.code, message=exc.message, span=span or step.span,
                          label=context if span is None else "", notes=tuple(notes),
                          help=exc.help, related=related)

    def trace(self, x: Tensor, limit: int = 8) -> list[str]:
        """Sizes along first inputs back to the network input: 32x32 -> 16x16 -> ..."""
        shapes = [x.shape]
        node = self.by_name.get(x.name)
        while node is not None and len(shapes) < 64:
            shapes.append(node.in_shapes[0])
            node = self.by_name.get(node.inputs[0])
        sizes = [f"{s[1]}x{s[2]}" if len(s) == 3 else fmt(s) for s in reversed(shapes)]
        distinct = [v for i, v in enumerate(sizes) if i == 0 or v != sizes[i - 1]]
        return distinct[-limit:]

    def warning(self, w: LayerError, step, xs: list[Tensor]) -> None:
        span = self.arg_span(step, w.arg) if w.arg else None
        d = Diagnostic(code=w.code, severity="warning", message=w.message,
                       span=span or step.span, help=w.help,
                       notes=(f"the input here is {fmt(xs[0].shape)} ({xs[0].origin})",))
        self.report(d)

    @staticmethod
    def arg_span(step, arg: str) -> Span | None:
        if not isinstance(step, ast.Layer):
            return None
        for kw in step.kwargs:
            if kw.name == arg:
                return kw.span
        kind = REGISTRY.get(step.name)
        if kind is not None:
            positional = [a.name for a in kind.args if a.positional]
            if arg in positional and positional.index(arg) < len(step.args):
                return step.args[positional.index(arg)].span
        return None

    # ---- arguments --------------------------------------------------------------------

    def bind_args(self, signature: tuple[Arg, ...], step: ast.Layer, frame: Frame,
                  what: str) -> tuple[dict, dict, dict]:
        """Match a call's arguments to a signature; evaluate and coerce each value.

        Returns the values, how derived values were computed, and the given expressions.
        """
        positional = [a for a in signature if a.positional]
        by_name = {a.name: a for a in signature}
        given: dict[str, ast.Expr] = {}
        spans: dict[str, Span] = {}
        if len(step.args) > len(positional):
            extra = step.args[len(positional)]
            raise self.fail("E-arg", _too_many_positional(what, signature, len(step.args)),
                            extra.span, label="one too many",
                            help=POSITIONAL_HABITS.get(step.name) or
                            self.signature_help(signature, what),
                            notes=(self.signature_help(signature, what),)
                            if step.name in POSITIONAL_HABITS else ())
        for arg, expr in zip(positional, step.args):
            given[arg.name], spans[arg.name] = expr, expr.span
        for kw in step.kwargs:
            if kw.name not in by_name:
                raise self.fail("E-arg", f"unknown argument `{kw.name}` for {what}",
                                kw.name_span, label="unknown argument",
                                help=argument_help(kw.name, by_name) or
                                self.signature_help(signature, what))
            if kw.name in given:
                raise self.fail("E-arg", f"argument `{kw.name}` is given twice", kw.span,
                                related=(Label(span=spans[kw.name], text="first here"),))
            given[kw.name], spans[kw.name] = kw.value, kw.span
        values, derivations = {}, {}
        table = frame.defaults.get(step.name, {}) if self.builtin(step.name) else {}
        for arg in signature:
            if arg.name in given and arg.tensor:
                values[arg.name] = self.tensor_argument(given.pop(arg.name), frame, what,
                                                        arg.name)
            elif arg.name in given and arg.layer:
                values[arg.name] = self.layer_argument(given.pop(arg.name), frame)
            elif arg.name in table and arg.name not in given:  # `defaults` said so earlier
                values[arg.name] = table[arg.name]
            elif arg.name in given:
                expr = given[arg.name]
                raw = self.eval(expr, frame.params)
                values[arg.name] = self.coerce(arg.coerce, raw, expr.span,
                                               f"{what} argument `{arg.name}`", frame.params)
                if _is_derived(expr, frame.params):
                    derivations[arg.name] = explain(expr, frame.params, raw)
            elif arg.default is REQUIRED:
                raise self.fail("E-arg", f"{what} needs `{arg.name}`", step.span,
                                label=f"`{arg.name}` missing",
                                help=self.signature_help(signature, what))
            else:
                values[arg.name] = arg.default
        exprs = {k: inline(e, frame.lets) for k, e in given.items()
                 if not isinstance(values[k], str)}
        return values, derivations, exprs

    def tensor_argument(self, expr: ast.Expr, frame: Frame, what: str, name: str) -> Tensor:
        """`like=e1`, `skip=e3`: the named tensor (a failed one stays quiet)."""
        if not isinstance(expr, ast.Name) or expr.id not in frame.tensors:
            if isinstance(expr, ast.Name):
                self.lookup_tensor(expr.id, expr.span, frame)  # unknown tensor, did-you-mean
            raise self.fail("E-arg", f"{what} argument `{name}` takes a tensor's name",
                            expr.span, label="not a tensor",
                            help=f"e.g. `{name}=skip`, a tensor named earlier")
        tensor = self.lookup_tensor(expr.id, expr.span, frame)
        if tensor.shape is None:
            raise _StatementError()
        return tensor

    def layer_argument(self, expr: ast.Expr, frame: Frame) -> LayerValue:
        """`act=hardswish`, `act=leaky_relu(0.2)`: a layer (or block) and its arguments,
        bound later in this frame."""
        if isinstance(expr, ast.Name):
            name, args, kwargs, call = expr.id, (), (), False
        elif isinstance(expr, ast.Func):
            name, args, kwargs, call = expr.name, expr.args, expr.kwargs, True
        else:
            raise self.fail("E-arg", "expected a layer, e.g. `relu` or `leaky_relu(0.2)`",
                            expr.span)
        value = frame.params.get(name)
        if isinstance(value, LayerValue) and not call:  # passed on from an outer block
            return value
        if name not in REGISTRY and getattr(self.definitions.get(name), "kind", None) \
                != "block":
            blocks = [d.name for d in self.definitions.values() if d.kind == "block"]
            raise self.fail("E-name", f"unknown layer `{name}`", expr.span,
                            help=layer_help(name, [*REGISTRY, *blocks], REGISTRY))
        return LayerValue(name, args, kwargs, call, expr.span, frame.params, frame.lets)

    def signature_help(self, signature: tuple[Arg, ...], what: str) -> str:
        def default(arg: Arg) -> str:
            if arg.default is _LATER:  # a block parameter: its default as written
                param = next(p for p in self.definitions[name].params if p.name == arg.name)
                return render_expr(param.default, {})
            if arg.default is None:  # given or computed (`like=`, `weight=`)
                return arg.shown or "…"
            return describe(short(arg.default))
        name = what.split("`")[1]
        parts = [a.name if a.default is REQUIRED else f"{a.name}={default(a)}"
                 for a in signature]
        return f"{name}({', '.join(parts)})"

    # ---- blocks -------------------------------------------------------------------

    def block_signature(self, defn: ast.Definition) -> tuple[Arg, ...]:
        """Defaults are expressions evaluated at each call (`_LATER`), not values."""
        for p in defn.params:
            if p.type == "tensor" and p.default is not None:
                raise CnnError([Diagnostic(code="E-param", message=f"tensor parameter "
                                           f"`{p.name}` takes no default", span=p.span,
                                           help="the caller names the tensor: `skip=e1`")])
        return tuple(Arg(p.name, self.param_type(p, block=True),
                         REQUIRED if p.default is None else _LATER,
                         tensor=p.type == "tensor", layer=p.type == "layer")
                     for p in defn.params)

    def call_block(self, defn: ast.Definition, step: ast.Layer, x: Tensor | None, frame: Frame,
                   name: str | None = None, several: int | None = None):
        x = self.need_input(x, step.span)
        if defn.name in frame.blocks:
            raise self.fail("E-recursion", f"block `{defn.name}` calls itself", step.span,
                            notes=("calls: " + " -> ".join((*frame.blocks, defn.name)),),
                            help="blocks cannot be recursive; use `* N` to repeat")
        if len(frame.blocks) >= MAX_BLOCK_DEPTH:
            raise self.fail("E-limit", f"block calls nested more than {MAX_BLOCK_DEPTH} deep",
                            step.span, notes=("calls: " + " -> ".join(frame.blocks[-4:]) +
                                              f" -> {defn.name}",))
        if x.shape is None:  # its producer failed and said so: nothing more to say here
            raise _StatementError()
        channels = {"in_channels": x.shape[0]}
        values, exprs = self.bind_block_args(defn, step, frame, channels)
        tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}  # `skip=e1`
        values = {**{k: v for k, v in values.items() if k not in tensors}, **channels}
        arg_syms = {**exprs, "in_channels": x.sym}
        local = self.local_name(step, defn.name, frame, name)
        path = frame.path + (local,)
        inner = Frame(dict(values), path, blocks=frame.blocks + (defn.name,),
                      defaults=dict(frame.defaults))  # a block sees its caller's defaults
        inner.tensors.update({k: replace(t, sym=None) for k, t in tensors.items()})
        entry = Tensor(x.name, x.shape, x.span, x.op, ast.Name("in_channels", step.span))
        outputs: list[str] = []
        self.calls.append((defn.name, step.span))
        try:
            result = self.statements(defn.body, entry, inner, outputs=outputs,
                                     block_input=entry)
            self.warn_unused(inner, outputs)
        finally:
            self.calls.pop()
        if len(outputs) > 1 and several != len(outputs) or several and len(outputs) <= 1:
            declared = next((st for st in defn.body if isinstance(st, ast.Output)), None)
            raise self.fail("E-block", f"block `{defn.name}` has {max(1, len(outputs))} "
                            f"output{'s' if len(outputs) > 1 else ''}; "
                            + (f"{several} names take them" if several else
                               "a step of a chain passes one tensor on"), step.span,
                            related=(Label(span=declared.span, text="its outputs"),)
                            if declared else (),
                            help=f"name each: `{_names_for(len(outputs))} = x -> "
                            f"{defn.name}(...)`" if len(outputs) > 1 else
                            "give the block as many outputs as there are names")
        found = [next(t for t in inner.tensors.values() if t.name == o) for o in outputs]
        if found:
            result = found[0]
        self.scopes.append(Scope(path=path, block=defn.name, args=values, span=step.span,
                                 inputs=(x.name, *(t.name for t in tensors.values())),
                                 output=result.name if result else "",
                                 outputs=tuple(outputs), arg_syms=arg_syms))
        if several:
            return [Tensor(t.name, t.shape, step.span, defn.name) for t in found]
        result = result or entry
        mapping = {**{k: e for k, e in arg_syms.items() if e is not None},
                   **{k: ast.Num(v, step.span) for k, v in values.items()
                      if k not in arg_syms and isinstance(v, (int, float))}}
        return Tensor(result.name, result.shape, step.span, defn.name,
                      bounded(substitute(result.sym, mapping)))

    def bind_block_args(self, defn, step, frame, channels) -> tuple[dict, dict]:
        """Block defaults are expressions over earlier parameters and `in_channels`."""
        signature = self.block_signature(defn)
        values, _, exprs = self.bind_args(signature, step, frame, f"block `{defn.name}`")
        for arg, param in zip(signature, defn.params):
            if values[arg.name] is not _LATER:
                continue
            if arg.layer:  # `act: layer = relu`: bound in the block's own terms
                values[arg.name] = self.layer_argument(
                    param.default, Frame({**channels, **values}))
                continue
            raw = self.eval(param.default, {**channels, **values})
            values[arg.name] = self.coerce(arg.coerce, raw, param.default.span,
                                           f"parameter `{param.name}`")
        return values, exprs

    # ---- residual and branch --------------------------------------------------------

    def residual(self, step: ast.Residual, x: Tensor, frame: Frame) -> Tensor:
        options, _, _ = self.bind_args(RESIDUAL_ARGS, ast.Layer(
            "residual", (), step.kwargs, True, None, step.span, step.span), frame, "`residual`")
        body = self.statements(step.body, x, frame)
        if body is None or body.shape is None or x.shape is None:
            raise _StatementError()
        if body.shape != x.shape and not options["project"] and step.shortcut is None:
            self.residual_adds_nothing(step, body, x, frame)
            return body  # MobileNet v2 / MBConv: a shortcut only where the shapes agree
        self.residuals_that_add.add(step.span)
        if step.shortcut is not None:
            shortcut = self.statements(step.shortcut, x, frame.with_prefix("shortcut_"))
            if shortcut is None or shortcut.shape is None:
                raise _StatementError()
            if shortcut.shape != body.shape:
                raise self.fail(
                    "E-residual", f"the residual body gives {fmt(body.shape)} but the shortcut "
                    f"gives {fmt(shortcut.shape)}", step.span, label="these cannot be added",
                    related=(Label(span=body.span, text=f"the body gives {fmt(body.shape)}"),
                             Label(span=step.shortcut[-1].span,
                                   text=f"the shortcut gives {fmt(shortcut.shape)}")),
                    notes=(f"the input is {fmt(x.shape)}",),
                    help="make the body keep the shape, or project in the shortcut "
                    "(e.g. `shortcut { conv(C, 1, stride=S) -> batchnorm }`)")
        elif body.shape == x.shape:
            shortcut = x
        else:
            shortcut = self.projection(x, body, step, frame.with_prefix("shortcut_"))
        return self.emit(REGISTRY["add"], {}, [body, shortcut],
                         frame.path + (self.auto_name("add", frame),), step)

    def residual_adds_nothing(self, step: ast.Residual, body: Tensor, x: Tensor,
                              frame: Frame) -> None:
        """W-residual: in a network at once; in a block once no call of it adds (MBConv's
        calls add where the shapes agree and not elsewhere, by design: the standard
        library's blocks are left alone)."""
        d = Diagnostic(code="W-residual", severity="warning", message="this residual adds "
                       f"nothing: the body gives {fmt(body.shape)}, the input is "
                       f"{fmt(x.shape)}", span=step.span,
                       label="project=false and the shapes differ",
                       help="drop `project=false` for a 1x1 projection, keep the body's shape, "
                       "or drop the residual")
        if not frame.blocks:
            self.report(d)
        elif not step.span.file.startswith("<stdlib>"):
            block = frame.blocks[-1]
            d = d.model_copy(update={"message": f"this residual adds nothing in any call of "
                                     f"`{block}`: the body gives {fmt(body.shape)}, the input "
                                     f"is {fmt(x.shape)} (first call)"})
            self.residuals_never_adding.setdefault(step.span, self.from_user_file(d))

    def report_residuals_never_adding(self) -> None:
        for span, d in self.residuals_never_adding.items():
            if span not in self.residuals_that_add:
                self.warnings.append(d)

    def projection(self, x: Tensor, body: Tensor, step, frame: Frame) -> Tensor:
        """The automatic shortcut: 1x1 conv (stride to match) + batchnorm."""
        if len(x.shape) != 3 or len(body.shape) != 3:
            raise self.fail("E-residual", f"cannot project {fmt(x.shape)} to "
                            f"{fmt(body.shape)} automatically", step.span,
                            help="write the shortcut explicitly with `shortcut { ... }`")
        strides = []
        for n, m in zip(x.shape[1:], body.shape[1:]):
            s = next((s for s in range(1, n + 1) if (n - 1) // s + 1 == m), None)
            if s is None:
                raise self.fail("E-residual", f"the residual body turns {fmt(x.shape)} into "
                                f"{fmt(body.shape)}: no strided 1x1 projection matches",
                                step.span, help="write the shortcut with `shortcut { ... }`")
            strides.append(s)
        conv = {**REGISTRY["conv"].defaults(), **frame.defaults.get("conv", {}),
                "out_channels": body.shape[0], "kernel": (1, 1),
                "stride": tuple(strides), "bias": False}
        y = self.emit(REGISTRY["conv"], conv, [x], frame.path + (self.auto_name("conv", frame),),
                      step, syms={"out_channels": body.sym} if body.sym is not None else {},
                      generated=True)
        norm = {**REGISTRY["batchnorm"].defaults(), **frame.defaults.get("batchnorm", {})}
        return self.emit(REGISTRY["batchnorm"], norm, [y],
                         frame.path + (self.auto_name("batchnorm", frame),), step)

    def branch(self, step: ast.Branch, x: Tensor, frame: Frame) -> Tensor:
        if step.mode not in ("concat", "add"):
            raise self.fail("E-branch", f"unknown branch join `{step.mode}`", step.mode_span,
                            help=did_you_mean(step.mode, ("concat", "add")) or
                            "branches join by `concat` or `add`")
        outs = []
        for i, path in enumerate(step.paths, 1):
            try:
                outs.append(self.chain(path, x, frame.with_prefix(f"b{i}_")))
            except _StatementError:
                outs.append(Tensor("<error>", None, path.span, "error"))
        if len(outs) < 2:
            raise self.fail("E-branch", "a branch needs at least two paths", step.span,
                            help="put each path on its own line")
        return self.emit(REGISTRY[step.mode], {}, outs,
                         frame.path + (self.auto_name(step.mode, frame),), step)


def _call_text(step: ast.Layer) -> str:
    """A call as written: `basic(128, stride=2)`."""
    if not step.has_call:
        return step.name
    args = [render_expr(a, {}) for a in step.args]
    args += [f"{kw.name}={render_expr(kw.value, {})}" for kw in step.kwargs]
    return f"{step.name}({', '.join(args)})"


def _distinct(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """A block called several times reports a problem of its own once."""
    seen, out = set(), []
    for d in diagnostics:
        key = (d.code, d.message, d.span)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


_LATER = object()
RESIDUAL_ARGS = (Arg("project", boolean, True, positional=False),)


def default_memory_limit() -> int:
    """Half of this machine's memory (8 GiB where it cannot be read)."""
    import os
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(DEFAULT_MEMORY_FRACTION * total)


MAX_SYM_DEPTH = 24  # deeper channel expressions are written as numbers in generated code


def sym_depth(expr: Any, limit: int = MAX_SYM_DEPTH + 1) -> int:
    """Nesting depth of an expression, counted no further than `limit`."""
    if limit <= 0 or not isinstance(expr, (ast.BinOp, ast.Neg, ast.Func)):
        return 0
    parts = ((expr.left, expr.right) if isinstance(expr, ast.BinOp) else
             (expr.operand,) if isinstance(expr, ast.Neg) else expr.args)
    return 1 + max((sym_depth(p, limit - 1) for p in parts), default=0)


def bounded(expr: Any) -> Any:
    """The expression, or None once it is too deep to be worth writing (a DenseNet block
    of 10,000 layers would otherwise build `in_channels + growth + ...` 10,000 deep)."""
    return None if expr is None or sym_depth(expr) > MAX_SYM_DEPTH else expr


def out_sym(kind: LayerKind, syms: dict, xs: list[Tensor]) -> Any:
    """The output's channels as an expression of the block's parameters, where one exists."""
    if kind.channels_out is None:
        return xs[0].sym
    if kind.channels_out == "+":
        if any(t.sym is None for t in xs):
            return None
        total = xs[0].sym
        for t in xs[1:]:
            total = ast.BinOp("+", total, t.sym, t.span)
        return bounded(total)
    if kind.channels_out == "-":
        return None
    return syms.get(kind.channels_out)


def substitute(expr: Any, mapping: dict[str, Any]) -> Any:
    """Rewrite an expression of a callee's parameters into the caller's terms (or None)."""
    if expr is None:
        return None
    if isinstance(expr, ast.Name):
        return mapping.get(expr.id)
    if isinstance(expr, (ast.Num, ast.Str)):
        return expr
    if isinstance(expr, ast.BinOp):
        left, right = substitute(expr.left, mapping), substitute(expr.right, mapping)
        return None if left is None or right is None else ast.BinOp(expr.op, left, right,
                                                                      expr.span)
    if isinstance(expr, ast.Neg):
        operand = substitute(expr.operand, mapping)
        return None if operand is None else ast.Neg(operand, expr.span)
    if isinstance(expr, ast.Func):
        args = [substitute(a, mapping) for a in expr.args]
        return None if None in args else ast.Func(expr.name, tuple(args), expr.span)
    return None


def _names_for(count: int) -> str:
    return ", ".join(f"out{i + 1}" for i in range(count))


def inline(expr: Any, lets: dict[str, Any]) -> Any:
    """The expression with each `let` constant replaced by what it stands for, so that it
    is written over the block's parameters alone (generated source uses those)."""
    if not lets or expr is None:
        return expr
    if isinstance(expr, ast.Name):
        return lets.get(expr.id, expr)
    if isinstance(expr, (ast.BinOp, ast.Compare)):
        return replace(expr, left=inline(expr.left, lets), right=inline(expr.right, lets))
    if isinstance(expr, ast.BoolOp):
        return replace(expr, left=inline(expr.left, lets), right=inline(expr.right, lets))
    if isinstance(expr, ast.Neg):
        return replace(expr, operand=inline(expr.operand, lets))
    if isinstance(expr, ast.Func):
        return replace(expr, args=tuple(inline(a, lets) for a in expr.args))
    if isinstance(expr, ast.Tuple):
        return replace(expr, items=tuple(inline(i, lets) for i in expr.items))
    return expr


def explain(expr: ast.Expr, params: dict[str, Any], value: Any) -> str:
    """`divisible(32 * width, 8) = divisible(32 * 1.1, 8) = 40`: how a value was computed."""
    written, substituted = render_expr(expr, {}), render_expr(expr, params)
    steps = [written] + ([substituted] if substituted not in (written, describe(value)) else [])
    return " = ".join([*steps, describe(value)])


def _is_derived(expr: ast.Expr, params: dict[str, Any]) -> bool:
    """Whether a value was computed (worth explaining), not written as a literal."""
    if isinstance(expr, ast.Name):
        return expr.id in params
    if isinstance(expr, ast.Tuple):
        return any(_is_derived(item, params) for item in expr.items)
    if isinstance(expr, ast.Neg):  # `-1` is written, not computed
        return _is_derived(expr.operand, params)
    return not isinstance(expr, (ast.Num, ast.Str))


def _too_many_positional(what: str, signature: tuple[Arg, ...], found: int) -> str:
    count = sum(a.positional for a in signature)
    if not signature:
        return f"{what} takes no arguments, found {found}"
    if count == 0:
        return f"{what} takes keyword arguments only, found {found} positional"
    return f"{what} takes at most {count} positional argument{'s' if count != 1 else ''}, " \
        f"found {found}"


def _chain(calls) -> str:
    """Block calls as a diagnostic names them: `a` at f.cnn:3:5 -> `b` at ..."""
    return " -> ".join(f"`{name}` at {span}" for name, span in calls)
