"""Detection metrics (cnndsl/training/detmetrics.py) against answers computed by hand and
against pycocotools' COCOeval run directly on the same boxes."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from cnndsl.training.detmetrics import DetectionEvaluator


def _targets(*images):
    """Padded B x max_boxes x 5 targets from per-image lists of [class, x1, y1, x2, y2]."""
    size = max(1, *(len(rows) for rows in images))
    out = torch.zeros(len(images), size, 5)
    out[..., 0] = -1
    for i, rows in enumerate(images):
        if rows:
            out[i, :len(rows)] = torch.tensor(rows, dtype=torch.float32)
    return out


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


# class 0: two true boxes; detections by score: a hit (IoU 1), a miss, a hit at IoU 0.63.
# class 1: one true box, no detection. class 2: no true box, one detection (not counted).
HAND_TARGETS = [[[0, 0, 0, 10, 10], [1, 40, 40, 50, 50]], [[0, 20, 20, 30, 30]]]
HAND_PREDS = [([[0, 0, 10, 10], [60, 60, 70, 70], [5, 5, 9, 9]], [0.9, 0.8, 0.1], [0, 0, 2]),
              ([[20, 20, 30, 26.3]], [0.7], [0])]
# COCO's 101-point interpolated AP. At IoU <= 0.6 the ranked hits are TP, FP, TP: precision
# 1 up to recall 0.5 (51 points), then 2/3 (50 points). Above 0.63: TP, FP, FP: 1 up to
# recall 0.5, then nothing.
AP_LOW = (51 + 50 * 2 / 3) / 101
AP_HIGH = 51 / 101


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_hand_made_boxes_give_the_known_answer(backend, monkeypatch):
    from cnndsl.training import detmetrics
    monkeypatch.setattr(detmetrics, "_backend", lambda: backend)
    evaluator = DetectionEvaluator(["a", "b", "c"])
    assert evaluator.metric._coco_backend.backend == backend
    evaluator.update([_pred(*HAND_PREDS[0])], _targets(HAND_TARGETS[0]))
    evaluator.update([_pred(*HAND_PREDS[1])], _targets(HAND_TARGETS[1]))
    report = evaluator.compute()
    ap0 = (3 * AP_LOW + 7 * AP_HIGH) / 10  # thresholds 0.5, 0.55, 0.6 match the 0.63 hit
    assert report["per_class"][0]["ap50"] == pytest.approx(AP_LOW)
    assert report["per_class"][0]["ap"] == pytest.approx(ap0)
    assert report["per_class"][1]["ap50"] == 0.0 and report["per_class"][1]["ap"] == 0.0
    assert report["per_class"][2]["ap50"] is None  # no true box: no AP, not in the means
    assert report["map50"] == pytest.approx(AP_LOW / 2)
    assert report["map75"] == pytest.approx(AP_HIGH / 2)
    assert report["map"] == pytest.approx(ap0 / 2)
    # best F1 of class 0 at recall 1, precision 2/3; class 1 never found
    assert report["per_class"][0]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"][0]["recall"] == 1.0
    assert report["precision"] == pytest.approx(1 / 3) and report["recall"] == 0.5
    assert (report["samples"], report["objects"]) == (2, 3)
    curve = report["pr_curve"]
    assert len(curve["recall"]) == 101 and curve["recall"][50] == 0.5
    assert curve["precision"][0][:51] == [1.0] * 51
    assert curve["precision"][0][51:] == pytest.approx([2 / 3] * 50)
    assert curve["precision"][1] == [0.0] * 101 and curve["precision"][2] is None


def _cocoeval(targets, preds, classes: int, category: int | None = None):
    """pycocotools' COCOeval directly: stats[0:3] (mAP, mAP@0.5, mAP@0.75)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images, annotations, results = [], [], []
    for i, (rows, pred) in enumerate(zip(targets, preds)):
        images.append({"id": i, "width": 64, "height": 64})
        for c, x1, y1, x2, y2 in rows.tolist():
            if c >= 0:
                annotations.append({"id": len(annotations) + 1, "image_id": i,
                                    "category_id": int(c), "iscrowd": 0,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1)})
        for (x1, y1, x2, y2), s, c in zip(pred["boxes"].tolist(), pred["scores"].tolist(),
                                          pred["labels"].tolist()):
            results.append({"image_id": i, "category_id": int(c), "score": s,
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c, "name": str(c)} for c in range(classes)]}
        truth.createIndex()
        found = truth.loadRes(results)
        run = COCOeval(truth, found, "bbox")
        if category is not None:
            run.params.catIds = [category]
        run.evaluate()
        run.accumulate()
        run.summarize()
    return run.stats[:3]


def test_random_boxes_match_cocoeval():
    generator = torch.Generator().manual_seed(0)
    targets, preds = [], []
    for _ in range(12):
        count = int(torch.randint(0, 5, (1,), generator=generator))
        corners = torch.rand(count, 2, generator=generator) * 40
        sizes = 10 + torch.rand(count, 2, generator=generator) * 20
        rows = [[int(torch.randint(0, 3, (1,), generator=generator)), *c.tolist(),
                 *(c + s).tolist()] for c, s in zip(corners, sizes)]
        targets.append(rows)
        # detections: each true box shifted a little (some a lot), a few spurious ones
        boxes = [[x1 + d, y1 + d, x2 + d, y2 + d] for (_, x1, y1, x2, y2), d in
                 zip(rows, (torch.rand(count, generator=generator) * 3).tolist())]
        labels = [r[0] if torch.rand(1, generator=generator) > 0.2 else 1 for r in rows]
        for _ in range(int(torch.randint(0, 3, (1,), generator=generator))):
            x, y = (torch.rand(2, generator=generator) * 40).tolist()
            boxes.append([x, y, x + 10, y + 10])
            labels.append(int(torch.randint(0, 3, (1,), generator=generator)))
        scores = torch.rand(len(boxes), generator=generator).tolist()
        preds.append(_pred(boxes, scores, labels))
    padded = _targets(*targets)
    evaluator = DetectionEvaluator(["x", "y", "z"])
    for start in range(0, 12, 5):  # batch by batch, as the loop does
        evaluator.update(preds[start:start + 5], padded[start:start + 5])
    report = evaluator.compute()
    whole = _cocoeval(padded, preds, 3)
    assert [report["map"], report["map50"], report["map75"]] == pytest.approx(list(whole))
    assert 0.1 < report["map"] < report["map50"] < 1  # a case that tells numbers apart
    for c in range(3):
        ap, ap50, _ = _cocoeval(padded, preds, 3, category=c)
        assert report["per_class"][c]["ap"] == pytest.approx(ap)
        assert report["per_class"][c]["ap50"] == pytest.approx(ap50)


def test_no_true_boxes_and_no_detections():
    evaluator = DetectionEvaluator(["a"])
    evaluator.update([_pred([], [], [])], _targets([]))
    report = evaluator.compute()
    assert (report["map"], report["map50"], report["precision"]) == (0.0, 0.0, 0.0)
    assert report["per_class"] == [{"name": "a", "ap50": None, "ap": None,
                                    "precision": None, "recall": None}]


def test_plots_write_pr_curves_and_boxes(tmp_path):
    from cnndsl.training.detmetrics import detection_plots
    from cnndsl.training.images import read_header
    evaluator = DetectionEvaluator(["a", "b", "c"])
    preds = [_pred(*p) for p in HAND_PREDS]
    targets = _targets(*HAND_TARGETS)
    evaluator.update(preds, targets)
    report = evaluator.compute()
    history = [{"epoch": 1, "val_map50": 0.1, "val_map": 0.05},
               {"epoch": 2, "val_map50": report["map50"], "val_map": report["map"]}]
    images = torch.rand(2, 1, 64, 64)
    asked = []

    def samples(n):
        asked.append(n)
        return images, targets, preds
    detection_plots(tmp_path, history, report, samples)
    assert asked == [8]
    for name in ("pr.png", "boxes.png"):
        (width, height), mode = read_header(tmp_path / name)
        assert width > 400 and height > 200 and mode == "RGBA"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.png", "pr.png"]
