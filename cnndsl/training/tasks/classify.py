"""Classification: one label per image. Data: `digits`, class folders, `.npz` with `x`
and `y`; loss over one score per class; accuracy, precision, recall, F1 (torchmetrics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...diagnostics import CnnError, Diagnostic
from ..spec import TrainConfig, check_classes, check_loss_fits
from . import WeightedSum, argmax, check_two_classes, class_weights, keep, unchanged, where

LOSSES = ("cross_entropy", "nll", "bce_with_logits", "mse")


class Objective:
    """The loss as a sum over this rank's samples and the denominator that makes it the
    mean over the global batch (for class weights: the sum of the targets' weights, as
    torch's own `mean` reduction)."""

    def __init__(self, choice, classes: int, device, span=None):
        self.name = choice.name
        self.classes = classes
        args = choice.args
        self.weights = class_weights(args, classes, device, span)
        self.smoothing = args.get("label_smoothing", 0.0)
        self.pos_weight = args.get("pos_weight")

    def __call__(self, logits, targets):
        import torch
        import torch.nn.functional as F
        logits = logits.float()
        if self.name == "cross_entropy":
            total = F.cross_entropy(logits, targets, weight=self.weights, reduction="sum",
                                    label_smoothing=self.smoothing)
        elif self.name == "nll":
            total = F.nll_loss(logits, targets, weight=self.weights, reduction="sum")
        else:
            onehot = F.one_hot(targets, self.classes).float()
            if self.name == "mse":
                total = F.mse_loss(logits, onehot, reduction="sum")
            else:
                pos = (torch.tensor(self.pos_weight, device=logits.device)
                       if self.pos_weight is not None else None)
                total = F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum",
                                                           pos_weight=pos)
        return total, self.denominator(targets)

    def denominator(self, targets):
        import torch
        if self.weights is not None and self.name in ("cross_entropy", "nll"):
            return self.weights[targets].sum()
        per_sample = self.classes if self.name in ("mse", "bce_with_logits") else 1
        return torch.tensor(float(len(targets) * per_sample), device=targets.device)


class _Evaluator:
    """Classification metrics need every score (top-5, per-class): kept, then reported."""

    def __init__(self, classes: list[str]):
        self.classes, self.logits, self.targets = classes, [], []

    def update(self, logits, targets) -> None:
        self.logits.append(logits.float().cpu())
        self.targets.append(targets.cpu())

    def compute(self) -> dict:
        import torch

        from ..metrics import classification_report
        logits = torch.cat(self.logits) if self.logits else torch.zeros(0, len(self.classes))
        targets = torch.cat(self.targets) if self.targets else torch.zeros(0, dtype=torch.long)
        # the scores too: `eval` leaves them out, cnndsl.deploy compares against them
        return {**classification_report(logits, targets, self.classes), "logits": logits}


class Classify:
    name = "classify"
    data_words = ("digits",)
    best_metric = "val_loss"
    early_stop_metrics = ("val_loss", "val_accuracy")
    outputs = ("curves.png", "confusion.png")

    def check(self, config: TrainConfig, ir) -> None:
        for term in config.summed_losses:
            if term.loss.name not in LOSSES:
                raise CnnError([Diagnostic(
                    code="E-train", message=f"`{term.loss.name}` is a segmentation loss; this "
                    "network classifies", **where(config, ir),
                    help="classification losses: " + ", ".join(LOSSES))])
        check_loss_fits(config, ir)

    adapt = staticmethod(keep)
    predicted = staticmethod(argmax)
    initialise = staticmethod(unchanged)

    def check_classes(self, config: TrainConfig, ir, classes: int) -> None:
        check_two_classes(config, classes, "classifier")
        check_classes(config, ir, classes)

    def load_data(self, source: str, shape, config: TrainConfig,
                  max_bytes: float | None = None):
        from ..data import DATA_BYTES, load_data
        return load_data(source, shape, val_fraction=config.val_split, seed=config.seed,
                         classes=config.data_classes, cache=config.cache,
                         max_pixels=config.max_image_pixels,
                         max_bytes=max_bytes or DATA_BYTES)

    def loss(self, config: TrainConfig, classes: int, device) -> Callable:
        return WeightedSum([(t.weight, Objective(t.loss, classes, device,
                                                 config.spans.get("loss")))
                            for t in config.summed_losses])

    def counts(self, logits, targets, config: TrainConfig) -> tuple[int, int]:
        return int((logits.detach().argmax(1) == targets).sum()), len(targets)

    def augmenter(self, config: TrainConfig, size) -> Callable | None:
        from ..data import sample_augmenter
        return sample_augmenter([(a.name, a.args) for a in config.augment], size)

    def evaluator(self, classes: list[str], config: TrainConfig) -> _Evaluator:
        return _Evaluator(classes)

    def record(self, report: dict) -> dict:
        return {"val_accuracy": report["accuracy"], "precision": report["precision"],
                "recall": report["recall"], "f1": report["f1"]}

    def epoch_line(self, record: dict) -> str:
        return f"acc {record['val_accuracy']:.4f} f1 {record['f1']:.4f}"

    def plots(self, out: Path, history: list[dict], report: dict, samples) -> None:
        from ..plots import plot_confusion, plot_history
        plot_history(history, out / "curves.png")
        plot_confusion(report["confusion_matrix"], [r["class"] for r in report["per_class"]],
                       out / "confusion.png")

    def format_report(self, report: dict) -> str:
        from ..metrics import format_report
        return format_report(report)

    def best_line(self, record: dict) -> str:
        return f"val accuracy {record['val_accuracy']:.4f}"


TASK = Classify()
