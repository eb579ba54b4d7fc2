"""YOLOv8's detection loss: the task-aligned assigner (TAL), BCE on the class logits, CIoU
on the boxes and distribution focal loss (DFL) on the bins, as Ultralytics'
v8DetectionLoss and TaskAlignedAssigner compute them (ultralytics/utils/loss.py, tal.py),
with torchvision.ops for the box conversions and CIoU.

Boxes are xyxy. Predictions come as the training view's tensors: class logits
(b, A, classes), bin logits (b, A, 4, reg_max), anchor points (A, 2) in cells and each
anchor's stride (A, 1). Targets: (b, max_boxes, 5) rows [class, x1, y1, x2, y2] in input
pixels, padding rows of class -1.

The loss is returned as (sum, denominator): the weighted sum of the three terms over the
anchors, and the sum of the assigned target scores (at least 1), so that sum / den is
Ultralytics' loss divided by the batch size (Ultralytics multiplies by it), and under
torchrun the denominators add up across processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, complete_box_iou_loss


def pair_ciou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Complete IoU of each row of `a` with the same row of `b` (xyxy)."""
    return 1.0 - complete_box_iou_loss(a, b, reduction="none", eps=1e-7)


@dataclass
class Assigned:
    labels: torch.Tensor  # (b, A) the class each anchor learns (0 where background)
    boxes: torch.Tensor  # (b, A, 4) its true box, xyxy pixels
    scores: torch.Tensor  # (b, A, classes) soft targets: the alignment, normalised
    foreground: torch.Tensor  # (b, A) bool
    box_index: torch.Tensor  # (b, A) which true box


@torch.no_grad()
def assign(scores, boxes, anchors, labels, true_boxes, valid, *, classes: int, topk=10,
           alpha=0.5, beta=6.0, stride_floor: float = 8.0, eps=1e-9) -> Assigned:
    """Task-aligned assignment (TOOD; Ultralytics' TaskAlignedAssigner): each true box takes
    the `topk` anchors inside it with the highest score^alpha x CIoU^beta; an anchor taken by
    several keeps the box it overlaps most.

    scores (b, A, classes) probabilities; boxes (b, A, 4) predicted, pixels; anchors (A, 2)
    pixels; labels (b, M); true_boxes (b, M, 4); valid (b, M) bool."""
    batch, count = true_boxes.shape[:2]
    n = anchors.shape[0]
    if count == 0:
        return Assigned(torch.zeros(batch, n, dtype=torch.long, device=scores.device),
                        torch.zeros_like(boxes), torch.zeros_like(scores),
                        torch.zeros(batch, n, dtype=torch.bool, device=scores.device),
                        torch.zeros(batch, n, dtype=torch.long, device=scores.device))
    inside = _inside(anchors, true_boxes, valid, stride_floor, eps)  # (b, M, A)
    b_i, m_i, a_i = (inside & valid[..., None]).nonzero(as_tuple=True)
    overlap = pair_ciou(true_boxes[b_i, m_i], boxes[b_i, a_i]).clamp(0).to(boxes.dtype)
    score = scores[b_i, a_i, labels[b_i, m_i].long()]
    overlaps = torch.zeros(batch, count, n, dtype=boxes.dtype, device=boxes.device)
    align = torch.zeros(batch, count, n, dtype=scores.dtype, device=scores.device)
    overlaps[b_i, m_i, a_i] = overlap
    align[b_i, m_i, a_i] = score.pow(alpha) * overlap.pow(beta)

    # each box's top k anchors (padding rows pick anchor 0 k times: dropped as duplicates)
    k = min(topk, n)
    top = align.topk(k, dim=-1).indices.masked_fill(~valid[..., None].expand(-1, -1, k), 0)
    picked = torch.zeros(batch, count, n, dtype=torch.int8, device=scores.device)
    picked.scatter_add_(-1, top, torch.ones_like(top, dtype=torch.int8))
    picked.masked_fill_(picked > 1, 0)
    positive = picked * inside * valid[..., None]

    # an anchor positive for several boxes keeps the one it overlaps most
    several = (positive.sum(-2, keepdim=True) > 1).expand(-1, count, -1)
    most = torch.zeros_like(positive).scatter_(1, overlaps.argmax(1, keepdim=True), 1)
    positive = torch.where(several, most, positive)
    foreground, box_index = positive.max(-2)

    picked_labels = labels.long().gather(1, box_index).clamp(0)
    picked_boxes = true_boxes.gather(1, box_index[..., None].expand(-1, -1, 4))
    target = F.one_hot(picked_labels, classes) * (foreground[..., None] > 0)
    align = align * positive
    overlaps = overlaps * positive
    norm = (align * overlaps.amax(-1, keepdim=True)
            / (align.amax(-1, keepdim=True) + eps)).amax(-2)[..., None]
    return Assigned(picked_labels, picked_boxes, target * norm, foreground.bool(), box_index)


def _inside(anchors, true_boxes, valid, floor: float, eps: float) -> torch.Tensor:
    """(b, M, A): anchor centres strictly inside each box, boxes with a side under `floor`
    pixels widened to it about their centre (so a tiny box still has candidates)."""
    centred = box_convert(true_boxes, "xyxy", "cxcywh")
    sides = torch.where((centred[..., 2:] < floor) & valid[..., None],
                        torch.tensor(floor, dtype=centred.dtype, device=centred.device),
                        centred[..., 2:])
    grown = box_convert(torch.cat([centred[..., :2], sides], -1), "cxcywh", "xyxy")
    near = anchors[None, None] - grown[:, :, None, :2]
    far = grown[:, :, None, 2:] - anchors[None, None]
    return torch.cat([near, far], -1).amin(-1) > eps


def expected_sides(bins: torch.Tensor) -> torch.Tensor:
    """(..., 4, reg_max) bin logits -> (..., 4) expected distances in cells (DFL's
    integral)."""
    project = torch.arange(bins.shape[-1], dtype=bins.dtype, device=bins.device)
    return bins.softmax(-1).matmul(project)


def sides_to_boxes(sides: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(left, top, right, bottom) distances from the anchors -> xyxy."""
    return torch.cat([anchors - sides[..., :2], anchors + sides[..., 2:]], -1)


def boxes_to_sides(boxes: torch.Tensor, anchors: torch.Tensor, limit: float) -> torch.Tensor:
    return torch.cat([anchors - boxes[..., :2], boxes[..., 2:] - anchors], -1) \
        .clamp(0, limit - 0.01)


def dfl(bins: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss (Li et al. 2020): cross entropy to the two bins around each
    true distance, weighted by nearness; mean over the 4 sides. bins (N, 4, reg_max)."""
    reg_max = bins.shape[-1]
    sides = sides.clamp(0, reg_max - 1 - 0.01)
    left = sides.long()
    w_left = left + 1 - sides
    log_p = F.log_softmax(bins, -1)
    loss = -(log_p.gather(-1, left[..., None])[..., 0] * w_left
             + log_p.gather(-1, left[..., None] + 1)[..., 0] * (1 - w_left))
    return loss.mean(-1)


class DetectionLoss:
    """`loss: detect(box=7.5, cls=0.5, dfl=1.5)` (Ultralytics' default gains)."""

    def __init__(self, classes: int, *, box: float = 7.5, cls: float = 0.5,
                 dfl: float = 1.5, topk: int = 10, alpha: float = 0.5, beta: float = 6.0):
        self.classes = classes
        self.gains = (box, cls, dfl)
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.parts: dict[str, float] = {}  # the last call's box, cls and dfl terms (means)

    def __call__(self, logits, bins, anchors, strides, targets):
        """logits (b, A, classes), bins (b, A, 4, reg_max), anchors (A, 2) in cells,
        strides (A, 1), targets (b, M, 5) -> (sum, den)."""
        logits, bins = logits.float(), bins.float()
        targets = targets.float()
        valid = targets[..., 0] >= 0
        labels, true_boxes = targets[..., 0], targets[..., 1:5]
        predicted = sides_to_boxes(expected_sides(bins), anchors)  # cells, xyxy
        distinct = torch.unique(strides)
        floor = float(distinct[1] if len(distinct) > 1 else distinct[0])
        got = assign(logits.detach().sigmoid(), predicted.detach() * strides,
                     anchors * strides, labels, true_boxes, valid, classes=self.classes,
                     topk=self.topk, alpha=self.alpha, beta=self.beta, stride_floor=floor)
        den = got.scores.sum().clamp(min=1)
        cls = F.binary_cross_entropy_with_logits(logits, got.scores.to(logits.dtype),
                                                 reduction="sum")
        fg = got.foreground
        weight = got.scores[fg].sum(-1)
        true_cells = got.boxes / strides  # each anchor's true box, in its cells
        box = ((1.0 - pair_ciou(predicted[fg], true_cells[fg])) * weight).sum()
        sides = boxes_to_sides(true_cells, anchors, bins.shape[-1] - 1)
        focal = (dfl(bins[fg], sides[fg]) * weight).sum()
        gain_box, gain_cls, gain_dfl = self.gains
        self.parts = {"box": float(box.detach() / den), "cls": float(cls.detach() / den),
                      "dfl": float(focal.detach() / den)}
        return gain_box * box + gain_cls * cls + gain_dfl * focal, den
