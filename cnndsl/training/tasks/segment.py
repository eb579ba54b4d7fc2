"""Semantic segmentation: a class per pixel. The network ends in `classes x H x W` at the
input's size; data are images with masks (training/segdata.py); losses per pixel
(cross_entropy, dice, focal and their weighted sums), pixels at the ignore index left out;
metrics from torchmetrics: mIoU, per-class IoU and Dice, pixel accuracy, the confusion
matrix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...diagnostics import CnnError, Diagnostic
from ...layers import REGISTRY
from ..ops import v2_transforms
from ..spec import TrainConfig, check_count
from . import (
    WeightedSum,
    argmax,
    check_two_classes,
    class_weights,
    keep,
    output_node,
    unchanged,
    where,
)

LOSSES = ("cross_entropy", "dice", "focal")


class PixelLoss:
    """One per-pixel loss as (sum over this rank's counted pixels, their count)."""

    def __init__(self, choice, classes: int, ignore: int, device, span=None):
        self.name, self.args, self.classes, self.ignore = choice.name, choice.args, classes, \
            ignore
        self.weights = class_weights(self.args, classes, device, span)

    def __call__(self, logits, targets):
        import torch
        import torch.nn.functional as F
        logits, targets = logits.float(), targets.long()
        valid = targets != self.ignore
        count = valid.sum().float()
        if self.name == "cross_entropy":
            total = F.cross_entropy(logits, targets, weight=self.weights, reduction="sum",
                                    ignore_index=self.ignore,
                                    label_smoothing=self.args["label_smoothing"])
            if self.weights is not None:
                count = self.weights[targets[valid]].sum()
            return total, count
        safe = torch.where(valid, targets, 0)
        if self.name == "focal":  # Lin et al. 2017: (1 - p_t)^gamma x cross entropy
            log_p = F.log_softmax(logits, 1).gather(1, safe[:, None])[:, 0]
            term = -((1 - log_p.exp()) ** self.args["gamma"]) * log_p
            if self.weights is not None:
                term = term * self.weights[safe]
            return (term * valid).sum(), count
        # dice: 1 - mean over classes of (2 |P n T| + s) / (|P| + |T| + s), soft P
        probs = F.softmax(logits, 1) * valid[:, None]
        onehot = F.one_hot(safe, self.classes).permute(0, 3, 1, 2) * valid[:, None]
        smooth = self.args["smooth"]
        overlap = (probs * onehot).sum((0, 2, 3))
        sizes = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        dice = 1 - ((2 * overlap + smooth) / (sizes + smooth)).mean()
        return dice * count, count


class _Evaluator:
    """torchmetrics' stateful metrics, updated batch by batch (nothing kept per pixel)."""

    def __init__(self, classes: list[str], ignore: int):
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
            MulticlassF1Score,
            MulticlassJaccardIndex,
        )
        n = len(classes)
        self.classes, self.samples = classes, 0
        self.metrics = {
            "iou": MulticlassJaccardIndex(n, average="none", ignore_index=ignore),
            "dice": MulticlassF1Score(n, average="none", ignore_index=ignore,
                                      zero_division=0),
            "pixel_accuracy": MulticlassAccuracy(n, average="micro", ignore_index=ignore),
            "confusion": MulticlassConfusionMatrix(n, ignore_index=ignore)}

    def update(self, logits, targets) -> None:
        predicted, targets = logits.argmax(1).cpu(), targets.long().cpu()
        self.samples += len(targets)
        for metric in self.metrics.values():
            metric.update(predicted, targets)

    def compute(self) -> dict:
        import torch
        confusion = self.metrics["confusion"].compute()
        pixels = confusion.sum(1)
        # a class neither in the masks nor predicted has no IoU or Dice: the means leave
        # it out, as Pascal VOC's and mmsegmentation's do
        present = (pixels + confusion.sum(0)) > 0
        nan = torch.tensor(float("nan"))
        iou = torch.where(present, self.metrics["iou"].compute(), nan)
        dice = torch.where(present, self.metrics["dice"].compute(), nan)
        return {
            "samples": self.samples, "pixels": int(pixels.sum()),
            "miou": float(torch.nanmean(iou)) if present.any() else 0.0,
            "dice": float(torch.nanmean(dice)) if present.any() else 0.0,
            "pixel_accuracy": float(self.metrics["pixel_accuracy"].compute()),
            "per_class": [{"class": name, "iou": _number(iou[i]), "dice": _number(dice[i]),
                           "pixels": int(pixels[i])} for i, name in enumerate(self.classes)],
            "confusion_matrix": confusion.tolist()}


def _number(value) -> float | None:
    x = float(value)
    return None if x != x else x  # JSON has no nan: an absent class is null


class Segment:
    name = "segment"
    data_words = ("shapes",)
    best_metric = "val_miou"
    early_stop_metrics = ("val_miou", "val_loss", "val_accuracy")
    outputs = ("curves.png", "confusion.png", "samples.png")

    def check(self, config: TrainConfig, ir) -> None:
        node = output_node(ir)
        span = node.span if node is not None else None
        shape = ir.shape_of(ir.outputs[0])
        image = ir.inputs[0]
        size = tuple(image.shape[1:]) if len(image.shape) == 3 else None
        if len(shape) != 3:
            raise CnnError([Diagnostic(
                code="E-train", message="a segmentation network ends in classes x H x W; this "
                f"one gives {' x '.join(map(str, shape))}", span=span,
                help="end with `conv(classes, 1)` at the image's size, no flatten")])
        if size is not None and tuple(shape[1:]) != size:
            smaller = shape[1] * shape[2] < size[0] * size[1]
            raise CnnError([Diagnostic(
                code="E-train", message=f"the output's maps are {shape[1]} x {shape[2]} but the "
                f"masks are {size[0]} x {size[1]} (the input's size)", span=span,
                label=f"{shape[1]} x {shape[2]}",
                help=f"end with `upsample(like={image.name})`" if smaller else
                "the masks have the input's size: make the output that size")])
        scores = REGISTRY[node.op].scores if node is not None else None
        for term in config.summed_losses:
            if term.loss.name not in LOSSES:
                raise CnnError([Diagnostic(
                    code="E-train", message=f"`{term.loss.name}` is not a segmentation loss",
                    **where(config, ir), help="segmentation losses: " + ", ".join(LOSSES) +
                    " (and sums: `cross_entropy + 0.5 * dice`)")])
            if scores is not None:
                raise CnnError([Diagnostic(
                    code="E-train", message=f"`{term.loss.name}` takes raw scores but the "
                    f"network ends with `{node.op}`", **where(config, ir),
                    help=f"drop the final {node.op} (the loss applies it)")])

    adapt = staticmethod(keep)
    predicted = staticmethod(argmax)
    initialise = staticmethod(unchanged)

    def check_classes(self, config: TrainConfig, ir, classes: int) -> None:
        check_two_classes(config, classes, "segmentation network")
        check_count(ir, classes)

    def load_data(self, source: str, shape, config: TrainConfig,
                  max_bytes: float | None = None):
        from ..data import DATA_BYTES
        from ..segdata import load_masks
        if config.data_classes is not None:
            raise CnnError([Diagnostic(code="E-train", message="`data_classes` picks classes "
                                       "of classification data", span=config.spans.get(
                                           "data_classes"))])
        return load_masks(source, shape, val_fraction=config.val_split, seed=config.seed,
                          ignore_index=config.ignore_index, cache=config.cache,
                          max_pixels=config.max_image_pixels,
                          max_bytes=max_bytes or DATA_BYTES)

    def loss(self, config: TrainConfig, classes: int, device) -> Callable:
        return WeightedSum([(t.weight, PixelLoss(t.loss, classes, config.ignore_index, device,
                                                 config.spans.get("loss")))
                            for t in config.summed_losses])

    def counts(self, logits, targets, config: TrainConfig) -> tuple[int, int]:
        valid = targets != config.ignore_index
        correct = (logits.detach().argmax(1) == targets) & valid
        return int(correct.sum()), int(valid.sum())

    def augmenter(self, config: TrainConfig, size) -> Callable | None:
        return joint_augmenter([(a.name, a.args) for a in config.augment], size,
                               config.ignore_index)

    def evaluator(self, classes: list[str], config: TrainConfig) -> _Evaluator:
        return _Evaluator(classes, config.ignore_index)

    def record(self, report: dict) -> dict:
        return {"val_miou": report["miou"], "val_accuracy": report["pixel_accuracy"],
                "val_dice": report["dice"]}

    def epoch_line(self, record: dict) -> str:
        return f"mIoU {record['val_miou']:.4f} pixel acc {record['val_accuracy']:.4f}"

    def plots(self, out: Path, history: list[dict], report: dict, samples) -> None:
        from ..plots import plot_confusion, plot_history, plot_masks
        plot_history(history, out / "curves.png", metric=("mIoU", "val_miou"))
        plot_confusion(report["confusion_matrix"], [r["class"] for r in report["per_class"]],
                       out / "confusion.png")
        images, truth, predicted = samples(8)
        plot_masks(images, truth, predicted, len(report["per_class"]), out / "samples.png")

    def format_report(self, report: dict) -> str:
        from ..metrics import confusion_table, one_line
        rows = [{**r, "class": one_line(r["class"])} for r in report["per_class"]]
        width = max(12, *(len(r["class"]) for r in rows))

        def cell(x):
            return "     -" if x is None else f"{x:6.4f}"
        lines = [f"{'class':<{width}}     IoU    Dice     pixels"]
        lines += [f"{r['class']:<{width}}  {cell(r['iou'])}  {cell(r['dice'])}  "
                  f"{r['pixels']:9d}" for r in rows]
        lines += ["", f"mIoU {report['miou']:.4f}, mean Dice {report['dice']:.4f}, pixel "
                  f"accuracy {report['pixel_accuracy']:.4f} ({report['pixels']:,} pixels)", "",
                  "confusion matrix in pixels (rows: true class, columns: predicted)"]
        lines += confusion_table([r["class"] for r in rows], report["confusion_matrix"],
                                 width)
        return "\n".join(lines)

    def best_line(self, record: dict) -> str:
        return f"val mIoU {record['val_miou']:.4f}"

    def write_predictions(self, folder: Path, names: list[str], images, logits) -> None:
        """NAME.png: the predicted mask as a palette PNG (class indices, VOC's colours);
        NAME_overlay.png: the image with the predicted classes coloured over it."""
        import numpy as np
        for name, image, scores in zip(names, images, logits):
            predicted = scores.argmax(0).numpy().astype(np.uint8)
            write_mask(predicted, folder / f"{name}.png")
            write_overlay(image.numpy(), predicted, folder / f"{name}_overlay.png")


def write_mask(mask, path: Path) -> None:
    """H x W class indices (uint8) as a palette PNG with Pascal VOC's colours."""
    from PIL import Image

    from ...atomic import atomic_path
    from ..plots import palette
    picture = Image.fromarray(mask, mode="P")
    picture.putpalette(palette(256).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def write_overlay(image, mask, path: Path, rows: int = 1024) -> None:
    """`image` (C x H x W: floats in [0, 1], or uint8) with `mask`'s classes coloured over
    it (plots.overlay), as an RGB PNG; blended `rows` rows at a time, so that a large
    image costs a few bytes a pixel, not overlay's float arrays for all of it."""
    import numpy as np
    from PIL import Image

    from ...atomic import atomic_path
    from ..plots import overlay
    height = mask.shape[0]
    mixed = np.empty((height, mask.shape[1], 3), np.uint8)
    for top in range(0, height, rows):
        strip = image[:, top:top + rows]
        if strip.dtype == np.uint8:
            strip = strip.astype(np.float32) / 255
        mixed[top:top + rows] = (overlay(strip, mask[top:top + rows]) * 255).round()
    with atomic_path(path) as tmp:
        Image.fromarray(mixed).save(tmp, format="PNG")


def joint_augmenter(ops: list[tuple[str, dict]], size, ignore: int):
    """Image and mask transformed together (torchvision.transforms.v2 with
    tv_tensors.Mask): the same crop, flip, rotation and scale; masks by nearest neighbour,
    pixels brought in from outside at the ignore index; colour jitter on the image only."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    fill = {tv_tensors.Image: 0.0, tv_tensors.Mask: ignore}
    steps = v2_transforms(ops, size, fill)
    if not steps:
        return None
    pipeline = v2.Compose(steps)

    def apply(image, mask):
        import torch
        image, mask = pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
    return apply


TASK = Segment()
