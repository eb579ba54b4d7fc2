"""Object detection metrics: COCO's evaluation through torchmetrics' MeanAveragePrecision,
not a hand-written AP. Its backend is faster-coco-eval (COCOeval's algorithm in C++, the
same figures, four times faster on a validation pass of 200 images with 100 detections
each), or pycocotools where only that is installed; the tests recompute every figure with
pycocotools' COCOeval directly.

One COCO evaluation per `compute()` gives mAP@0.5, mAP@0.75 and mAP@0.5:0.95, and its
accumulated precision table (IoU threshold x recall x class x area x max detections), from
which come each class's AP (as COCO's summary averages that table, one class at a time),
the precision-recall curves at IoU 0.5, and precision and recall at each class's best F1
on that curve (Ultralytics reports P and R at the confidence of best mean F1; COCO's
curve is the interpolated one, so these are its envelope).
"""

from __future__ import annotations

IOU_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]
RECALL_POINTS = 101  # COCO's recall thresholds 0, 0.01, ..., 1


def split_targets(targets) -> list[dict]:
    """The padded B x max_boxes x 5 targets as torchmetrics' per-image dicts."""
    import torch
    out = []
    for rows in torch.as_tensor(targets).detach().cpu().float():
        real = rows[:, 0] >= 0
        out.append({"boxes": rows[real, 1:].contiguous(), "labels": rows[real, 0].long()})
    return out


class DetectionEvaluator:
    """Detections and true boxes accumulated over batches (torchmetrics' state), then
    evaluated once by COCO's code. `update(preds, targets)`: preds one dict per image
    (`boxes` N x 4 xyxy in input pixels, `scores` N, `labels` N), targets the padded
    B x max_boxes x 5 tensor (`[class, x1, y1, x2, y2]`, class -1 for padding)."""

    def __init__(self, classes: list[str], max_detections: int = 100):
        from torchmetrics.detection import MeanAveragePrecision
        self.classes = list(classes)
        self.max_detections = max_detections
        self.metric = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", extended_summary=True,
            max_detection_thresholds=[1, min(10, max_detections), max_detections],
            backend=_backend())
        self.metric.warn_on_many_detections = False
        self.samples = self.objects = 0

    def update(self, preds: list[dict], targets) -> None:
        truth = split_targets(targets)
        if len(preds) != len(truth):
            raise ValueError(f"{len(preds)} predictions for {len(truth)} images")
        self.samples += len(truth)
        self.objects += sum(len(t["labels"]) for t in truth)
        self.metric.update([_detections(p) for p in preds], truth)

    def compute(self) -> dict:
        import torch
        result = self.metric.compute()
        precision = result.get("precision")
        count = len(self.classes)
        if not isinstance(precision, torch.Tensor) or precision.ndim != 5:
            precision = torch.full((len(IOU_THRESHOLDS), RECALL_POINTS, 0, 4, 3), -1.0)
        # COCO's table holds the classes seen (in the boxes or the detections), in order
        seen = [int(c) for c in result["classes"].tolist()]
        table = torch.full((len(IOU_THRESHOLDS), RECALL_POINTS, count), -1.0)
        for k, c in enumerate(seen[:precision.shape[2]]):
            if 0 <= c < count:
                table[:, :, c] = precision[:, :, k, 0, -1].float()
        recall = torch.linspace(0, 1, RECALL_POINTS)
        per_class, best_p, best_r = [], [], []
        for c, name in enumerate(self.classes):
            curve = table[0, :, c]
            has_truth = bool((table[:, :, c] > -1).any())
            row = {"name": name, "ap50": _mean(curve) if has_truth else None,
                   "ap": _mean(table[:, :, c]) if has_truth else None,
                   "precision": None, "recall": None}
            if has_truth:
                f1 = 2 * curve * recall / (curve + recall).clamp_min(1e-12)
                at = int(f1.argmax())
                row["precision"], row["recall"] = float(curve[at]), float(recall[at])
                best_p.append(row["precision"])
                best_r.append(row["recall"])
            per_class.append(row)
        return {
            "samples": self.samples, "objects": self.objects,
            "map50": _figure(result["map_50"]), "map75": _figure(result["map_75"]),
            "map": _figure(result["map"]),
            "mar100": _figure(result[f"mar_{self.max_detections}"]),
            "precision": sum(best_p) / len(best_p) if best_p else 0.0,
            "recall": sum(best_r) / len(best_r) if best_r else 0.0,
            "per_class": per_class,
            "pr_curve": {"iou": 0.5, "recall": [round(float(r), 2) for r in recall],
                         "precision": [None if row["ap50"] is None else
                                       [max(float(p), 0.0) for p in table[0, :, c]]
                                       for c, row in enumerate(per_class)]}}


def _backend() -> str:
    import importlib.util
    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else \
        "pycocotools"


def _detections(pred: dict) -> dict:
    import torch
    boxes = torch.as_tensor(pred["boxes"]).detach().cpu().float().reshape(-1, 4)
    return {"boxes": boxes,
            "scores": torch.as_tensor(pred["scores"]).detach().cpu().float().reshape(-1),
            "labels": torch.as_tensor(pred["labels"]).detach().cpu().long().reshape(-1)}


def _mean(values) -> float:
    """COCO's summary: the mean over the table's cells that are defined (> -1)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.numel() else 0.0


def _figure(value) -> float:
    """COCO's -1 (nothing to measure: no true boxes) as 0."""
    x = float(value)
    return x if x >= 0 else 0.0


# ---- plots --------------------------------------------------------------------------------


def detection_plots(out, history: list[dict], report: dict, samples, conf: float = 0.25
                    ) -> None:
    """pr.png: each class's precision-recall curve at IoU 0.5 (its AP50 in the legend)
    beside mAP@0.5 and mAP@0.5:0.95 per epoch (the history's `val_map50`, `val_map`);
    boxes.png: validation images with their true boxes and the predicted ones scoring at
    least `conf`. `samples(n)` -> (images B x C x H x W in 0..1, targets B x M x 5, preds
    one dict per image as `DetectionEvaluator.update` takes)."""
    from pathlib import Path
    out = Path(out)
    plot_pr(report, history, out / "pr.png")
    images, targets, preds = samples(8)
    names = [row["name"] for row in report["per_class"]]
    plot_boxes(images, targets, preds, names, out / "boxes.png", conf)


def plot_pr(report: dict, history: list[dict], path) -> None:
    from .plots import _pyplot, _save
    plt = _pyplot()
    figure, (curves, epochs) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    recall = report["pr_curve"]["recall"]
    for row, precision in zip(report["per_class"], report["pr_curve"]["precision"]):
        if precision is not None:
            curves.plot(recall, precision, label=f"{row['name']} {row['ap50']:.3f}")
    curves.set(title=f"precision-recall at IoU 0.5 (mAP@0.5 {report['map50']:.3f})",
               xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    if len(report["per_class"]) <= 20:
        curves.legend(loc="lower left", fontsize=8)
    rows = [r for r in history if r.get("val_map50") is not None]
    if rows:
        numbers = [r["epoch"] for r in rows]
        epochs.plot(numbers, [r["val_map50"] for r in rows], "o-", label="mAP@0.5")
        epochs.plot(numbers, [r["val_map"] for r in rows], "s-", label="mAP@0.5:0.95")
        epochs.legend()
        epochs.xaxis.get_major_locator().set_params(integer=True)
    epochs.set(title="validation mAP", xlabel="epoch", ylabel="mAP", ylim=(0, 1.02))
    for axes in (curves, epochs):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def plot_boxes(images, targets, preds, names: list[str], path, conf: float = 0.25) -> None:
    """Each image twice, side by side: its true boxes, and the predicted ones (class and
    score); four images a row."""
    import numpy as np

    from .plots import _pyplot, _save
    plt = _pyplot()
    count = len(images)
    per_row = max(1, min(4, count))
    rows = max(1, -(-count // per_row))
    figure, axes = plt.subplots(rows, 2 * per_row, figsize=(4.4 * per_row, 2.3 * rows),
                                dpi=100, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(count):
        picture = np.asarray(images[i].detach().cpu().float(), np.float32)
        picture = np.repeat(picture, 3, 0) if picture.shape[0] == 1 else picture[:3]
        truth = [(int(r[0]), r[1:].tolist(), None) for r in targets[i] if r[0] >= 0]
        keep = preds[i]["scores"] >= conf
        found = [(int(c), b.tolist(), float(s)) for b, s, c in
                 zip(preds[i]["boxes"][keep], preds[i]["scores"][keep],
                     preds[i]["labels"][keep])]
        for j, (boxes, title) in enumerate(((truth, "true"), (found, "predicted"))):
            ax = axes[i // per_row][2 * (i % per_row) + j]
            ax.imshow(np.clip(picture.transpose(1, 2, 0), 0, 1), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            for c, (x1, y1, x2, y2), score in boxes:
                colour = colours(c % 10)
                ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1,
                                           fill=False, edgecolor=colour, linewidth=1.2))
                name = names[c] if 0 <= c < len(names) else str(c)
                ax.text(x1 - 0.5, y1 - 0.5, name if score is None else f"{name} {score:.2f}",
                        fontsize=6, color="white", va="bottom",
                        bbox={"facecolor": colour, "pad": 0.5, "linewidth": 0})
    figure.tight_layout()
    _save(figure, path)
