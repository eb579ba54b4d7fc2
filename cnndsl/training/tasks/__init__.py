"""Training tasks: what one kind of training (one label per image, one per pixel, ...)
brings to the one loop in `training/loop.py`.

A task is one module here with one object, `TASK`, that has the hooks of `Task` below:
the checks against the network (before anything runs), its data, its losses, what a batch
counts as correct, its augmentation, its metrics, the per-epoch record, plots, the `eval`
report and `predict`-style outputs. The loop calls these hooks and knows no task by name;
a new task (detection) is a new module listed in `TASKS`.

This package imports no torch at import time: the checks run when a spec is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ...diagnostics import CnnError, Diagnostic, Label, printable_text
from ..outputs import resolve_terms
from ..spec import TrainConfig, check_layers, check_settings


class Evaluator(Protocol):
    """Metrics accumulated over batches (torchmetrics' state), then computed once."""

    def update(self, logits, targets) -> None: ...
    def compute(self) -> dict: ...


class Task(Protocol):
    name: str  # as written in `task: ...`
    data_words: tuple[str, ...]  # bundled data sets of this task (`digits`)
    best_metric: str  # the per-epoch record's key that picks `best` (lower is better)
    early_stop_metrics: tuple[str, ...]
    outputs: tuple[str, ...]  # the files the loop's `--out` folder receives from plots

    def check(self, config: TrainConfig, ir) -> None:
        """The network's output against the task and its loss, statically."""

    def check_classes(self, config: TrainConfig, ir, classes: int) -> None:
        """The network's output against the data's class count."""

    def load_data(self, source: str, shape: tuple[int, int, int], config: TrainConfig,
                  max_bytes: float | None = None):
        """`Data` (training/data.py) with `train` and `val` sample sets; `max_bytes`: the
        most data held in memory (--memory-limit; data.DATA_BYTES by default)."""

    def loss(self, config: TrainConfig, classes: int, device) -> Callable:
        """(logits, targets) -> (sum over this rank's samples, its denominator)."""

    def counts(self, logits, targets, config: TrainConfig) -> tuple[int, int]:
        """(correct, counted) in a training batch, for the running accuracy."""

    def augmenter(self, config: TrainConfig, size: tuple[int, int]) -> Callable | None:
        """(image, target) -> (image, target): one random draw for one sample, or None."""

    def evaluator(self, classes: list[str], config: TrainConfig) -> Evaluator: ...

    def initialise(self, module, ir) -> None:
        """A freshly built module's task-specific start (detection: its head's biases)."""

    def predicted(self, logits):
        """The network's output for a batch -> its answers (classes, masks, boxes), for
        plots of samples."""

    def record(self, report: dict) -> dict:
        """The validation report's figures for the epoch's record in metrics.json."""

    def epoch_line(self, record: dict) -> str: ...

    def plots(self, out: Path, history: list[dict], report: dict,
              samples: Callable[[int], tuple]) -> None: ...

    def format_report(self, report: dict) -> str: ...

    def best_line(self, record: dict) -> str: ...

    def adapt(self, module, ir) -> Callable[[], None]:
        """Make the spec's module give what this task's losses and metrics take (the same
        parameters and state_dict; detection adds tensors from inside its head); returns
        the function that undoes it."""


def _tasks() -> dict[str, Task]:
    from . import classify, detect, segment
    return {"classify": classify.TASK, "segment": segment.TASK, "detect": detect.TASK}


def get(name: str) -> Task:
    return _tasks()[name]


def resolve(config: TrainConfig, ir) -> TrainConfig:
    """The task (written, else inferred from the network's output) checked against the
    network with its loss and layer settings; the config comes back with its task set."""
    config = config.model_copy(update={"losses": resolve_terms(
        config.losses, ir, config.spans.get("loss"))})
    name = config.task or _infer(config, ir)
    task = get(name)
    default = getattr(task, "default_loss", None)
    if default is not None and "loss" not in config.spans and config.loss.name != default:
        from ..spec import LOSSES, Choice
        config = config.model_copy(update={"loss": Choice(
            name=default, args={a.name: a.default for a in LOSSES[default]}), "losses": ()})
    stop = config.early_stop
    if stop is not None:
        metric = stop.get("metric") or task.best_metric
        if metric not in task.early_stop_metrics:
            raise CnnError([Diagnostic(
                code="E-train", message=f"`early_stop`: `{metric}` is not a {name} metric",
                span=config.spans.get("early_stop"),
                help="use " + " or ".join(task.early_stop_metrics))])
        stop = {**stop, "metric": metric}
    config = config.model_copy(update={"task": name, "early_stop": stop})
    task.check(config, ir)
    check_layers(config, ir)
    check_settings(config, ir)
    return config


def _infer(config: TrainConfig, ir) -> str:
    """One score per class: classify; a score map (classes x H x W): segment; the loss
    `detect`, or detections ((4 + classes) x anchors): detect."""
    shape = ir.shape_of(ir.outputs[config.summed_losses[0].index])
    if any(t.loss.name == "detect" for t in config.summed_losses) or \
            len(shape) == 2 and any(n.op == "anchor_points" for n in ir.nodes):
        return "detect"
    for name, task in _tasks().items():
        if config.data in task.data_words:
            return name
    if len(shape) == 3:
        return "segment"
    if len(shape) == 1:
        return "classify"
    node = output_node(ir)
    raise CnnError([Diagnostic(
        code="E-train", message=f"the network gives {' x '.join(map(str, shape))}: neither "
        "one score per class nor a score map", span=node.span if node else None,
        help="say what it learns: `task: classify` (end with `flatten -> linear(classes)`) "
        "or `task: segment` (end with `conv(classes, 1)` at the image's size)")])


def unchanged(module, ir) -> None:
    """`Task.initialise` for a task whose layers start as PyTorch initialises them."""


def argmax(logits):
    """`Task.predicted` for one class per sample or per pixel."""
    return logits.argmax(1)


def keep(module, ir) -> Callable[[], None]:
    """`Task.adapt` for a task that trains the spec's module as it is."""
    return lambda: None


def check_run(config: TrainConfig, data, device) -> None:
    """What only the data and the machine tell, checked before the first batch: both parts
    of the split hold samples; `amp: fp16` has a CUDA device."""
    empty = [part for part, samples in (("training", data.train), ("validation", data.val))
             if len(samples) == 0]
    if empty:
        total = len(data.train) + len(data.val)
        how = ("its own val/ folder" if data.presplit else
               f"`val_split: {config.val_split:g}`")
        raise CnnError([Diagnostic(
            code="E-data", message=f"{how} leaves the {empty[0]} part of {data.source} empty "
            f"({len(data.train)} train / {len(data.val)} val of {total} samples)",
            span=None if data.presplit else config.spans.get("val_split"),
            help="training needs samples in both parts: add samples" +
            ("" if data.presplit else " or change `val_split`"))])
    _check_every_class_trains(config, data)
    if config.amp == "fp16" and device.type != "cuda":
        raise CnnError([Diagnostic(
            code="E-train", message=f"`amp: fp16` needs a CUDA device; this run is on "
            f"{device.type}", span=config.spans.get("amp"),
            help="use `amp: bf16` (CPUs and recent GPUs) or `amp: none`")])


def _check_every_class_trains(config: TrainConfig, data) -> None:
    """Classification: a class whose samples all went to validation (one sample at a
    `val_split` over 0.5) could never be learned, and would score 0 however well the rest
    trains. A folder with its own val/ is checked where it is read."""
    labels = getattr(data.train, "labels", None)
    val_labels = getattr(data.val, "labels", None)
    if config.task != "classify" or data.presplit or labels is None or val_labels is None:
        return
    import torch
    classes = data.train.classes
    trained = torch.bincount(torch.as_tensor(labels), minlength=len(classes))
    held = torch.bincount(torch.as_tensor(val_labels), minlength=len(classes))
    for index in torch.nonzero((trained == 0) & (held > 0)).flatten().tolist():
        count = int(held[index])
        raise CnnError([Diagnostic(
            code="E-data", message=f"`val_split: {config.val_split:g}` leaves class "
            f"`{printable_text(classes[index])}` without a training sample (its {count} "
            f"sample{'s are' if count != 1 else ' is'} in the validation part)",
            span=config.spans.get("val_split"),
            help="add samples of the class, or lower `val_split` (at 0.5 or below a class "
            "of one sample trains on it)")])


def output_node(ir):
    try:
        return ir.node(ir.outputs[0])
    except KeyError:  # the output is a network input
        return None


def where(config: TrainConfig, ir, setting: str = "loss") -> dict[str, Any]:
    """An error's place: the setting where it was written, the output as a related label."""
    node = output_node(ir)
    span = node.span if node is not None else None
    written = config.spans.get(setting)
    return {"span": written or span,
            "related": (Label(span=span, text="the output"),) if span and written else ()}


def check_two_classes(config: TrainConfig, classes: int, network: str) -> None:
    """Scores over one class are always right: nothing to learn, no metric defined (it
    was an internal error in the metrics, num_classes=1)."""
    if classes < 2:
        raise CnnError([Diagnostic(
            code="E-data", message=f"the data has {classes} class: a {network} needs 2 or "
            "more", span=config.spans.get("data"), label="one class",
            help="add the other classes' images (or masks that mark them), or pick them "
            "with `data_classes`" if network == "classifier" else
            "add masks that mark the objects (the background is a class too)")])


def class_weights(args: dict, classes: int, device, span=None):
    """A loss's `weights=(...)`, one per class, as a tensor on `device` (None without)."""
    weights = args.get("weights")
    if weights is None:
        return None
    if len(weights) != classes:
        raise CnnError([Diagnostic(
            code="E-train", message=f"the loss has {len(weights)} class weights for "
            f"{classes} classes", span=span)])
    import torch
    return torch.tensor(weights, dtype=torch.float32, device=device)


class WeightedSum:
    """`loss: cross_entropy + 0.5 * dice`: each term as a mean over its own denominator,
    weighted, returned against the first term's denominator (so a single term is exactly
    that loss)."""

    def __init__(self, terms: list[tuple[float, Callable]]):
        self.terms = terms

    def __call__(self, logits, targets):
        if len(self.terms) == 1 and self.terms[0][0] == 1.0:
            return self.terms[0][1](logits, targets)
        total, den = None, None
        for weight, loss in self.terms:
            part, part_den = loss(logits, targets)
            if den is None:
                den = part_den
            value = weight * part / part_den.clamp_min(1e-12)
            total = value if total is None else total + value
        return total * den, den
