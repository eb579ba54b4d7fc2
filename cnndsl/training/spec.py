"""The `train` definition, checked before anything runs: a frozen `TrainConfig`.

    train lenet5(classes=10) {
        optimizer: sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=5e-4)
        schedule: cosine(warmup=1)
        loss: cross_entropy(label_smoothing=0.1)
        epochs: 15
        batch: 64
        augment: random_crop(padding=2) -> rotate(10)
    }

Every setting, every choice (`sgd`, `cosine`...) and every argument is declared once in the
tables below; the checker binds them as it binds a layer's arguments, so an unknown name gets
a did-you-mean and a bad value an error at its argument. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .. import ast
from ..diagnostics import CnnError, Diagnostic, Label
from ..layers import REGISTRY, REQUIRED, Arg, LayerError, as_int, boolean, number
from ..source import Span
from ..suggest import did_you_mean
from ..values import describe, evaluate
from .images import MAX_PIXELS
from .ops import AUGMENT_OPS
from .outputs import OutputLoss, bind_loss_sum, output_names, resolve_terms


def _positive_number(value) -> float:
    x = number(value)
    if not (math.isfinite(x) and x > 0):
        raise LayerError(f"must be a positive number, found {describe(value)}", code="E-arg")
    return x


def _nonnegative_number(value) -> float:
    x = number(value)
    if not (math.isfinite(x) and x >= 0):
        raise LayerError(f"must be 0 or more, found {describe(value)}", code="E-arg")
    return x


def _fraction(value) -> float:
    x = number(value)
    if not 0 <= x < 1:
        raise LayerError(f"must be in [0, 1), found {describe(value)}", code="E-arg")
    return x


def _open_fraction(value) -> float:
    x = number(value)
    if not 0 < x < 1:
        raise LayerError(f"must be between 0 and 1, found {describe(value)}", code="E-arg")
    return x


def _positive_int(value) -> int:
    return as_int(value, 1)


def _nonnegative_int(value) -> int:
    return as_int(value, 0)


def _weights(value) -> tuple[float, ...]:
    items = value if isinstance(value, tuple) else (value,)
    return tuple(_nonnegative_number(v) for v in items)


def _betas(value) -> tuple[float, float]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise LayerError(f"expected a pair like (0.9, 0.999), found {describe(value)}",
                         code="E-arg")
    return (_fraction(value[0]), _fraction(value[1]))


def _word(*options: str):
    def coerce(value):
        if not isinstance(value, str) or value not in options:
            hint = did_you_mean(str(value), options) if isinstance(value, str) else None
            raise LayerError(f"expected one of {', '.join(options)}, found "
                             f"`{describe(value)}`", code="E-arg", help=hint)
        return str(value)
    return coerce


def _data(value) -> str:
    if not isinstance(value, str):
        raise LayerError(f"expected `digits` or a folder in quotes, found {describe(value)}",
                         code="E-arg")
    return str(value)


def _class_names(value) -> tuple[str, ...]:
    """`data_classes: (5, 6, 7)` or `("cat", "dog")`: which classes of the data to use."""
    items = value if isinstance(value, tuple) else (value,)
    names = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise LayerError(f"expected class names or numbers, found {describe(item)}",
                             code="E-arg")
        names.append(str(item))
    if len(set(names)) != len(names):
        raise LayerError("a class is listed twice", code="E-arg")
    return tuple(names)


def _mean_std(value):
    items = value if isinstance(value, tuple) else (value,)
    return tuple(number(v) for v in items)


MIN_STD = 1e-3  # a smaller `normalize` std blows inputs in 0..1 up past 1,000


def _mean(value):
    items = _mean_std(value)
    if not all(math.isfinite(v) for v in items):
        raise LayerError(f"a mean must be a finite number, found {describe(value)}",
                         code="E-arg")
    return items


def _std(value):
    items = _mean_std(value)
    if any(not (math.isfinite(v) and v >= MIN_STD) for v in items):
        raise LayerError(f"a standard deviation must be at least {MIN_STD:g} (inputs are in "
                         f"0..1), found {describe(value)}", code="E-arg")
    return items


def _probability(value) -> float:
    x = number(value)
    if not 0 <= x <= 1:
        raise LayerError(f"must be a probability in [0, 1], found {describe(value)}",
                         code="E-arg")
    return x


def _hue(value) -> float:
    x = number(value)
    if not 0 <= x <= 0.5:
        raise LayerError(f"must be in [0, 0.5] (a fraction of the colour wheel either way), "
                         f"found {describe(value)}", code="E-arg")
    return x


def _degrees(value) -> float:
    x = _nonnegative_number(value)
    if x > 360:
        raise LayerError(f"must be at most 360 (a rotation of -d..d degrees), found "
                         f"{describe(value)}", code="E-arg")
    return x


AUGMENT_COERCE = {("random_crop", "padding"): _nonnegative_int, ("flip", "p"): _probability,
                  ("rotate", "degrees"): _degrees, ("scale", "low"): _positive_number,
                  ("scale", "high"): _positive_number, ("color_jitter", "hue"): _hue,
                  ("normalize", "mean"): _mean, ("normalize", "std"): _std}


# ---- the tables: setting -> its choices -> their arguments ----------------------------

LOSSES: dict[str, tuple[Arg, ...]] = {
    "cross_entropy": (Arg("label_smoothing", _fraction, 0.0, positional=False),
                      Arg("weights", _weights, None, positional=False)),
    "nll": (Arg("weights", _weights, None, positional=False),),
    "bce_with_logits": (Arg("pos_weight", _positive_number, None, positional=False),),
    "mse": (),
    # segmentation: per-pixel losses over the classes' channels
    "dice": (Arg("smooth", _nonnegative_number, 1.0, positional=False),),
    "focal": (Arg("gamma", _nonnegative_number, 2.0, positional=False),
              Arg("weights", _weights, None, positional=False)),
    # detection: YOLOv8's loss, its three terms' gains (Ultralytics' defaults)
    "detect": (Arg("box", _nonnegative_number, 7.5, positional=False),
               Arg("cls", _nonnegative_number, 0.5, positional=False),
               Arg("dfl", _nonnegative_number, 1.5, positional=False)),
}
OPTIMIZERS: dict[str, tuple[Arg, ...]] = {
    "sgd": (Arg("lr", _positive_number, 0.01), Arg("momentum", _fraction, 0.0, False),
            Arg("nesterov", boolean, False, False),
            Arg("weight_decay", _nonnegative_number, 0.0, False)),
    "adam": (Arg("lr", _positive_number, 0.001), Arg("betas", _betas, (0.9, 0.999), False),
             Arg("eps", _positive_number, 1e-8, False),
             Arg("weight_decay", _nonnegative_number, 0.0, False)),
    "adamw": (Arg("lr", _positive_number, 0.001), Arg("betas", _betas, (0.9, 0.999), False),
              Arg("eps", _positive_number, 1e-8, False),
              Arg("weight_decay", _nonnegative_number, 0.01, False)),
    "rmsprop": (Arg("lr", _positive_number, 0.01), Arg("alpha", _fraction, 0.99, False),
                Arg("momentum", _fraction, 0.0, False), Arg("eps", _positive_number, 1e-8, False),
                Arg("weight_decay", _nonnegative_number, 0.0, False)),
}
SCHEDULES: dict[str, tuple[Arg, ...]] = {
    "constant": (Arg("warmup", _nonnegative_int, 0, False),),
    "step": (Arg("every", _positive_int, REQUIRED), Arg("gamma", _open_fraction, 0.1, False),
             Arg("warmup", _nonnegative_int, 0, False)),
    "cosine": (Arg("warmup", _nonnegative_int, 0, False),
               Arg("min_lr", _nonnegative_number, 0.0, False)),
    "one_cycle": (Arg("max_lr", _positive_number, None, False),
                  Arg("pct_start", _open_fraction, 0.3, False)),
}
EARLY_STOP = (Arg("patience", _positive_int, REQUIRED),
              Arg("metric", _word("val_loss", "val_accuracy", "val_miou", "val_map",
                                   "val_map50"), None, False),
              Arg("min_delta", _nonnegative_number, 0.0, False))
# an exponential moving average of the weights (Ultralytics' ModelEMA): its decay ramps up
# as decay * (1 - exp(-steps / tau)), so the first steps' weights are soon forgotten
EMA = (Arg("decay", _open_fraction, REQUIRED), Arg("tau", _positive_number, 2000.0, False))
AUGMENT: dict[str, tuple[Arg, ...]] = {
    name: tuple(Arg(a, AUGMENT_COERCE.get((name, a), _nonnegative_number), d)
                for a, d in args.items())
    for name, args in AUGMENT_OPS.items()
}

# scalar settings: name -> (coerce, default)
SCALARS: dict[str, tuple[Any, Any]] = {
    "epochs": (_positive_int, 10),
    "batch": (_positive_int, 64),
    "seed": (_nonnegative_int, 0),
    "clip": (_positive_number, None),
    "val_split": (_open_fraction, 0.2),
    "data": (_data, None),
    "amp": (_word("none", "bf16", "fp16"), "none"),
    "channels_last": (boolean, False),
    "data_classes": (_class_names, None),
    "unfreeze_after": (_nonnegative_int, None),
    "backbone_lr_scale": (_positive_number, 1.0),
    "task": (_word("classify", "segment", "detect"), None),  # None: inferred from the network
    "ignore_index": (_nonnegative_int, 255),  # mask pixels no loss or metric counts
    "workers": (_nonnegative_int, None),  # DataLoader processes; None: by the machine
    "cache": (_word("auto", "memory", "none"), "auto"),  # decoded images held in memory
    "max_image_pixels": (_positive_int, MAX_PIXELS),  # larger images are skipped, not decoded
}
# settings that name layers of the network: `freeze: (layer1, layer2)`,
# `freeze: all_except(fc)`, `reinit: fc`; checked against the network by check_layers
LAYER_SETTINGS = ("freeze", "reinit")
CALLS = {"loss": LOSSES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
DEFAULT_CALLS = {"loss": "cross_entropy", "optimizer": "adam", "schedule": "constant"}
SETTINGS = (*SCALARS, *CALLS, "early_stop", "ema", "augment", *LAYER_SETTINGS)
ARG_SETTINGS = {"early_stop": EARLY_STOP, "ema": EMA}  # `name: first` or `name(first, ...)`


class Choice(BaseModel):
    """A setting's choice with its bound arguments: `sgd(lr=0.1, momentum=0.9, ...)`."""

    model_config = ConfigDict(frozen=True)

    name: str
    args: dict[str, Any]
    # where each argument was written, for errors found later (not part of the setting)
    spans: dict[str, Span] = Field(default_factory=dict, exclude=True)

    def at(self, arg: str, default: Span | None = None) -> Span | None:
        return self.spans.get(arg, default)


class Layers(BaseModel):
    """Layers named by a setting: these (names or prefixes: `layer1`, `"layer3.0"`), or,
    with `all_except`, every other layer with weights."""

    model_config = ConfigDict(frozen=True)

    names: tuple[str, ...]
    all_except: bool = False
    spans: tuple[Span, ...] = ()  # where each name was written, for errors

    def describe(self) -> str:
        names = ", ".join(self.names)
        return f"all_except({names})" if self.all_except else names


class TrainConfig(BaseModel):
    """Everything `cnndsl train` needs besides the network and the data."""

    model_config = ConfigDict(frozen=True)

    network: str
    network_args: dict[str, Any] = {}
    epochs: int = 10
    batch: int = 64
    seed: int = 0
    clip: float | None = None
    val_split: float = 0.2
    data: str | None = None
    amp: str = "none"
    channels_last: bool = False
    loss: Choice = Choice(name="cross_entropy", args={"label_smoothing": 0.0, "weights": None})
    optimizer: Choice = Choice(name="adam", args={"lr": 0.001, "betas": (0.9, 0.999),
                                                  "eps": 1e-8, "weight_decay": 0.0})
    schedule: Choice = Choice(name="constant", args={"warmup": 0})
    early_stop: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None  # {decay, tau}: evaluate and save averaged weights
    augment: tuple[Choice, ...] = ()
    data_classes: tuple[str, ...] | None = None
    freeze: Layers | None = None
    unfreeze_after: int | None = None  # epochs after which the frozen layers train
    backbone_lr_scale: float = 1.0  # the frozen layers' learning rate, once they train
    reinit: Layers | None = None  # layers initialised afresh when --weights are loaded
    task: str | None = None  # classify | segment | detect; set from the network by tasks.resolve
    ignore_index: int = 255
    workers: int | None = None
    cache: str = "auto"
    max_image_pixels: int = MAX_PIXELS
    # the loss terms, each with its weight and the output it applies to (`loss:
    # cross_entropy(fc) + 0.3 * cross_entropy(aux1)`, or a sum on the one output, `loss:
    # cross_entropy + 0.5 * dice`), the main one first; empty: `loss` on the first output
    losses: tuple[OutputLoss, ...] = ()
    spans: dict[str, Span] = {}  # setting -> where it was written, for later errors

    @property
    def summed_losses(self) -> tuple[OutputLoss, ...]:
        """The loss as weighted terms (one term of weight 1 on the first output for a plain
        `loss: ...`)."""
        return self.losses or (OutputLoss(output=None, loss=self.loss),)

    def describe(self) -> str:
        def call(c: Choice) -> str:
            args = ", ".join(f"{k}={describe(v)}" for k, v in c.args.items() if v is not None)
            return f"{c.name}({args})"
        loss = " + ".join(t.describe() for t in self.losses) if self.losses else \
            call(self.loss)
        parts = [f"epochs {self.epochs}", f"batch {self.batch}", call(self.optimizer), loss,
                 f"schedule {call(self.schedule)}", f"seed {self.seed}"]
        if self.ema:
            parts.append(f"ema(decay={describe(self.ema['decay'])}, "
                         f"tau={describe(self.ema['tau'])})")
        if self.augment:
            parts.append("augment " + " -> ".join(call(a) for a in self.augment))
        if self.freeze is not None:
            after = (f", training from epoch {self.unfreeze_after + 1} at "
                     f"{self.backbone_lr_scale:g} x lr" if self.unfreeze_after is not None
                     else "")
            parts.append(f"frozen {self.freeze.describe()}{after}")
        return ", ".join(parts)


class Overrides(dict):
    """Settings given from outside the spec (`--set epochs=3`, `fit(epochs=3)`); `spans`
    says where each was written (on the command line), for errors."""

    def __init__(self, *args, spans: dict[str, Span] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.spans = dict(spans or {})

    def merged(self, other: dict | None) -> Overrides:
        """These, then `other` on top."""
        return Overrides({**self, **(other or {})},
                         spans={**self.spans, **getattr(other, "spans", {})})


@dataclass
class _Errors:
    items: list[Diagnostic]

    def add(self, code: str, message: str, span: Span | None, **kw) -> None:
        self.items.append(Diagnostic(code=code, message=message, span=span, **kw))


def check_train(defn: ast.TrainDef | None, network: str, params: dict[str, Any],
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Bind a `train` definition (or the defaults, when None) and CLI overrides.

    `params` are the network's parameter values, usable in settings' expressions;
    `overrides` map a setting (`epochs`) or a setting's argument (`optimizer.lr`) to a value.
    Raises CnnError with every problem located."""
    errors = _Errors([])
    values: dict[str, Any] = {"network": network}
    spans: dict[str, Span] = {}
    if defn is not None:
        seen: dict[str, Span] = {}
        for setting in defn.settings:
            if setting.name in seen:
                errors.add("E-train", f"`{setting.name}` is set twice", setting.name_span,
                           related=(Label(span=seen[setting.name], text="first here"),))
                continue
            seen[setting.name] = setting.name_span
            try:
                value = _bind_setting(setting, params)
                values[setting.name] = value
                spans[setting.name] = setting.span
            except CnnError as exc:
                errors.items.extend(exc.diagnostics)
    if isinstance(values.get("loss"), tuple):  # the loss terms, per output
        terms = values.pop("loss")
        values["loss"] = terms[0].loss
        if len(terms) > 1 or terms[0].output is not None:
            values["losses"] = terms
    where = getattr(overrides, "spans", {})  # each --set on the command line
    for key, value in (overrides or {}).items():
        try:
            _override(values, key, value)
            if key in where:  # later errors about this setting point at the --set
                spans[key.partition(".")[0]] = where[key]
        except (LayerError, CnnError) as exc:
            for message, help in ([(exc.message, exc.help)] if isinstance(exc, LayerError)
                                  else [(d.message, d.help) for d in exc.diagnostics]):
                errors.add("E-train", f"--set {key}={describe(value)}: {message}",
                           where.get(key), help=help)
    if errors.items:
        raise CnnError(errors.items)
    if values.get("losses") and values.get("loss") is not values["losses"][0].loss:
        first, *rest = values["losses"]  # `--set loss=...`: the main output's loss
        values["losses"] = (first.model_copy(update={"loss": values["loss"],
                                                     "span": spans.get("loss", first.span)}),
                            *rest)
    for name, default in DEFAULT_CALLS.items():
        if name not in values:
            values[name] = _bind_call(ast.Name(default, _NOWHERE), CALLS[name], name, {})
    return TrainConfig(**values, spans=spans)


_NOWHERE = Span(file="<defaults>", line=1, column=1, end_line=1, end_column=1)


def _bind_setting(setting: ast.Setting, params: dict[str, Any]) -> Any:
    name = setting.name
    if name not in SETTINGS:
        owner = next((f"{kind}: {choice}({name}=...)" for kind, table in CALLS.items()
                      for choice, args in table.items() if name in {a.name for a in args}),
                     None)
        raise CnnError([Diagnostic(
            code="E-train", message=f"unknown setting `{name}`", span=setting.name_span,
            label="not a training setting", help=did_you_mean(name, SETTINGS) or
            (f"`{name}` is an argument: `{owner}`" if owner else
             "settings: " + ", ".join(SETTINGS)))])
    if name != "augment" and len(setting.values) > 1:
        raise CnnError([Diagnostic(code="E-train", message=f"`{name}` takes one value, not a "
                                   "`->` pipeline", span=setting.values[1].span)])
    if name == "augment":
        return tuple(_bind_call(v, AUGMENT, "augmentation", params) for v in setting.values)
    if name in LAYER_SETTINGS:
        return _bind_layers(setting.values[0], name)
    if name == "loss":  # one loss, or a weighted sum of losses on named outputs
        return bind_loss_sum(setting.values[0], params,
                             lambda call: _bind_call(call, LOSSES, "loss", params), LOSSES)
    if name in CALLS:
        return _bind_call(setting.values[0], CALLS[name], name, params)
    if name in ARG_SETTINGS:
        value = setting.values[0]
        if not isinstance(value, ast.Func):  # `early_stop: 5` is the patience
            value = ast.Func(name, (value,), value.span)
        return _bind_args(value, ARG_SETTINGS[name], name, params)
    coerce = SCALARS[name][0]
    expr = setting.values[0]
    return _coerce(coerce, evaluate(expr, params), expr.span, f"`{name}`")


def _bind_layers(expr: ast.Expr, setting: str) -> Layers:
    """`fc`, `"layer3.0"`, `(layer1, layer2)` or `all_except(fc)`: names, not values."""
    all_except = isinstance(expr, ast.Func) and expr.name == "all_except"
    if all_except:
        if expr.kwargs or not expr.args:
            raise CnnError([Diagnostic(code="E-train", message="`all_except` takes the names "
                                       "of the layers that stay trainable", span=expr.span)])
        items = expr.args
    else:
        items = expr.items if isinstance(expr, ast.Tuple) else (expr,)
    names = []
    for item in items:
        if isinstance(item, ast.Name):
            names.append(item.id)
        elif isinstance(item, ast.Str):
            names.append(item.value)
        else:
            raise CnnError([Diagnostic(
                code="E-train", message=f"`{setting}` takes layer or block names",
                span=item.span, help=f"e.g. `{setting}: (layer1, layer2)`, `{setting}: "
                "\"layer3.0\"`" + (", or `freeze: all_except(fc)`" if setting == "freeze"
                                     else ""))])
    return Layers(names=tuple(names), all_except=all_except,
                  spans=tuple(item.span for item in items))


def _bind_call(expr: ast.Expr, table: dict[str, tuple[Arg, ...]], what: str,
               params: dict[str, Any]) -> Choice:
    """`sgd(lr=0.1)` or a bare `sgd` against the table of choices for one setting."""
    if isinstance(expr, ast.Name):
        expr = ast.Func(expr.id, (), expr.span)
    if not isinstance(expr, ast.Func):
        raise CnnError([Diagnostic(
            code="E-train", message=f"expected a {what} such as "
            f"`{next(iter(table))}(...)`", span=expr.span,
            help=f"{_plural(what)}: " + ", ".join(table))])
    if expr.name not in table:
        raise CnnError([Diagnostic(
            code="E-train", message=f"unknown {what} `{expr.name}`", span=expr.span,
            label=f"not a {what}", help=did_you_mean(expr.name, table) or
            f"{_plural(what)}: " + ", ".join(table))])
    signature = table[expr.name]
    spans = {a.name: e.span for a, e in zip([a for a in signature if a.positional], expr.args)}
    spans.update({kw.name: kw.span for kw in expr.kwargs})
    return Choice(name=expr.name, args=_bind_args(expr, signature, expr.name, params),
                  spans={"": expr.span, **spans})


def _bind_args(call: ast.Func, signature: tuple[Arg, ...], what: str,
               params: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments against a signature, bound exactly as a layer's are."""
    from ..checker import Checker, Frame, _StatementError
    step = ast.Layer(name=what, args=call.args, kwargs=call.kwargs, has_call=True, label=None,
                     span=call.span, name_span=call.span)
    checker = Checker({})
    try:
        values, _, _ = checker.bind_args(signature, step, Frame(params), f"`{what}`")
    except _StatementError:
        raise CnnError(checker.errors) from None
    return values


def _plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def _signature(what: str, signature: tuple[Arg, ...]) -> str:
    parts = [a.name if a.default is REQUIRED else f"{a.name}={describe(a.default)}"
             for a in signature]
    return f"{what}({', '.join(parts)})"


def _coerce(coerce, value, span: Span, what: str):
    try:
        return coerce(value)
    except LayerError as exc:
        raise CnnError([Diagnostic(code="E-arg", message=f"{what}: {exc.message}", span=span,
                                   help=exc.help)]) from None


def _override(values: dict[str, Any], key: str, value: Any) -> None:
    """`epochs=3`, `optimizer.lr=0.1`, `optimizer=sgd` from the command line."""
    setting, _, arg = key.partition(".")
    terms = values.get("losses") or ()
    if setting == "loss" and len(terms) > 1 and terms[0].output is None:
        if arg:  # a sum on the one output
            raise LayerError("the loss is a sum of losses: write its arguments in the spec")
        values.pop("losses")
    if setting in LAYER_SETTINGS and not arg:
        values[setting] = value if isinstance(value, Layers) else Layers(
            names=tuple(str(v) for v in (value if isinstance(value, tuple) else (value,))))
        return
    if setting == "ema" and not arg:  # `--set ema=0.999`: the decay, tau as it was
        current = dict(values.get("ema") or {a.name: a.default for a in EMA})
        values["ema"] = {**current, "decay": EMA[0].coerce(value)}
        return
    if setting not in SETTINGS or setting in ("augment", "early_stop") and not arg:
        raise LayerError(f"no training setting `{setting}`",
                         help=did_you_mean(setting, SETTINGS) or "settings: " +
                         ", ".join(SETTINGS))
    if setting in SCALARS and not arg:
        values[setting] = SCALARS[setting][0](value)
        return
    if setting in ARG_SETTINGS:
        current = dict(values.get(setting) or {a.name: a.default
                                                for a in ARG_SETTINGS[setting]})
        table = ARG_SETTINGS
        name = setting
    else:
        table = CALLS.get(setting)
        if table is None:
            raise LayerError(f"`{setting}` has no argument `{arg}`")
        if not arg:  # a new choice with its defaults
            values[setting] = _bind_call(ast.Name(str(value), _NOWHERE), table, setting, {})
            return
        choice = values.get(setting) or _bind_call(ast.Name(DEFAULT_CALLS[setting], _NOWHERE),
                                                  table, setting, {})
        current, name = dict(choice.args), choice.name
    signature = {a.name: a for a in table[name]}
    if arg not in signature:
        raise LayerError(f"`{name}` has no argument `{arg}`",
                         help=did_you_mean(arg, signature) or _signature(name, table[name]))
    current[arg] = signature[arg].coerce(value)
    missing = [k for k, v in current.items() if v is REQUIRED]
    if missing:
        raise LayerError(f"`{setting}` is off: give its `{missing[0]}` too (`--set "
                         f"{setting}.{missing[0]}=...`)")
    values[setting] = current if setting in ARG_SETTINGS else Choice(
        name=name, args=current, spans={k: v for k, v in choice.spans.items() if k != arg})


# ---- the loss against the network's output --------------------------------------------


def check_loss_fits(config: TrainConfig, ir) -> TrainConfig:
    """Each loss must fit the output it applies to (one score per class), known statically.
    Returns the config with each loss term's output resolved."""
    loss_span = config.spans.get("loss")
    terms = resolve_terms(config.losses, ir, loss_span)
    for term in terms or (OutputLoss(output=None, loss=config.loss),):
        if term.weight > 0:  # `0 * loss(x)`: x trains without a loss
            _check_fits(term.loss.name, ir, ir.outputs[term.index], term.span or loss_span,
                        output_names(ir)[term.index] if len(ir.outputs) > 1 else None)
    return config.model_copy(update={"losses": terms})


def _check_fits(loss: str, ir, name: str, loss_span: Span | None,
                output: str | None) -> None:
    shape = ir.shape_of(name)
    node = _node(ir, name)
    span = node.span if node is not None else None
    where = {"span": loss_span or span,
             "related": (Label(span=span, text="the output"),) if span and loss_span else ()}
    gives = f"`{output}` gives" if output else "the network gives"
    if len(shape) != 1:
        raise CnnError([Diagnostic(
            code="E-train", message=f"{loss} needs one score per class; {gives} "
            f"{' x '.join(map(str, shape))}", **where,
            help="end the network with `flatten -> linear(classes)`")])
    last_op = node.op if node is not None else None
    scores = REGISTRY[last_op].scores if node is not None else None
    if loss == "nll" and scores != "log-probabilities":
        raise CnnError([Diagnostic(
            code="E-train", message="`nll` takes log-probabilities: end the network with "
            "`log_softmax`", **where, help="or use `loss: cross_entropy` on raw scores")])
    if loss in ("cross_entropy", "bce_with_logits") and scores is not None:
        ends = f"`{output}` ends" if output else "the network ends"
        raise CnnError([Diagnostic(
            code="E-train", message=f"`{loss}` takes raw scores but {ends} with "
            f"`{last_op}`", **where, help=f"drop the final {last_op} (the loss applies it)"
            + (", or use `loss: nll`" if scores == "log-probabilities" else ""))])


def check_classes(config: TrainConfig, ir, classes: int) -> TrainConfig:
    """Every output with a loss gives one score per class of the data; else an error at
    the layer that fixes the count, with the parameter it came from. Returns the config
    with its loss terms resolved."""
    config = check_loss_fits(config, ir)
    named = len({t.index for t in config.summed_losses}) > 1
    for position, term in enumerate(config.summed_losses):
        # an output weighted 0 trains without its loss; but the first term's output is the
        # one accuracy and the metrics are measured on
        if term.weight != 0 or position == 0:
            check_count(ir, classes, term.index, f"`{term.output}`" if named else None)
    return config


def check_count(ir, classes: int, index: int = 0, output: str | None = None) -> None:
    """An output's channels (its scores, or its score maps) number the classes."""
    name = ir.outputs[index]
    outputs = ir.shape_of(name)[0]
    if outputs == classes:
        return
    producer = _producer(ir, name)
    param = _parameter_behind(ir, producer)
    hint = f"--set {param}={classes}" if param else f"give it {classes} outputs"
    raise CnnError([Diagnostic(
        code="E-train", message=f"the data has {classes} classes but "
        f"{output or 'the network'} gives {outputs} outputs",
        span=producer.span if producer else None,
        label=f"{outputs} outputs", help=f"{hint}, or train on data with {outputs} classes")])


def _node(ir, name: str):
    try:
        return ir.node(name)
    except KeyError:  # a network input
        return None


def _producer(ir, name: str):
    """The layer that fixes the output's size: the last one that sets features/channels."""
    node = _node(ir, name)
    while node is not None and REGISTRY[node.op].channels_out not in ("out_features",
                                                                      "out_channels"):
        node = _node(ir, node.inputs[0])
    return node


def _parameter_behind(ir, node) -> str | None:
    """The network parameter an output size was written with (`linear(classes)`)."""
    if node is None or "out_features" not in node.derivations and \
            "out_channels" not in node.derivations:
        return None
    how = node.derivations.get("out_features") or node.derivations["out_channels"]
    written = how.split(" = ")[0]
    words = set(written.replace("(", " ").replace(")", " ").replace(",", " ").split())
    return next((p for p in ir.params if p in words), None)


# ---- settings that name layers ---------------------------------------------------------


def check_layers(config: TrainConfig, ir) -> None:
    """`freeze` and `reinit` name layers (or blocks, or prefixes) the network has, and
    something is left to train."""
    for setting in LAYER_SETTINGS:
        chosen = getattr(config, setting)
        if chosen is not None:
            selected_layers(chosen, ir, config.spans.get(setting), setting)
    if config.freeze is not None and config.unfreeze_after is None:
        frozen = selected_layers(config.freeze, ir)
        if all(n.name in frozen for n in ir.nodes if n.params):
            raise CnnError([Diagnostic(
                code="E-train", message="`freeze` leaves nothing to train",
                span=config.spans.get("freeze"), help="keep the head trainable, e.g. "
                "`freeze: all_except(fc)`, or train it all later with `unfreeze_after: N`")])
    if config.unfreeze_after is not None and config.freeze is None:
        raise CnnError([Diagnostic(code="E-train", message="`unfreeze_after` needs `freeze`",
                                   span=config.spans.get("unfreeze_after"),
                                   help="say which layers start frozen: `freeze: ...`")])


def selected_layers(chosen: Layers, ir, span: Span | None = None,
                    setting: str = "freeze") -> set[str]:
    """The names of the layers with weights that a `freeze`/`reinit` selection covers."""
    layers = [n.name for n in ir.nodes if n.params or n.buffers]
    known = {n.name for n in ir.nodes} | {".".join(s.path) for s in ir.scopes}
    hit: set[str] = set()
    for i, name in enumerate(chosen.names):
        if name not in known and not any(k.startswith(name + ".") for k in known):
            raise CnnError([Diagnostic(
                code="E-train", message=f"`{setting}`: the network has no layer or block "
                f"`{name}`", span=chosen.spans[i] if i < len(chosen.spans) else span,
                help=did_you_mean(name, sorted(known)) or
                "use the names `cnndsl check` lists (labels, blocks, `layer1.0`)")])
        hit |= {layer for layer in layers if layer == name or layer.startswith(name + ".")}
    return set(layers) - hit if chosen.all_except else hit


# ---- settings against the network, before anything runs --------------------------------


def check_settings(config: TrainConfig, ir) -> None:
    """What torchvision and the loop would refuse (or silently get wrong) once running,
    checked against the network: augmentation against the input image, class weights,
    something to train. Raises CnnError with every problem located at its argument."""
    errors = _Errors([])
    _check_augment(config, _image_shape(ir), errors)
    for term in config.summed_losses:
        weights = term.loss.args.get("weights")
        if weights is not None and not any(w > 0 for w in weights):
            errors.add("E-train", "every class weight is 0: no sample would count in the loss",
                       term.loss.at("weights", term.span or config.spans.get("loss")),
                       help="give the classes that matter a weight above 0")
    trainable = [n.name for n in ir.nodes if n.params]
    if not trainable:
        errors.add("E-train", "the network has no weights to train",
                   config.spans.get("optimizer") or ir.inputs[0].span,
                   help="add layers with weights (conv, linear, ...)")
    elif config.freeze is not None and config.unfreeze_after is not None and \
            config.unfreeze_after >= config.epochs and \
            set(trainable) <= selected_layers(config.freeze, ir):
        errors.add("E-train", f"`freeze` leaves nothing to train in {config.epochs} epochs "
                   f"(the frozen layers train after epoch {config.unfreeze_after})",
                   config.spans.get("unfreeze_after"),
                   help=f"use `unfreeze_after` below {config.epochs}")
    if errors.items:
        raise CnnError(errors.items)


def _image_shape(ir) -> tuple[int, int, int] | None:
    shape = ir.inputs[0].shape if len(ir.inputs) == 1 else ()
    return tuple(shape) if len(shape) == 3 and all(isinstance(d, int) for d in shape) \
        else None


def _check_augment(config: TrainConfig, image, errors: _Errors) -> None:
    where = config.spans.get("augment")
    normalizes = [op for op in config.augment if op.name == "normalize"]
    if len(normalizes) > 1:
        errors.add("E-train", "`normalize` is given twice", normalizes[1].at("", where),
                   related=(Label(span=normalizes[0].at("", where), text="first here"),)
                   if normalizes[0].at("") else ())
    for op in config.augment:
        args = op.args
        if op.name == "scale" and args["low"] > args["high"]:
            errors.add("E-train", f"scale: low {args['low']:g} is above high {args['high']:g}",
                       op.at("low", where), help="scale(low, high) draws a factor in low..high")
        if image is None:
            continue
        channels, side = image[0], min(image[1:])
        if op.name == "random_crop" and args["padding"] > side:
            errors.add("E-train", f"random_crop: padding {args['padding']:,} is over the "
                       f"image's side ({side}): a crop could hold no image",
                       op.at("padding", where), help=f"use a padding of at most {side} (a few "
                       "pixels: 4 at 32 x 32)")
        if op.name == "normalize":
            for arg in ("mean", "std"):
                count = len(args[arg])
                if count not in (1, channels):
                    errors.add("E-train", f"normalize: {count} values of `{arg}` for an input "
                               f"of {channels} channel{'s' if channels > 1 else ''}",
                               op.at(arg, where), help=f"give one value, or one per channel "
                               f"({channels})")
