"""Syntax tree of a .cnn file, as written (before any evaluation or checking)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .source import Span

# ---- expressions -------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / // **
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Compare:
    op: str  # == != < > <= >=
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class BoolOp:
    op: str  # and, or, not (not has right=None)
    left: Expr
    right: Expr | None
    span: Span


@dataclass(frozen=True)
class Func:
    name: str
    args: tuple[Expr, ...]
    span: Span
    kwargs: tuple[KwArg, ...] = ()  # only settings' calls take them: `sgd(lr=0.1)`


@dataclass(frozen=True)
class Tuple:
    items: tuple[Expr, ...]
    span: Span


Expr = Num | Name | Str | BinOp | Neg | Func | Tuple | Compare | BoolOp

# ---- network structure ---------------------------------------------------------


@dataclass(frozen=True)
class KwArg:
    name: str
    value: Expr
    span: Span  # covers `name=value`
    name_span: Span


@dataclass(frozen=True)
class Layer:
    """`[label:] name[(args)]`: a layer, a block call or a tensor reference."""

    name: str
    args: tuple[Expr, ...]
    kwargs: tuple[KwArg, ...]
    has_call: bool
    label: str | None
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Repeat:
    step: Layer
    count: Expr
    span: Span


@dataclass(frozen=True)
class Residual:
    body: tuple[Stmt, ...]
    shortcut: tuple[Stmt, ...] | None
    span: Span
    kwargs: tuple[KwArg, ...] = ()


@dataclass(frozen=True)
class Branch:
    mode: str
    paths: tuple[Chain, ...]
    span: Span
    mode_span: Span


@dataclass(frozen=True)
class Group:
    """`label: (a(...) -> b(...))`: steps named label.0, label.1, ... as one module."""

    label: str
    steps: tuple[Step, ...]
    span: Span


Step = Layer | Repeat | Residual | Branch | Group


@dataclass(frozen=True)
class Chain:
    steps: tuple[Step, ...]
    span: Span


@dataclass(frozen=True)
class InputDecl:
    """`input x: C x H x W` in a network; `input x` (shape inferred) names a block's input."""

    name: str
    dims: tuple[Expr, ...] | None
    span: Span


@dataclass(frozen=True)
class Output:
    names: tuple[tuple[str, Span], ...]
    span: Span


@dataclass(frozen=True)
class Assign:
    """`name = chain`, or `a, b = chain` when the chain ends in several tensors."""

    targets: tuple[tuple[str, Span], ...]
    chain: Chain
    span: Span

    @property
    def target(self) -> str:
        return self.targets[0][0]

    @property
    def target_span(self) -> Span:
        return self.targets[0][1]


@dataclass(frozen=True)
class Let:
    """`let w = expr`: a local constant, usable in later expressions."""

    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class If:
    """`if condition { ... } else { ... }`: statements under a condition."""

    condition: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] | None
    span: Span


@dataclass(frozen=True)
class Defaults:
    """`defaults batchnorm(eps=0.001)`: arguments for the layer's later calls."""

    layer: str
    args: tuple[Expr, ...]
    kwargs: tuple[KwArg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Conditional:
    """`a -> b -> c if condition`: the whole line applies only when the condition holds."""

    chain: Chain
    condition: Expr
    span: Span


Stmt = InputDecl | Output | Assign | Chain | Conditional | Let | If | Defaults

# ---- top level -------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Definition:
    """A `network` or a `block`: both are parametric bodies of statements."""

    kind: str  # "network" | "block"
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Setting:
    """`name: value` in a `train` definition; `value -> value` makes a pipeline."""

    name: str
    values: tuple[Expr, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class TrainDef:
    """`train network(args) { settings }`: how to train a network of the program."""

    network: str
    args: tuple[Expr, ...]
    kwargs: tuple[KwArg, ...]
    settings: tuple[Setting, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Import:
    path: str
    span: Span


@dataclass(frozen=True)
class Module:
    file: str
    imports: tuple[Import, ...] = ()
    definitions: tuple[Definition, ...] = field(default=())
    trains: tuple[TrainDef, ...] = ()
    defaults: tuple[Defaults, ...] = ()  # at the top of the file: for its networks
