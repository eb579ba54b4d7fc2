"""Object detection metrics: COCO's evaluation (pycocotools, through torchmetrics'
MeanAveragePrecision), not a hand-written AP.

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
            backend="pycocotools")
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
