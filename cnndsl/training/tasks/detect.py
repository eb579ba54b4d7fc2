"""Object detection: boxes and a class for each object. The network ends in decoded
detections `(4 + classes) x anchors` (x, y, w, h in input pixels, then class scores), as
specs/yolov8n.cnn does; data are images with boxes (training/detdata.py: YOLO folders,
Ultralytics data YAML, COCO JSON, the bundled `shapes` set); the loss is YOLOv8's
(training/detloss.py); metrics are mAP@0.5, mAP@0.75 and mAP@0.5:0.95
(training/detmetrics.py) on the detections after confidence threshold and class-aware NMS.

In the loop the same module gives, besides the decoded detections, what the loss needs
from inside the head (training/dethead.py): the spec is not changed and the weights keep
their names. The loop's tensor is then one packed tensor per image, rows:
    4 + classes   the decoded detections (the spec's output)
    classes       the class logits
    4 x reg_max   the box distributions' logits (side by side)
    2 + 1 + 1     the anchor points (cells), their strides and the class count (constants
                  from the checked shapes)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...diagnostics import CnnError, Diagnostic
from ..spec import TrainConfig
from . import where

LOSSES = ("detect",)
# Ultralytics' validation settings (DetectionValidator) and its predict default
EVAL_CONF, PREDICT_CONF, NMS_IOU, MAX_DETECTIONS = 0.001, 0.25, 0.7, 300


# ---- the loop's view of the head ------------------------------------------------------


def train_view(module, head):
    """Make `module` (a CnnModule) give the packed tensor; returns the function that
    restores it. A forward hook does the packing, so DistributedDataParallel sees the
    module it wraps."""
    import torch
    saved = list(module.output_names)
    module.output_names = [head.output, head.logits, head.bins]
    xs, ys, strides = [], [], []
    for level in head.levels:
        for row in range(level.height):
            for column in range(level.width):
                xs.append(column + head.offset)
                ys.append(row + head.offset)
                strides.append(float(level.stride))
    constants = torch.tensor([xs, ys, strides, [float(head.classes)] * len(xs)],
                             dtype=torch.float32)

    def pack(_module, _inputs, outputs):
        decoded, logits, bins = outputs
        if head.bin_axis == 0:  # bins x 4 x A -> 4 x bins x A
            bins = bins.transpose(1, 2)
        rows = constants.to(decoded.device, decoded.dtype)
        return torch.cat([decoded, logits, bins.flatten(1, 2),
                          rows.expand(len(decoded), -1, -1)], 1)
    handle = module.register_forward_hook(pack)

    def restore():
        handle.remove()
        module.output_names = saved
    return restore


def unpack(packed, classes: int | None = None):
    """The packed tensor -> decoded (b, 4 + C, A), logits (b, A, C), bins (b, A, 4, R),
    anchors (A, 2) in cells, strides (A, 1); None for all but decoded when the tensor is
    the decoded output alone (an ONNX model: then `classes` tells)."""
    if classes is not None and packed.shape[1] == 4 + classes:
        return packed, None, None, None, None
    classes = int(packed[0, -1, 0])
    decoded = packed[:, :4 + classes]
    batch, rows, anchors = packed.shape
    reg_max = (rows - 2 * classes - 8) // 4
    logits = packed[:, 4 + classes:4 + 2 * classes].transpose(1, 2)
    start = 4 + 2 * classes
    bins = packed[:, start:start + 4 * reg_max].reshape(batch, 4, reg_max, anchors) \
        .permute(0, 3, 1, 2)
    constants = packed[0, start + 4 * reg_max:]
    constants = constants.detach()
    return decoded, logits, bins, constants[:2].T, constants[2:3].T


# ---- post-processing ------------------------------------------------------------------


def postprocess(decoded, *, conf: float = PREDICT_CONF, iou: float = NMS_IOU,
                max_detections: int = MAX_DETECTIONS) -> list[dict]:
    """(b, 4 + C, A) decoded detections -> per image {boxes (n, 4) xyxy pixels, scores,
    labels}: each anchor's best class above `conf`, class-aware NMS
    (torchvision.ops.batched_nms), the `max_detections` best kept."""
    from torchvision.ops import batched_nms, box_convert
    decoded = decoded.float()
    boxes = box_convert(decoded[:, :4].transpose(1, 2), "cxcywh", "xyxy")
    scores, labels = decoded[:, 4:].max(1)
    results = []
    for b, s, c in zip(boxes, scores, labels):
        keep = s > conf
        b, s, c = b[keep], s[keep], c[keep]
        kept = batched_nms(b, s, c, iou)[:max_detections]
        results.append({"boxes": b[kept], "scores": s[kept], "labels": c[kept]})
    return results


class _Evaluator:
    """Detections after NMS at Ultralytics' validation settings, scored by
    detmetrics.DetectionEvaluator (mAP@0.5, @0.75, @0.5:0.95, per class)."""

    def __init__(self, classes: list[str]):
        from ..detmetrics import DetectionEvaluator
        self.metric = DetectionEvaluator(classes)
        self.classes = len(classes)

    def update(self, packed, targets) -> None:
        if packed.ndim == 2 and packed.shape[-1] == 7:  # an export with --nms: final boxes
            from ...deploy.detect_onnx import rows_to_dicts
            preds = rows_to_dicts(packed.cpu().numpy(), len(targets))
        else:
            preds = [{k: v.cpu() for k, v in p.items()}
                     for p in postprocess(unpack(packed, self.classes)[0], conf=EVAL_CONF)]
        self.metric.update(preds, targets.cpu())

    def compute(self) -> dict:
        return self.metric.compute()


class Objective:
    """The packed tensor and the targets -> YOLOv8's loss as (sum, den)."""

    def __init__(self, choice, classes: int):
        from ..detloss import DetectionLoss
        self.classes = classes
        self.loss = DetectionLoss(classes, **choice.args)

    def __call__(self, packed, targets):
        _, logits, bins, anchors, strides = unpack(packed, self.classes)
        if logits is None:  # the decoded output alone: no loss to compute
            zero = packed.new_zeros(())
            return zero, zero
        return self.loss(logits, bins, anchors, strides, targets)


class Detect:
    name = "detect"
    data_words = ("shapes",)
    default_loss = "detect"  # without a `loss:` setting
    best_metric = "val_map"
    early_stop_metrics = ("val_map", "val_map50", "val_loss")
    outputs = ("curves.png", "pr.png", "boxes.png")

    def head(self, ir):
        from ..dethead import find_head
        return find_head(ir)

    def check(self, config: TrainConfig, ir) -> None:
        self.head(ir)
        for term in config.summed_losses:
            if term.loss.name not in LOSSES:
                raise CnnError([Diagnostic(
                    code="E-train", message=f"`{term.loss.name}` is not a detection loss",
                    **where(config, ir), help="use `loss: detect(box=7.5, cls=0.5, "
                    "dfl=1.5)` (YOLOv8's loss: task-aligned assignment, BCE, CIoU, DFL)")])
            if term.output is not None and term.index != 0:
                raise CnnError([Diagnostic(
                    code="E-train", message="the detection loss applies to the detector's "
                    "first output", span=term.output_span or term.span)])

    def check_classes(self, config: TrainConfig, ir, classes: int) -> None:
        head = self.head(ir)
        if head.classes != classes:
            node = ir.producer(head.output)
            raise CnnError([Diagnostic(
                code="E-train", message=f"the detector scores {head.classes} classes but the "
                f"data has {classes}", span=node.span if node is not None else None,
                help=f"set the network's `classes` to {classes} (`--set classes={classes}`)"
                if "classes" in ir.params else None)])

    def load_data(self, source: str, shape, config: TrainConfig,
                  max_bytes: float | None = None):
        from ..data import DATA_BYTES
        from ..detdata import load_detection_data
        return load_detection_data(source, shape, val_fraction=config.val_split,
                                   seed=config.seed, cache=config.cache,
                                   max_pixels=config.max_image_pixels,
                                   max_bytes=max_bytes or DATA_BYTES)

    def loss(self, config: TrainConfig, classes: int, device) -> Callable:
        (term,) = config.summed_losses
        return Objective(term.loss, classes)

    def adapt(self, module, ir) -> Callable[[], None]:
        return train_view(module, self.head(ir))

    def initialise(self, module, ir) -> None:
        """Ultralytics' Detect.bias_init for a detector trained from scratch: the box
        convs' biases 1, the class convs' log(5 / classes / cells), a prior of about five
        objects an image (without it the first steps' loss is all background)."""
        import math

        import torch

        from ..dethead import branch_convs
        head = self.head(ir)
        side = ir.inputs[0].shape[1]
        with torch.no_grad():
            for name in branch_convs(ir, head.bins):
                module.get_submodule(name).bias.fill_(1.0)
            for name, level in zip(branch_convs(ir, head.logits), head.levels):
                cells = (side / level.stride) ** 2
                module.get_submodule(name).bias.fill_(math.log(5 / head.classes / cells))

    def counts(self, packed, targets, config: TrainConfig) -> tuple[int, int]:
        """Each true box against the most confident anchor whose centre is inside it: is
        its class right? (the training bar's `acc`)."""
        import torch
        with torch.no_grad():
            decoded, _, _, anchors, strides = unpack(packed.detach())
            points = (anchors * strides)[None, None]  # (1, 1, A, 2) pixels
            boxes, labels = targets[..., None, 1:5], targets[..., 0]
            inside = ((points > boxes[..., :2]) & (points < boxes[..., 2:])).all(-1)
            best_score, best_class = decoded[:, 4:].float().max(1)  # (b, A)
            anchor = torch.where(inside, best_score[:, None], -1.0).argmax(-1)  # (b, M)
            right = (best_class.gather(1, anchor) == labels.long()) & inside.any(-1)
            return int((right & (labels >= 0)).sum()), int((labels >= 0).sum())

    def augmenter(self, config: TrainConfig, size) -> Callable | None:
        from ..detdata import detection_augmenter
        return detection_augmenter(config, size)

    def evaluator(self, classes: list[str], config: TrainConfig) -> _Evaluator:
        return _Evaluator(classes)

    def record(self, report: dict) -> dict:
        return {"val_map": report["map"], "val_map50": report["map50"],
                "val_map75": report["map75"], "precision": report.get("precision"),
                "recall": report.get("recall")}

    def epoch_line(self, record: dict) -> str:
        return f"mAP50 {record['val_map50']:.4f} mAP50-95 {record['val_map']:.4f}"

    def plots(self, out: Path, history: list[dict], report: dict, samples) -> None:
        from ..plots import plot_history
        plot_history(history, out / "curves.png",
                     metric=("mAP50-95", "val_map", "box class accuracy"))
        from ..detmetrics import detection_plots
        detection_plots(out, history, report, samples, conf=PREDICT_CONF)

    def predicted(self, packed) -> list[dict]:
        return postprocess(unpack(packed)[0], conf=EVAL_CONF)

    def format_report(self, report: dict) -> str:
        rows = report.get("per_class", [])
        width = max(12, *(len(r["name"]) for r in rows)) if rows else 12
        lines = []
        if rows:
            lines.append(f"{'class':<{width}}   AP50  AP50-95")
            for r in rows:
                lines.append(f"{r['name']:<{width}}  {_cell(r.get('ap50'))}  "
                             f"{_cell(r.get('ap'))}")
            lines.append("")
        lines.append(f"mAP50 {report['map50']:.4f}, mAP75 {report['map75']:.4f}, "
                     f"mAP50-95 {report['map']:.4f}")
        if report.get("precision") is not None:
            lines.append(f"precision {report['precision']:.4f}, recall "
                         f"{report['recall']:.4f}")
        return "\n".join(lines)

    def best_line(self, record: dict) -> str:
        return f"val mAP50-95 {record['val_map']:.4f} (mAP50 {record['val_map50']:.4f})"


def _cell(x) -> str:
    return "     -" if x is None else f"{x:6.4f}"


TASK = Detect()
